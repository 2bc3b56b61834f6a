"""Decode-step probe on the GPU: the fused single-token path against the per-op path, and each fused kernel.

For the mamba-1.4b and mamba2-1.3b shapes (random bf16 weights), one decode step captured in a CUDA graph
is timed at batch 1 and 8 along three paths: ``per_op`` (``model.step(fused=False)``), ``fused`` and
``fused_no_pdl`` (programmatic dependent launch off). Then each fused kernel alone: 48 launches over 48
layers' distinct weights (as in a real step, no L2 reuse between layers) in one graph, per launch. With
``--sweep`` the GEMV, conv + x_proj and SSM tile constants are varied too. One JSON line per measurement; GB/s
counts the weights and states each step or kernel reads and writes.

    python benchmarks/decode_probe.py [--sweep gemv,conv,ssm] [--out results.jsonl]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os

import torch

from mambakit import ops
from mambakit.bench.model_bench import SHAPES, copy_bandwidth_gbps, weight_bytes
from mambakit.generation.cuda_graph import capture_graph
from mambakit.model import MambaLM
from mambakit.ops.kernels import decode_fused, decode_fused_ssm

BATCHES = [1, 8]  # --batches replaces them
LAYERS = 48
REPLAYS = 50
SWEEPS = {  # module, constant, values
    "gemv": [(decode_fused, "GEMV_TILE_ELEMENTS", (2048, 4096, 8192)), (decode_fused, "GEMV_NUM_WARPS", (4, 8)),
             (decode_fused, "PROGRAMS_PER_SM", (1, 2, 4)), (decode_fused, "GEMV_MAX_BLOCK_K", (128, 256, 512)),
             (decode_fused, "GEMV_STAGES", (2, 3, 4))],
    "conv": [(decode_fused, "XPROJ_BLOCK_C", (64, 128, 256)), (decode_fused, "XPROJ_BLOCK_N", (32, 64, 128)),
             (decode_fused, "XPROJ_NUM_WARPS", (2, 4, 8))],
    "ssm": [(decode_fused_ssm, "SSM_PROGRAMS_PER_SM", (1, 2, 4, 8)),
            (decode_fused_ssm, "SSM_TILE_ELEMENTS", (1024, 2048, 4096))],
}


def graph_us(step, replays: int = REPLAYS) -> float:
    """Median µs of one replay of ``step`` captured in a CUDA graph (warmed up on a side stream first)."""
    graph = capture_graph(step, None, None)[0]
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / replays)
    del graph
    return sorted(times)[len(times) // 2]


@contextlib.contextmanager
def pdl(enabled: bool):
    previous = os.environ.get(decode_fused.PDL_ENV)
    os.environ[decode_fused.PDL_ENV] = "1" if enabled else "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(decode_fused.PDL_ENV)
        else:
            os.environ[decode_fused.PDL_ENV] = previous


def emit(row: dict, out) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        out.write(line + "\n")


def bench_steps(name: str, model: MambaLM, copy_gbps: float, out) -> None:
    for batch in BATCHES:
        tokens = torch.randint(0, 1000, (batch,), device="cuda")
        state = model.allocate_state(batch)
        moved = weight_bytes(model) + 2 * sum(t.numel() * t.element_size() for t in (state.conv, state.ssm))
        for path, fused, use_pdl in (("per_op", False, True), ("fused", True, True), ("fused_no_pdl", True, False)):
            with pdl(use_pdl):
                us = graph_us(lambda: model.step(tokens, state, fused=fused))
            emit({"probe": "decode_step", "shape": name, "batch": batch, "path": path, "us": round(us, 1),
                  "tok_per_s": round(batch * 1e6 / us), "gbps": round(moved / us / 1e3),
                  "pct_of_copy": round(100 * moved / us / 1e3 / copy_gbps, 1)}, out)


def _bytes(*tensors) -> int:
    """Bytes of the tensors among the arguments, each counted once."""
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def kernel_cases(name: str, model: MambaLM, batch: int) -> dict:
    """{kernel label: (list of per-layer argument tuples, op)} at this model's layer shapes."""
    config, dtype = model.config, torch.bfloat16
    state = model.allocate_state(batch)
    hidden = torch.randn(batch, config.d_model, device="cuda", dtype=dtype)
    residual = torch.randn(batch, config.d_model, device="cuda")
    cases = {}
    blocks = model.backbone.layers
    cases["norm_linear (in_proj)"] = (ops.norm_linear, [
        (hidden, residual, b.norm.weight, b.norm.eps, b.mixer.in_proj.weight) for b in blocks])
    norm_f = model.backbone.norm_f
    cases["norm_linear (norm_f + lm_head)"] = (ops.norm_linear, [
        (hidden, residual, norm_f.weight, norm_f.eps, model.lm_head.weight)] * 4)
    if config.is_mamba2:
        mixer = blocks[0].mixer
        xbc = torch.randn(batch, mixer.conv_channels, device="cuda", dtype=dtype)
        dt = torch.randn(batch, mixer.nheads, device="cuda", dtype=dtype)
        y = torch.randn(batch, mixer.d_inner, device="cuda", dtype=dtype)
        cases["mamba2_conv_ssm_step"] = (ops.mamba2_conv_ssm_step, [
            (xbc, dt, state.layer(i)[0], b.mixer.conv1d.weight.squeeze(1), b.mixer.conv1d.bias, b.mixer.dt_bias,
             b.mixer.A_log, b.mixer.D, state.layer(i)[1], mixer.ngroups, mixer.headdim) for i, b in enumerate(blocks)])
        cases["gated_norm_linear (out_proj)"] = (ops.gated_norm_linear, [
            (y, y, b.mixer.norm.weight, b.mixer.norm.eps, b.mixer.norm.group_size, b.mixer.out_proj.weight)
            for b in blocks])
    else:
        d_inner = config.d_inner
        x = torch.randn(batch, d_inner, device="cuda", dtype=dtype)
        x_dbl = torch.randn(batch, blocks[0].mixer.x_proj.out_features, device="cuda", dtype=dtype)
        cases["mamba1_conv_xproj"] = (ops.mamba1_conv_xproj, [
            (x, state.layer(i)[0], b.mixer.conv1d.weight.squeeze(1), b.mixer.conv1d.bias, b.mixer.x_proj.weight)
            for i, b in enumerate(blocks)])
        cases["mamba1_ssm_step"] = (ops.mamba1_ssm_step, [
            (x, x, x_dbl, state.layer(i)[0], b.mixer.conv1d.weight.squeeze(1), b.mixer.conv1d.bias,
             b.mixer.dt_proj.weight, b.mixer.dt_proj.bias, b.mixer.A_log, b.mixer.D, state.layer(i)[1])
            for i, b in enumerate(blocks)])
        cases["linear (out_proj, per-op)"] = (ops.linear, [(x, b.mixer.out_proj.weight) for b in blocks])
    return cases


