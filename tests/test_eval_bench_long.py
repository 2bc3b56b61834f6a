"""``bench long`` (mambakit.bench.long_context) as a CPU dry run on tiny configs: rows, stops, JSON and plot."""
import argparse
import json
import time

import pytest
import torch

from mambakit.bench import long_context
from mambakit.errors import UserError


def _args(tmp_path, **overrides):
    (tmp_path / "tiny-mamba").mkdir(exist_ok=True)
    (tmp_path / "tiny-mamba" / "config.json").write_text(json.dumps(
        {"d_model": 32, "n_layer": 2, "vocab_size": 257, "ssm_cfg": {"layer": "Mamba1", "d_state": 8}}))
    (tmp_path / "tiny-llama.json").write_text(json.dumps(
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 300}))
    parser = argparse.ArgumentParser()
    long_context.add_arguments(parser)
    args = parser.parse_args(["--device", "cpu", "--shape", str(tmp_path / "tiny-mamba" / "config.json"),
                              "--transformer", str(tmp_path / "tiny-llama.json"), "--lengths", "8,16",
                              "--decode-tokens", "3", "--output", str(tmp_path / "out")])
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


def test_bench_long_measures_every_series_at_every_length_and_writes_json_and_png(tmp_path):
    assert long_context.main(_args(tmp_path)) == 0
    report = json.loads((tmp_path / "out" / "long_context-tiny-mamba.json").read_text())
    assert [s["name"] for s in report["series"]] == ["mambakit tiny-mamba", "tiny-llama sdpa", "tiny-llama eager"]
    for series in report["series"]:
        assert [row["context"] for row in series["results"]] == [8, 16]
        assert all(row["status"] == "ok" and row["prefill_s"] > 0 and row["decode_tok_s"] > 0
                   and row["peak_gb"] is None for row in series["results"])
        assert series["longest_ok"] == 16 and series["oom_at"] is None and series["params"] > 0
    assert (tmp_path / "out" / "long_context-tiny-mamba.png").read_bytes().startswith(b"\x89PNG")


def test_a_series_stops_at_its_time_share_and_at_out_of_memory(tmp_path):
    calls = []

    def build():
        def run(prompt, new_tokens):
            calls.append(len(prompt))
            if len(prompt) > 8:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            now = time.perf_counter()
            return now, now + 1.0

        return run, 100, 1

    series = long_context.run_series("fake", build, [4, 8, 16, 32], 3, torch.device("cpu"), time.monotonic() + 60)
    assert [(r["context"], r["status"]) for r in series["results"]] == [(4, "ok"), (8, "ok"), (16, "oom")]
    assert (series["longest_ok"], series["oom_at"]) == (8, 16)
    assert calls == [4, 4, 8, 8, 16]  # each length up to the prefill chunk: a warm-up, then the measured run
    expired = long_context.run_series("late", build, [4, 8], 3, torch.device("cpu"), time.monotonic() - 1)
    assert [(r["context"], r["status"]) for r in expired["results"]] == [(4, "time limit")]


@pytest.mark.parametrize("field, value, message", [("lengths", "16,8", "ascending"),
                                                   ("attention", "flash", "not one of"),
                                                   ("decode_tokens", 1, ">= 2")])
def test_bad_options_are_user_errors(tmp_path, field, value, message):
    with pytest.raises(UserError, match=message):
        long_context.main(_args(tmp_path, **{field: value}))
