"""The experiment behind the norm GEMV's tile choice: a residual + RMSNorm GEMV whose weight loads Triton
pipelines (``tl.range(num_stages=...)``), over tile shapes, stages and warps, against ``ops.norm_linear``
as it was, at the mamba-1.4b in_proj (8192 x 2048) and lm_head (50280 x 2048) shapes, batch 1: per launch
over 48 (in_proj) or 4 (lm_head) distinct bf16 weights in a CUDA graph. ``acc2d`` accumulates the products
elementwise and reduces once at the end instead of once per K block. One JSON line per measurement, with
the largest deviation from ``ops.norm_linear``.

    python benchmarks/gemv_pipelining_probe.py

Its result (benchmarks/results/2026-11-29-h200-gemv-pipelining-probe.jsonl): [16, 256] tiles, 3 stages,
4 warps: in_proj 10.6 µs (16.3 before), lm_head 50.1 µs (70.2); ``decode_fused`` now streams its weights
this way.
"""
from __future__ import annotations

import json

import torch
import triton
import triton.language as tl

from decode_probe import graph_us, pdl  # this script's folder is on sys.path

from mambakit import ops

D_MODEL = 2048
# (BLOCK_N, BLOCK_K, stages, warps, acc2d)
CONFIGURATIONS = [(8, 512, 3, 4, 0), (8, 512, 4, 4, 0), (8, 256, 4, 4, 0), (16, 256, 3, 4, 0), (16, 256, 4, 8, 0),
                  (4, 512, 4, 4, 0), (8, 512, 2, 4, 0), (16, 512, 3, 8, 0), (8, 1024, 3, 8, 0), (4, 1024, 3, 4, 0),
                  (16, 128, 4, 4, 0), (8, 512, 3, 4, 1), (4, 1024, 3, 4, 1), (2, 2048, 2, 4, 1), (4, 512, 4, 4, 1)]
MATRICES = (("in_proj", 8192, 48), ("lm_head", 50280, 4))  # (name, rows, distinct weights)


@triton.jit
def _staged_norm_gemv(weight_ptr, out_ptr, x_ptr, residual_ptr, norm_weight_ptr, N, K, eps, stride_w_n,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, ACC2D: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N),): out[rows] = weight[rows] @ rmsnorm(x + residual) * norm_weight; K % BLOCK_K == 0."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs = tl.arange(0, BLOCK_K)
    row_mask = rows < N
    weight_rows = weight_ptr + rows.to(tl.int64)[:, None] * stride_w_n
    acc = tl.zeros((BLOCK_N,), tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    sum_squares = tl.zeros((BLOCK_K,), tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        w = tl.load(weight_rows + (k0 + offs)[None, :], mask=row_mask[:, None], other=0.0,
                    eviction_policy="evict_first")
        x = tl.load(x_ptr + k0 + offs).to(tl.float32) + tl.load(residual_ptr + k0 + offs)
        sum_squares += x * x
        v = x * tl.load(norm_weight_ptr + k0 + offs).to(tl.float32)
        if ACC2D:
            acc2 += w.to(tl.float32) * v[None, :]
        else:
            acc += tl.sum(w.to(tl.float32) * v[None, :], axis=1)
    if ACC2D:
        acc = tl.sum(acc2, axis=1)
    rstd = tl.rsqrt(tl.sum(sum_squares, axis=0) / K + eps)
    tl.store(out_ptr + rows, (acc * rstd).to(out_ptr.dtype.element_ty), mask=row_mask)


def main() -> None:
    torch.set_grad_enabled(False)
    hidden = torch.randn(1, D_MODEL, device="cuda", dtype=torch.bfloat16)
    residual = torch.randn(1, D_MODEL, device="cuda")
    norm_weight = torch.ones(D_MODEL, device="cuda", dtype=torch.bfloat16)
    for name, n, layers in MATRICES:
        weights = [torch.randn(n, D_MODEL, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(layers)]
        moved = n * D_MODEL * 2
        for use_pdl in (True, False):
            with pdl(use_pdl):
                us = graph_us(lambda: [ops.norm_linear(hidden, residual, norm_weight, 1e-5, w) for w in weights])
            print(json.dumps({"matrix": name, "impl": f"norm_linear pdl={use_pdl}", "us": round(us / layers, 2),
                              "gbps": round(moved / (us / layers) / 1e3)}), flush=True)
        expected = ops.norm_linear(hidden, residual, norm_weight, 1e-5, weights[0])[0]
        for block_n, block_k, stages, warps, acc2d in CONFIGURATIONS:
            out = torch.empty(1, n, device="cuda", dtype=torch.bfloat16)

            def run(weight):
                _staged_norm_gemv[(triton.cdiv(n, block_n),)](
                    weight, out, hidden, residual, norm_weight, n, D_MODEL, 1e-5, weight.stride(0),
                    BLOCK_N=block_n, BLOCK_K=block_k, STAGES=stages, ACC2D=acc2d, num_warps=warps)

            run(weights[0])
            error = (out.float() - expected.float()).abs().max().item()
            us = graph_us(lambda: [run(w) for w in weights]) / layers
            print(json.dumps({"matrix": name, "impl": "staged", "block_n": block_n, "block_k": block_k,
                              "stages": stages, "warps": warps, "acc2d": acc2d, "us": round(us, 2),
                              "gbps": round(moved / us / 1e3), "max_err": round(error, 4)}), flush=True)
        del weights
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
