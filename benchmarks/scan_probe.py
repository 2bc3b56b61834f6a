"""Sweep the Triton selective scan's configurations on a GPU: one JSON line per configuration and layout.

For each entry of CONFIGURATIONS (the old chunked kernel first, as the baseline) it sets
``mambakit.ops.kernels.selective_scan.CONFIG`` and times, with ``triton.testing.do_bench`` (median),
the forward (under no_grad) and the forward + backward at the mamba-1.4b benchmark shape (b=1 d=4096
l=10240 n=16; bf16 u, delta, z, B, C; fp32 A, D, delta_bias; delta_softplus). Layouts:
- "contiguous": (b, d, l) tensors, as ``python -m mambakit.bench`` passes them;
- "model": as Mamba1Mixer passes them: u (the conv output) (b, d, l), delta and z transposed views of
  (b, l, d) projections (z a half of the in_proj output), B and C views of the x_proj output.
Each line also gives the peak memory of the forward + backward and the largest deviation of y and of
every gradient from the baseline's, relative to the baseline's largest magnitude ("max_rel_diff"), so
that a configuration that computes something else stands out.

Run on the GPU:  python benchmarks/scan_probe.py [--only NAME,NAME] [--layouts contiguous,model] [--out FILE]
Every configuration that changes a kernel's compile-time parameters compiles it once per layout
(several seconds per kernel); lines are printed (and appended to --out) as they come.
"""
from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.testing

from mambakit.bench.ops_selective_scan import SCAN_SHAPE, _scan_inputs
from mambakit.ops.kernels import selective_scan as scan_module

DEVICE = "cuda"
DEFAULTS = dict(scan_module.CONFIG)
DT_RANK = 128  # mamba-1.4b: d_model / 16
# (name, CONFIG overrides); every entry starts from DEFAULTS
CONFIGURATIONS = [
    ("chunked (old kernel)", dict(variant="chunked", chunk=64, chunk_num_warps=1)),
    ("segmented (defaults)", {}),
    ("fwd block_d 64 2 warps", dict(block_d=64, num_warps=2)),
    ("fwd block_d 128 4 warps", dict(block_d=128, num_warps=4)),
    ("fwd block_d 16 (2 lanes per channel)", dict(block_d=16)),
    ("no prefetch", dict(prefetch=False)),
    ("fwd maxnreg 128", dict(maxnreg=128)),
    ("fwd 12 warps per SM", dict(warps_per_sm=12)),
    ("fwd 24 warps per SM", dict(warps_per_sm=24)),
    ("fwd 48 warps per SM", dict(warps_per_sm=48)),
    ("bwd sub 8", dict(backward_sub=8)),
    ("bwd block_d 16", dict(backward_block_d=16)),
    ("bwd block_d 16 sub 8", dict(backward_block_d=16, backward_sub=8)),
    ("bwd maxnreg 168", dict(backward_maxnreg=168)),
    ("bwd 2 partial sums", dict(backward_partials=2)),
    ("bwd 4 partial sums", dict(backward_partials=4)),
    ("bwd checkpoint 128", dict(checkpoint=128)),
    ("bwd scratch 64 MB", dict(backward_scratch_mb=64)),
    ("bwd scratch 1024 MB", dict(backward_scratch_mb=1024)),
    ("fwd maxnreg 96 20 warps per SM", dict(maxnreg=96, warps_per_sm=20)),
    ("fwd maxnreg 80 24 warps per SM", dict(maxnreg=80, warps_per_sm=24)),
    ("bwd 8 partial sums", dict(backward_partials=8)),
    ("bwd 16 partial sums", dict(backward_partials=16)),
    ("bwd 8 partial sums maxnreg 168", dict(backward_partials=8, backward_maxnreg=168)),
]


