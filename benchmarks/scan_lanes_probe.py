"""A rejected layout for the Mamba-1 scan forward, kept with its measurement: the states of a channel across lanes.

The segmented forward (ops/kernels/selective_scan_forward.py) holds all n states of a channel in one thread:
every step needs all n values of B and C broadcast to every thread (32 registers at n=16), and the 4,096
channels of a batch row give too few threads to fill an H200, hence the extra summary pass over segments.
Here a thread holds 2 states (two (d, n/2) halves), a channel's states span n/2 lanes, and y is summed over
them with shuffles: 8 times the threads, no summary pass, each thread loading only its own B and C. Compiled
by Triton 3.9 for sm_90 the loop is 275 instructions per 8 steps x 2 states (1.5 shuffles per state and
step) with the steps of a tile in each thread; Triton 3.6 (the H200 machine) lays those steps across lanes
instead, and the kernel ran at 3.17-4.91 ms (22.7 with two warps) against the segmented kernel's 0.81 ms
(H200, mamba-1.4b shape, model layout, forward only, no checkpoints). It computes the same y (max relative
difference 7.5e-4 against the segmented kernel in bf16). The lines of 2026-11-29-h200-scan-lanes-probe.jsonl
were written by this script's first form, whose fields current_fwd_ms and projection_copy_ms are
segmented_fwd_ms and the time of the B and C copies.

    python benchmarks/scan_lanes_probe.py [--out FILE]
"""
import argparse
import json

import torch
import triton
import triton.language as tl
import triton.testing

from scan_probe import model_layout  # this script's folder is on sys.path

from mambakit.bench.ops_selective_scan import SCAN_SHAPE, _scan_inputs
from mambakit.ops.kernels.selective_scan import _step_major_projection, selective_scan

LOG2E = tl.constexpr(1.4426950408889634)

@triton.jit
def softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))

@triton.jit(do_not_specialize=["zero"])
def _lanes_forward(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, length, channels,
                   s_u_d, s_u_l, s_dl_d, s_dl_l, s_z_d, s_z_l, s_y_d, s_y_l, s_A_d, s_A_n, zero,
                   BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, STEPS: tl.constexpr):
    HALF: tl.constexpr = N_PAD // 2
    d2 = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    dz = (d2 + zero).to(tl.int64)
    steps = tl.arange(0, STEPS) + zero
    half = tl.arange(0, HALF) + zero
    s3 = tl.arange(0, STEPS)[:, None, None]
    d3 = d2[None, :, None]
    n3 = half[None, None, :]
    A_lo = tl.load(A_ptr + d3 * s_A_d + n3 * s_A_n) * LOG2E
    A_hi = tl.load(A_ptr + d3 * s_A_d + (n3 + HALF) * s_A_n) * LOG2E
    bias = tl.load(bias_ptr + d2)
    skip = tl.load(D_ptr + d2)
    h_lo = tl.zeros((BLOCK_D, HALF), dtype=tl.float32)
    h_hi = tl.zeros((BLOCK_D, HALF), dtype=tl.float32)
    for t0 in range(0, length, STEPS):
        t = t0 + steps
        dl = softplus(tl.load(delta_ptr + t[:, None] * s_dl_l + dz[None, :] * s_dl_d).to(tl.float32) + bias[None, :])
        u = tl.load(u_ptr + t[:, None] * s_u_l + dz[None, :] * s_u_d).to(tl.float32)
        du = dl * u
        bc = t[:, None, None] * N_PAD + n3 + d3 * 0
        B_lo = tl.load(B_ptr + bc)
        B_hi = tl.load(B_ptr + bc + HALF)
        C_lo = tl.load(C_ptr + bc)
        C_hi = tl.load(C_ptr + bc + HALF)
        dl3 = dl[:, :, None]
        du3 = du[:, :, None]
        decay_lo = tl.exp2(dl3 * A_lo)
        decay_hi = tl.exp2(dl3 * A_hi)
        in_lo = du3 * B_lo
        in_hi = du3 * B_hi
        ys = tl.zeros((STEPS, BLOCK_D, HALF), dtype=tl.float32)
        for j in tl.static_range(STEPS):
            row = s3 == j
            h_lo = tl.sum(tl.where(row, decay_lo, -0.0), axis=0) * h_lo + tl.sum(tl.where(row, in_lo, -0.0), axis=0)
            h_hi = tl.sum(tl.where(row, decay_hi, -0.0), axis=0) * h_hi + tl.sum(tl.where(row, in_hi, -0.0), axis=0)
            C_j = tl.sum(tl.where(row, C_lo, -0.0), axis=0) * h_lo + tl.sum(tl.where(row, C_hi, -0.0), axis=0) * h_hi
            ys = tl.where(row, C_j[None, :, :], ys)
        y = tl.sum(ys, axis=2) + skip[None, :] * u
        z = tl.load(z_ptr + t[:, None] * s_z_l + dz[None, :] * s_z_d).to(tl.float32)
        y = y * z * tl.sigmoid(z)
        tl.store(y_ptr + t[:, None] * s_y_l + dz[None, :] * s_y_d, y.to(y_ptr.dtype.element_ty))


def lanes(u, delta, A, B32, C32, D, z, bias, steps=8, num_warps=1):
    """y (b, d, l) for u, delta, z (b, d, l), B32, C32 (b, 1, l, n) fp32 (the segmented kernel's copies)."""
    b, d, l = u.shape
    y = torch.empty_like(u)
    n_pad = B32.shape[-1]
    block_d = (64 // n_pad) * num_warps
    for row in range(b):
        _lanes_forward[(d // block_d,)](u[row], delta[row], A, B32[row, 0], C32[row, 0], D, z[row], bias, y[row], l, d,
                                        *u[row].stride(), *delta[row].stride(), *z[row].stride(), *y[row].stride(),
                                        *A.stride(), 0, BLOCK_D=block_d, N_PAD=n_pad, STEPS=steps, num_warps=num_warps)
    return y


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also append the JSON lines to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    inputs = model_layout(_scan_inputs("cuda", **SCAN_SHAPE))
    length = inputs["u"].shape[-1]
    B32, C32 = (_step_major_projection(inputs[name], length, 16) for name in ("B", "C"))
    lanes_inputs = ([inputs[name] for name in ("u", "delta", "A")] + [B32, C32]
                    + [inputs[name] for name in ("D", "z", "delta_bias")])
    with torch.no_grad():
        want = selective_scan(**inputs, delta_softplus=True)
        segmented_ms = triton.testing.do_bench(lambda: selective_scan(**inputs, delta_softplus=True),
                                               return_mode="median")
        for steps, num_warps in ((8, 1), (8, 2), (16, 1), (4, 1)):
            got = lanes(*lanes_inputs, steps, num_warps)
            difference = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
            ms = triton.testing.do_bench(lambda: lanes(*lanes_inputs, steps, num_warps), return_mode="median")
            line = json.dumps(dict(steps=steps, num_warps=num_warps, lanes_ms=round(ms, 4),
                                   segmented_fwd_ms=round(segmented_ms, 4), max_rel_diff=float(f"{difference:.3g}")))
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as out:
                    print(line, file=out)


if __name__ == "__main__":
    main()