def bench_kernels(name: str, model: MambaLM, out, only: str | None = None, config: dict | None = None,
                  pdl_modes=(True, False)) -> None:
    """Each fused kernel (those whose label contains ``only``) per launch; ``config`` tags the rows."""
    for batch in BATCHES:
        for label, (op, calls) in kernel_cases(name, model, batch).items():
            if only and only not in label:
                continue
            for use_pdl in pdl_modes:
                with pdl(use_pdl):
                    us = graph_us(lambda: [op(*args) for args in calls]) / len(calls)
                moved = _bytes(*calls[0])
                emit({"probe": "kernel", "shape": name, "kernel": label, "batch": batch, "pdl": use_pdl,
                      "us_per_launch": round(us, 2), "gbps": round(moved / us / 1e3), **(config or {})}, out)


def sweep(name: str, model: MambaLM, families: list[str], out) -> None:
    """One constant at a time around the defaults, for the kernels it affects."""
    affected = {"gemv": "norm_linear", "conv": "conv_xproj", "ssm": "ssm_step"}
    for family in families:
        settings = SWEEPS[family]
        for module, constant, values in settings:
            default = getattr(module, constant)
            for value in values:
                if value == default:
                    continue
                setattr(module, constant, value)
                try:
                    bench_kernels(name, model, out, only=affected[family], config={constant: value}, pdl_modes=(True,))
                finally:
                    setattr(module, constant, default)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["mamba-1.4b", "mamba2-1.3b"])
    parser.add_argument("--sweep", default="", help="also vary the tile constants of these families "
                                                    f"(comma-separated: {', '.join(SWEEPS)}; kernels only)")
    parser.add_argument("--batches", default="1,8", help="batch sizes (default 1,8)")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    args = parser.parse_args()
    BATCHES[:] = [int(b) for b in args.batches.split(",")]
    unknown = set(filter(None, args.sweep.split(","))) - set(SWEEPS)
    if unknown:
        parser.error(f"unknown sweep families {sorted(unknown)}; use {', '.join(SWEEPS)}")
    torch.set_grad_enabled(False)
    out = open(args.out, "a") if args.out else None
    copy_gbps = copy_bandwidth_gbps()
    emit({"probe": "copy_bandwidth", "gbps": round(copy_gbps), "gpu": torch.cuda.get_device_name()}, out)
    for name in args.shapes:
        model = MambaLM.from_config(SHAPES[name], device="cuda", dtype=torch.bfloat16, seed=0).eval()
        bench_steps(name, model, copy_gbps, out)
        bench_kernels(name, model, out)
        if args.sweep:
            sweep(name, model, args.sweep.split(","), out)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