def model_layout(inputs: dict) -> dict:
    """The same values laid out as Mamba1Mixer.forward passes them to the scan."""
    batch, channels, length = inputs["u"].shape
    state = inputs["B"].shape[1]
    in_proj = torch.empty(batch, length, 2 * channels, device=DEVICE, dtype=inputs["z"].dtype)
    in_proj[..., channels:] = inputs["z"].transpose(1, 2)
    x_proj = torch.empty(batch, length, DT_RANK + 2 * state, device=DEVICE, dtype=inputs["B"].dtype)
    x_proj[..., DT_RANK:DT_RANK + state] = inputs["B"].transpose(1, 2)
    x_proj[..., DT_RANK + state:] = inputs["C"].transpose(1, 2)
    return dict(inputs, delta=inputs["delta"].transpose(1, 2).contiguous().transpose(1, 2),
                z=in_proj[..., channels:].transpose(1, 2),
                B=x_proj[..., DT_RANK:DT_RANK + state].transpose(1, 2),
                C=x_proj[..., DT_RANK + state:].transpose(1, 2))


def run_once(inputs: dict, grad_y: torch.Tensor) -> list[torch.Tensor]:
    """y and every input gradient of one forward + backward."""
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    y = scan_module.selective_scan(**leaves, delta_softplus=True)
    y.backward(grad_y)
    return [y.detach()] + [leaves[k].grad for k in sorted(leaves)]


def measure(inputs: dict, grad_y: torch.Tensor) -> dict:
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    with torch.no_grad():
        forward_ms = triton.testing.do_bench(lambda: scan_module.selective_scan(**inputs, delta_softplus=True),
                                             return_mode="median")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    train_ms = triton.testing.do_bench(
        lambda: scan_module.selective_scan(**leaves, delta_softplus=True).backward(grad_y),
        grad_to_none=list(leaves.values()), return_mode="median")
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    return dict(fwd_ms=round(forward_ms, 4), fwd_bwd_ms=round(train_ms, 4), peak_mb=round(peak_mb, 1))


def max_relative_difference(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    worst = 0.0
    for g, w in zip(got, want):
        scale = w.float().abs().max().clamp(min=1e-6)
        worst = max(worst, ((g.float() - w.float()).abs().max() / scale).item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated configuration names (default: all)")
    parser.add_argument("--layouts", default="contiguous,model")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args()
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    configurations = [c for c in CONFIGURATIONS if not wanted or c[0] in wanted or c is CONFIGURATIONS[0]]
    props = torch.cuda.get_device_properties(DEVICE) if DEVICE == "cuda" else None
    print(json.dumps(dict(device=props.name if props else DEVICE, torch=torch.__version__,
                          triton=triton.__version__, defaults=DEFAULTS)), flush=True)
    torch.manual_seed(0)
    contiguous = _scan_inputs(DEVICE, **SCAN_SHAPE)
    grad_y = torch.randn_like(contiguous["u"])
    shape = "b={batch} d={channels} l={length} n={state} bf16".format(**SCAN_SHAPE)
    out = open(args.out, "a") if args.out else None
    for layout in args.layouts.split(","):
        inputs = contiguous if layout == "contiguous" else model_layout(contiguous)
        baseline = None
        for name, overrides in configurations:
            scan_module.CONFIG.clear()
            scan_module.CONFIG.update(DEFAULTS, **overrides)
            row = dict(config=name, layout=layout, shape=shape, overrides=overrides)
            try:
                outputs = run_once(inputs, grad_y)
                baseline = baseline or outputs
                difference = max_relative_difference(outputs, baseline)
                row.update(measure(inputs, grad_y), max_rel_diff=float(f"{difference:.3g}"))
            except Exception as error:  # report and go on with the next configuration
                row["error"] = f"{type(error).__name__}: {error}"[:400]
            line = json.dumps(row)
            print(line, flush=True)
            if out:
                print(line, file=out, flush=True)
    scan_module.CONFIG.clear()
    scan_module.CONFIG.update(DEFAULTS)
    if out:
        out.close()


if __name__ == "__main__":
    main()
