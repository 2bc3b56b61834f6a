"""Where the time of one prefill forward, one eager decode step or one training step goes, on a GPU: wall time
against the sum of GPU kernel time, the number of kernel launches, and the kernels that take the most time.

If the wall time is well above the kernel time, the call is bound by host-side launch cost rather than by
the kernels (a decode step runs eagerly here: its kernel list is what a captured graph replays). One JSON
line per (shape, what, tokens) goes to --out.

    python benchmarks/step_profile.py --shapes mamba-1.4b,mamba2-1.3b --lengths 2048,4096 \
        [--decode-batches 1,64] [--train]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from mambakit.bench.model_bench import SHAPES
from mambakit.model import MambaLM


def _device_us(event) -> float:
    return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)


def profile_call(fn, top: int) -> dict:
    """Run ``fn`` twice (warm-up), then once under the profiler and once timed on the host."""
    fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - started) * 1000
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    # GPU kernels only: an operator's device time is that of the kernels it launched, counted again
    kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA and _device_us(e) > 0]
    kernels.sort(key=_device_us, reverse=True)
    gpu_ms = sum(_device_us(e) for e in kernels) / 1000
    return {"wall_ms": wall_ms, "kernel_ms": gpu_ms, "launches": sum(e.count for e in kernels),
            "top": [{"name": e.key[:90], "ms": _device_us(e) / 1000, "count": e.count} for e in kernels[:top]]}


def host_profile(fn, top: int) -> str:
    """The Python functions that take the most host time in one call of ``fn`` (after a warm-up), with
    CUDA's sync debug mode on, so that any host-device synchronisation inside prints a warning."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    torch.cuda.set_sync_debug_mode("default")
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shapes", default="mamba-1.4b,mamba2-1.3b")
    parser.add_argument("--lengths", default="2048,4096")
    parser.add_argument("--decode-batches", default="", help="also profile one decode step at these batches")
    parser.add_argument("--train", action="store_true", help="also profile a B4 x L2048 training step")
    parser.add_argument("--top", type=int, default=14)
    parser.add_argument("--host", action="store_true", help="print a cProfile of the host side instead")
    parser.add_argument("--out")
    args = parser.parse_args()
    for shape in args.shapes.split(","):
        model = MambaLM.from_config(SHAPES[shape], device="cuda", dtype=torch.bfloat16, seed=0).eval()
        runs = []
        for length in (int(x) for x in args.lengths.split(",") if x):
            ids = torch.randint(0, 1000, (1, length), device="cuda")

            def prefill(ids=ids):
                with torch.inference_mode():
                    model(ids, state=model.allocate_state(1), logits_to_keep=1)

            runs.append(("prefill", length, prefill))
        for batch in (int(x) for x in args.decode_batches.split(",") if x):
            state = model.allocate_state(batch)
            token = torch.randint(0, 1000, (batch,), device="cuda")

            def decode(state=state, token=token):
                with torch.inference_mode():
                    model.step(token, state)

            runs.append(("decode", batch, decode))
        if args.train:
            ids = torch.randint(0, 1000, (4, 2048), device="cuda")

            def train_step(ids=ids):
                model(ids, labels=ids).loss.backward()
                model.zero_grad(set_to_none=True)

            runs.append(("train", 4 * 2048, train_step))
        for what, tokens, fn in runs:
            model.train(what == "train")
            if args.host:
                print(f"== {shape} {what} {tokens}", host_profile(fn, 3 * args.top))
                continue
            row = {"shape": shape, "what": what, "tokens": tokens, **profile_call(fn, args.top)}
            print(json.dumps(row, indent=1))
            if args.out:
                with open(args.out, "a") as out:
                    out.write(json.dumps(row) + "\n")
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
