"""``mambakit bench long``: how far each model gets on one GPU as the prompt grows from 1k to 128k tokens.

The seed's experiment as a benchmark: a Mamba model (random weights of a named shape) against a
Transformer of similar size through HF transformers (TinyLlama-1.1B's config, random weights; SDPA and
eager attention). At each prompt length: prefill time (to the first new token), peak GPU memory, and
decode tokens/s at that context. A series stops at its first out-of-memory, or when the next length would
not finish in its share of ``--time-limit``. Writes ``long_context-<shape>[-<cap>gb].json`` and ``.png``.

Both sides generate as a user would: mambakit through ``Generator.decode`` (chunked prefill, CUDA-graph
decoding), transformers through ``model.generate`` (KV cache), greedy, batch 1.
"""
from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import json
import time
from pathlib import Path
from typing import Callable

import torch

from mambakit.errors import UserError

TINYLLAMA_1_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                      num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
DEFAULT_LENGTHS = ",".join(str(1024 * 2 ** power) for power in range(8))  # 1k .. 128k
ATTENTIONS = ("sdpa", "eager")


def add_arguments(parser) -> None:
    parser.add_argument("--shape", default="mamba-1.4b",
                        help="mambakit shape (mamba-1.4b, mamba2-1.3b, …) or a config.json; random weights")
    parser.add_argument("--transformer", default="tinyllama-1.1b",
                        help="tinyllama-1.1b, or a config.json of an HF LlamaConfig; random weights")
    parser.add_argument("--attention", default=",".join(ATTENTIONS), help="transformer attention(s): sdpa,eager")
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS, help="prompt lengths in tokens, ascending")
    parser.add_argument("--decode-tokens", type=int, default=32, help="new tokens per length (decode speed)")
    parser.add_argument("--time-limit", type=float, default=240.0,
                        help="seconds for the whole run, shared by the series (default 240)")
    parser.add_argument("--gpu-memory-gb", type=float, default=None,
                        help="cap the memory this process may use, e.g. 24 to play a 24 GB card")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--output", default="benchmarks/results/long_context",
                        help="folder for long_context-<shape>.json and .png")


def main(args) -> int:
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError("bench long plots with matplotlib: pip install matplotlib (or 'mambakit[eval]')")
    lengths = _lengths(args.lengths)
    attentions = [name.strip() for name in args.attention.split(",") if name.strip()]
    unknown = sorted(set(attentions) - set(ATTENTIONS))
    if unknown:
        raise UserError(f"--attention {unknown[0]!r} is not one of {', '.join(ATTENTIONS)}")
    if args.decode_tokens < 2:
        raise UserError(f"--decode-tokens must be >= 2 (decode speed needs tokens after the first), "
                        f"got {args.decode_tokens}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but CUDA is not available here; use --device cpu for a dry run")
    if args.gpu_memory_gb is not None and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.gpu_memory_gb * 1e9 / total), device)

    deadline = time.monotonic() + args.time_limit
    shape = _label(args.shape)
    builders = [(f"mambakit {shape}", lambda: _mamba_runner(args.shape, device))]
    builders += [(f"{_label(args.transformer)} {attention}", _llama_builder(args.transformer, attention, device))
                 for attention in attentions]
    series = []
    for index, (name, build) in enumerate(builders):
        share_end = time.monotonic() + (deadline - time.monotonic()) / (len(builders) - index)
        series.append(run_series(name, build, lengths, args.decode_tokens, device, share_end))
        print(json.dumps({key: value for key, value in series[-1].items() if key != "results"}))

    report = {**_environment(device), "shape": args.shape, "transformer": args.transformer, "lengths": lengths,
              "decode_tokens": args.decode_tokens, "time_limit_s": args.time_limit,
              "gpu_memory_cap_gb": args.gpu_memory_gb, "series": series}
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"long_context-{shape}" + (f"-{args.gpu_memory_gb:g}gb" if args.gpu_memory_gb else "")
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out_dir / f"{stem}.png")
    print(f"wrote {out_dir / stem}.json and .png")
    return 0


