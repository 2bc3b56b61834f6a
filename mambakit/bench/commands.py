"""``mambakit bench``: decode, prefill, training and op benchmarks on a named shape, written as JSON.

    mambakit bench --shape mamba-1.4b --out benchmarks/results/h200-mamba-1.4b.json [--baseline hf]
    mambakit bench decode prefill --shape mamba2-1.3b
    mambakit bench long --shape mamba-1.4b --output DIR     (long_context.py: Mamba vs a Transformer, 1k..128k)
"""
from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import json
from pathlib import Path

import torch

from mambakit.errors import UserError

SUITES = ("decode", "prefill", "train", "ops")
LONG = "long"
OP_BENCH_MODULES = ("mambakit.bench.ops_selective_scan", "mambakit.bench.ops_ssd", "mambakit.bench.ops_misc")


def _int_list(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",") if item]
    except ValueError:
        raise UserError(f"expected comma-separated integers, got {text!r}") from None


def resolve_shape(name: str):
    """A MambaConfig from a shape name (see model_bench.SHAPES) or a config.json path."""
    from mambakit.bench.model_bench import SHAPES
    from mambakit.config import MambaConfig

    if name in SHAPES:
        return SHAPES[name]
    if Path(name).is_file():
        return MambaConfig.from_file(name)
    raise UserError(f"unknown shape {name!r}; use one of {', '.join(SHAPES)} or a config.json path")


def _environment() -> dict:
    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"date": datetime.date.today().isoformat(), "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__, "triton": version("triton"), "transformers": version("transformers")}


def run_benchmarks(args) -> dict:
    from mambakit.bench import model_bench
    from mambakit.loading import resolve_state_dtype
    from mambakit.model import MambaLM

    config = resolve_shape(args.shape)
    suites = args.suites or list(SUITES)
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        raise UserError(f"unknown benchmark suite {unknown[0]!r}; use any of {', '.join(SUITES)}")
    state_dtypes = [resolve_state_dtype(name.strip()) for name in args.decode_state_dtypes.split(",")]
    if not torch.cuda.is_available():
        raise UserError("mambakit bench measures GPU speed and needs a CUDA device")
    report = {**_environment(), "shape": args.shape, "params": None, "results": []}
    report["copy_bandwidth_gbps"] = copy_gbps = model_bench.copy_bandwidth_gbps()
    print(f"copy bandwidth {copy_gbps:.0f} GB/s")
    model = MambaLM.from_config(config, device="cuda", dtype=torch.bfloat16, seed=0).eval()
    report["params"] = model.num_parameters()

    def record(row):
        report["results"].append(row)
        print(json.dumps(row))

    if "decode" in suites:
        for state_dtype in state_dtypes:
            model.ssm_state_dtype = state_dtype
            for batch in _int_list(args.decode_batches):
                record(model_bench.bench_decode(model, batch, copy_gbps=copy_gbps))
        model.ssm_state_dtype = torch.float32
    if "prefill" in suites:
        for length in _int_list(args.prefill_lengths):
            for graphs in (True, False):
                record(model_bench.bench_prefill(model, length, chunk=args.prefill_chunk, graphs=graphs))
    if "train" in suites:
        for checkpointing in {"off": (False,), "on": (True,), "both": (False, True)}[args.train_checkpointing]:
            record(model_bench.bench_train(model, batch=args.train_batch, length=args.train_length,
                                           checkpointing=checkpointing))
    if "ops" in suites:
        for module in OP_BENCH_MODULES:
            for row in importlib.import_module(module).run("cuda"):
                record({"metric": "op", **row})
    if args.baseline == "hf":
        from mambakit.bench.baseline_hf import bench_hf

        del model
        torch.cuda.empty_cache()
        for row in bench_hf(config):
            record(row)
    return report


def cmd_bench(args) -> int:
    if LONG in args.suites:
        if args.suites != [LONG]:
            raise UserError("'bench long' runs on its own; give it without other suites")
        from mambakit.bench import long_context

        return long_context.main(args)
    report = run_benchmarks(args)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def register(subparsers) -> None:
    from mambakit.bench.long_context import add_arguments as add_long_context_arguments
    from mambakit.generation.generator import DEFAULT_PREFILL_CHUNK

    # conflict_handler="resolve": long_context.py's --shape (same meaning) replaces this one
    bench = subparsers.add_parser("bench", help="GPU benchmarks on random weights of a named shape",
                                  conflict_handler="resolve")
    bench.add_argument("suites", nargs="*", metavar="SUITE",
                       help=f"any of {', '.join(SUITES)} (default: all), or '{LONG}' alone")
    bench.add_argument("--shape", default="mamba-1.4b", help="shape name (mamba-1.4b, mamba2-1.3b, …) or config.json")
    bench.add_argument("--decode-batches", default="1,64")
    bench.add_argument("--decode-state-dtypes", default="float32,bfloat16",
                       help="SSM state dtypes to decode with, each at every batch (default: float32,bfloat16)")
    bench.add_argument("--prefill-lengths", default="2048,10240,102400")
    bench.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK,
                       help=f"prefill this many tokens per forward (default {DEFAULT_PREFILL_CHUNK}, as generation does)")
    bench.add_argument("--train-batch", type=int, default=4)
    bench.add_argument("--train-length", type=int, default=2048)
    bench.add_argument("--train-checkpointing", choices=("off", "on", "both"), default="both",
                       help="train without and/or with per-block gradient checkpointing (memory for speed)")
    bench.add_argument("--baseline", choices=("hf",), help="also run HF transformers on the same shape")
    bench.add_argument("--out", help="write the JSON report here")
    long_options = bench.add_argument_group(f"'{LONG}' (Mamba vs a Transformer over growing prompts)")
    add_long_context_arguments(long_options)
    bench.set_defaults(func=cmd_bench)
