"""Triton GEMV for batch-1 decoding: y = W x (+ b), streaming W at close to memory bandwidth.

At batch 1 a decode step is nothing but reading every weight once, and cuBLAS's GEMV reaches only
about half of the copy bandwidth (../shared/BENCHMARKS.md). Here each program owns ``BLOCK_N`` output
rows and walks K in ``BLOCK_K`` steps with wide coalesced loads, accumulating elementwise in fp32 and
reducing once at the end; ``BLOCK_N`` is chosen so that every matrix (in_proj, x_proj, dt_proj,
out_proj, lm_head) gives a few programs per multiprocessor. More than one row falls back to
``torch.nn.functional.linear`` (cuBLAS), which is efficient once the weights are reused across rows.

Shapes: x (..., k) with one row in all; weight (n, k) row-major; bias (n,); y (..., n) in x's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

PROGRAMS_PER_SM = 4
INTERPRETER_SMS = 4


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, N, K, stride_wn,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    cols = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_wn
    for start in range(0, K, BLOCK_K):
        k = start + cols
        k_ok = k < K
        x = tl.load(x_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        w = tl.load(w_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        acc += w * x[None, :]
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


def _block_n(n: int, device: torch.device) -> int:
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" \
        else INTERPRETER_SMS
    block = 1
    while block < 64 and n // (block * 2) >= sms * PROGRAMS_PER_SM:
        block *= 2
    return block


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    if rows != 1 or torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        # As one 2-D addmm: for a strided (..., k) view (dt of the split x_proj output) F.linear would run
        # a matmul and then a separate bias-add kernel over the whole (..., n) output.
        return torch.nn.functional.linear(x.reshape(rows, x.shape[-1]), weight, bias).view(*x.shape[:-1], -1)
    n, k = weight.shape
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    flat = x.reshape(k).contiguous()
    y = torch.empty(n, device=x.device, dtype=x.dtype)
    block_n = _block_n(n, x.device)
    block_k = min(triton.next_power_of_2(k), max(128, 4096 // block_n))
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        flat, weight, bias if bias is not None else y, y, n, k, weight.stride(0),
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
    )
    return y.reshape(*x.shape[:-1], n)