# ---- one series: a model at growing prompt lengths ---------------------------------------------
# (prompt ids, new tokens) -> (first token at, last at). A runner that replays CUDA graphs also has a
# ``graph_pool_bytes()`` attribute: the graphs' memory, which the allocator's peak statistics do not see.
Runner = Callable[[list[int], int], tuple[float, float]]


def run_series(name: str, build: Callable[[], tuple[Runner, int, int]], lengths: list[int], decode_tokens: int,
               device: torch.device, share_end: float) -> dict:
    """Measure one model at each length until it runs out of memory or of its time share.

    ``build()`` -> (runner, vocabulary size, parameter count). Each result row has the context length and
    a status: "ok" (with prefill_s, prefill_tok_s, decode_tok_s, peak_gb), "oom" or "time limit".
    """
    from mambakit.generation.generator import DEFAULT_PREFILL_CHUNK

    runner, vocab, params = build()
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab, (lengths[-1],), generator=generator).tolist()
    results, durations = [], []
    for length in lengths:
        growth = max(2.0, durations[-1] / durations[-2]) if len(durations) > 1 else 2.0  # lengths double
        expected = durations[-1] * growth if durations else 0.0
        if time.monotonic() + expected > share_end:
            results.append({"context": length, "status": "time limit"})
            break
        try:
            if length <= DEFAULT_PREFILL_CHUNK:
                # Warm-up: kernels compile again for each new chunk shape (every chunk of a longer prompt
                # has one of the shapes met up to here), CUDA graphs get captured; no row pays for that.
                runner(prompt[:length], decode_tokens)
            row = _measure(runner, prompt[:length], decode_tokens, device)
        except torch.cuda.OutOfMemoryError:
            results.append({"context": length, "status": "oom"})
            break
        finally:
            _release(device)
        durations.append(row.pop("seconds"))
        results.append(row)
        print(json.dumps({"series": name, **row}))
    del runner
    _release(device)
    fitted = [row["context"] for row in results if row["status"] == "ok"]
    oom = [row["context"] for row in results if row["status"] == "oom"]
    return {"name": name, "params": params, "results": results,
            "longest_ok": max(fitted) if fitted else None, "oom_at": oom[0] if oom else None}


def _measure(runner: Runner, prompt: list[int], decode_tokens: int, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    first_token_at, last_token_at = runner(prompt, decode_tokens)
    prefill_s = first_token_at - started
    return {"context": len(prompt), "status": "ok", "prefill_s": prefill_s, "prefill_tok_s": len(prompt) / prefill_s,
            "decode_tok_s": (decode_tokens - 1) / (last_token_at - first_token_at),
            "peak_gb": _peak_bytes(runner, device) / 1e9 if device.type == "cuda" else None,
            "seconds": time.perf_counter() - started}


def _peak_bytes(runner: Runner, device: torch.device) -> int:
    graph_pools = getattr(runner, "graph_pool_bytes", None)
    return torch.cuda.max_memory_allocated(device) + (graph_pools() if graph_pools else 0)


def _synchronize(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- the two kinds of model ---------------------------------------------------------------------
def _mamba_runner(shape: str, device: torch.device) -> tuple[Runner, int, int]:
    from mambakit.bench.commands import resolve_shape
    from mambakit.generation import Generator, SamplingParams
    from mambakit.model import MambaLM
    from mambakit.tokenizer import byte_tokenizer

    config = resolve_shape(shape)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = MambaLM.from_config(config, device=device, dtype=dtype, seed=0).eval()
    # Speed does not depend on the token ids, so the byte tokenizer stands in for the real one.
    generator = Generator(model, byte_tokenizer())

    def run(prompt: list[int], new_tokens: int) -> tuple[float, float]:
        params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        times = [_synchronize(device) for _ in generator.decode([prompt], params)]
        return times[0], times[-1]

    graphs = [g for g in (generator.prefill_graphs, generator.cuda_graphs) if g is not None]
    run.graph_pool_bytes = lambda: sum(g.pool_bytes for g in graphs)
    return run, config.vocab_size, model.num_parameters()


def _llama_builder(transformer: str, attention: str, device: torch.device) -> Callable[[], tuple[Runner, int, int]]:
    def build() -> tuple[Runner, int, int]:
        import transformers

        if transformer == "tinyllama-1.1b":
            values = dict(TINYLLAMA_1_1B)
        elif Path(transformer).is_file():
            values = json.loads(Path(transformer).read_text())
        else:
            raise UserError(f"--transformer {transformer!r}: use tinyllama-1.1b or a LlamaConfig config.json")
        config = transformers.LlamaConfig(**values, attn_implementation=attention)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        with torch.device(device):
            model = transformers.LlamaForCausalLM(config).to(dtype).eval()
        clock = _TokenClock(device)

        def run(prompt: list[int], new_tokens: int) -> tuple[float, float]:
            ids = torch.tensor([prompt], device=device)
            clock.times.clear()
            with torch.inference_mode():
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False, streamer=clock,
                               pad_token_id=config.eos_token_id)
            return clock.times[1], clock.times[-1]

        return run, config.vocab_size, model.num_parameters()

    return build


class _TokenClock:
    """A ``generate`` streamer that only notes when each put arrives (the first put is the prompt)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(_synchronize(self.device))

    def end(self) -> None:
        pass


# ---- report ----------------------------------------------------------------------------------------
def plot(report: dict, path: Path) -> Path:
    """Prefill seconds, peak GB and decode tok/s against context length; an x where a series ran out of memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = (("prefill_s", "prefill time (s)", True), ("peak_gb", "peak GPU memory (GB)", False),
              ("decode_tok_s", "decode tokens/s at that context", False))
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for series in report["series"]:
        ok = [row for row in series["results"] if row["status"] == "ok"]
        label = series["name"] + (f" (OOM at {series['oom_at']})" if series["oom_at"] else "")
        for ax, (key, _, _) in zip(axes, panels):
            points = [(row["context"], row[key]) for row in ok if row[key] is not None]
            line, = ax.plot(*zip(*points), marker="o", label=label) if points else ax.plot([], [], label=label)
            if series["oom_at"] and key == "peak_gb" and points:
                ax.plot([series["oom_at"]], [points[-1][1]], marker="x", markersize=12, color=line.get_color())
    for ax, (_, title, log_y) in zip(axes, panels):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1024:g}k" if x >= 1024 else f"{x:g}"))
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("prompt length (tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    cap = f", capped at {report['gpu_memory_cap_gb']} GB" if report["gpu_memory_cap_gb"] else ""
    models = f"{_label(report['shape'])} vs {_label(report['transformer'])}"
    figure.suptitle(f"long context on {report['device']}{cap}: {models}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _lengths(text: str) -> list[int]:
    try:
        lengths = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UserError(f"--lengths must be comma-separated integers, got {text!r}") from None
    if not lengths or lengths != sorted(lengths) or lengths[0] < 1:
        raise UserError(f"--lengths must be positive and ascending, got {text!r}")
    return lengths


def _label(name: str) -> str:
    """A shape name as is; a config file by its name, or its folder's for a config.json."""
    path = Path(name)
    if not path.is_file():
        return name
    return path.resolve().parent.name if path.name == "config.json" else path.stem


def _environment(device: torch.device) -> dict:
    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"date": time.strftime("%Y-%m-%d"), "device": name, "torch": torch.__version__,
            "transformers": version("transformers"), "triton": version("triton")}


if __name__ == "__main__":
    import argparse
    import sys

    cli = argparse.ArgumentParser(prog="python -m mambakit.bench.long_context", description=__doc__.splitlines()[0])
    add_arguments(cli)
    sys.exit(main(cli.parse_args()))
