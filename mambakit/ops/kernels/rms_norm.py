"""Triton RMSNorm: fused residual add + RMSNorm, and Mamba-2's gated group RMSNorm.

Shapes (see ``mambakit.ops.reference``): x, residual, z: (..., d), flattened to rows of d; weight: (d,).

Design: both ops share one pair of kernels whose program normalizes one group of one row (plain RMSNorm is
a single group of d; grid axis 1 walks the groups). The forward reads each input once, keeps the group in
fp32 registers and writes y (and the residual sum, rounded to its dtype only on store) plus one fp32 rstd
per (row, group). The backward recomputes the normalized values from the inputs and rstd; each program
walks a contiguous block of rows of its group and accumulates dweight in registers, so the weight
gradient costs one (programs, d) partial buffer and a sum instead of atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Backward programs per streaming multiprocessor (each loops over a block of rows).
BACKWARD_PROGRAMS_PER_SM = 4
# Backward programs when running on CPU tensors (the Triton interpreter).
INTERPRETER_BACKWARD_PROGRAMS = 4
MAX_GROUP_ELEMENTS = 65536


@triton.jit
def _norm_forward_kernel(
    x_ptr, residual_ptr, z_ptr, weight_ptr, y_ptr, residual_out_ptr, rstd_ptr,
    stride_x, stride_residual, stride_z, stride_y, stride_residual_out, group_size, eps,
    BLOCK_C: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_GATE: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, STORE_RESIDUAL: tl.constexpr,
):
    """Grid (rows, groups): s = x (+ residual) (* silu(z)) over the group; y = weight * s * rstd."""
    row = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1)
    offs = tl.arange(0, BLOCK_C)
    mask = offs < group_size
    cols = group * group_size + offs
    summed = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        summed += tl.load(residual_ptr + row * stride_residual + cols, mask=mask, other=0.0).to(tl.float32)
    if STORE_RESIDUAL:
        tl.store(residual_out_ptr + row * stride_residual_out + cols,
                 summed.to(residual_out_ptr.dtype.element_ty), mask=mask)
    if HAS_GATE:
        z = tl.load(z_ptr + row * stride_z + cols, mask=mask, other=0.0).to(tl.float32)
        summed = summed * z * tl.sigmoid(z)
    rstd = tl.rsqrt(tl.sum(summed * summed, axis=0) / group_size + eps)
    tl.store(rstd_ptr + row * tl.num_programs(1) + group, rstd)
    out = summed * rstd
    if HAS_WEIGHT:
        out = out * tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_y + cols, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _norm_backward_kernel(
    x_ptr, residual_ptr, z_ptr, weight_ptr, rstd_ptr, dy_ptr, dresidual_out_ptr,
    dx_ptr, dresidual_ptr, dz_ptr, dweight_partial_ptr,
    stride_x, stride_residual, stride_z, stride_dy, stride_dresidual_out, stride_dx, stride_dresidual, stride_dz,
    rows, rows_per_program, group_size,
    BLOCK_C: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_GATE: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_DRESIDUAL_OUT: tl.constexpr, STORE_DRESIDUAL: tl.constexpr,
):
    """Grid (programs, groups); program p takes rows [p * rows_per_program, ...) of one group. With
    n = s * rstd and dn = dy * weight: ds = rstd * (dn - n * mean(dn * n)) (+ dresidual_out);
    dx = ds (* silu(z)), dz = ds * x * silu'(z), dresidual = ds; dweight partial[p] = sum_rows dy * n."""
    pid = tl.program_id(0)
    group = tl.program_id(1)
    num_groups = tl.num_programs(1)
    offs = tl.arange(0, BLOCK_C)
    mask = offs < group_size
    cols = group * group_size + offs
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        dweight = tl.zeros([BLOCK_C], dtype=tl.float32)
    first_row = pid.to(tl.int64) * rows_per_program
    for row in range(first_row, tl.minimum(first_row + rows_per_program, rows)):
        summed = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            summed += tl.load(residual_ptr + row * stride_residual + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_GATE:
            z = tl.load(z_ptr + row * stride_z + cols, mask=mask, other=0.0).to(tl.float32)
            z_sigmoid = tl.sigmoid(z)
            gate = z * z_sigmoid
            gated = summed * gate
        else:
            gated = summed
        rstd = tl.load(rstd_ptr + row * num_groups + group)
        normed = gated * rstd
        dy = tl.load(dy_ptr + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_WEIGHT:
            dweight += dy * normed
            dnormed = dy * weight
        else:
            dnormed = dy
        dgated = (dnormed - normed * (tl.sum(dnormed * normed, axis=0) / group_size)) * rstd
        if HAS_GATE:
            tl.store(dz_ptr + row * stride_dz + cols,
                     (dgated * summed * z_sigmoid * (1.0 + z * (1.0 - z_sigmoid))).to(dz_ptr.dtype.element_ty),
                     mask=mask)
            dsummed = dgated * gate
        else:
            dsummed = dgated
        if HAS_DRESIDUAL_OUT:
            dsummed += tl.load(dresidual_out_ptr + row * stride_dresidual_out + cols, mask=mask,
                               other=0.0).to(tl.float32)
        tl.store(dx_ptr + row * stride_dx + cols, dsummed.to(dx_ptr.dtype.element_ty), mask=mask)
        if STORE_DRESIDUAL:
            tl.store(dresidual_ptr + row * stride_dresidual + cols, dsummed.to(dresidual_ptr.dtype.element_ty),
                     mask=mask)
    if HAS_WEIGHT:
        tl.store(dweight_partial_ptr + pid * num_groups * group_size + cols, dweight, mask=mask)


def _rows(t: torch.Tensor | None, width: int) -> torch.Tensor | None:
    """t viewed as (rows, width) with unit stride along the row (copied only when it must be)."""
    if t is None:
        return None
    t = t.reshape(-1, width)
    return t if t.stride(-1) == 1 else t.contiguous()


def _row_stride(t: torch.Tensor | None) -> int:
    return t.stride(0) if t is not None else 0


def _block_size(width: int, group_size: int) -> tuple[int, int]:
    """(BLOCK_C, num_warps) for groups of ``group_size`` in rows of ``width``: about 8 elements a thread."""
    if width % group_size:
        raise ValueError(f"group_size {group_size} does not divide the normalized width {width}")
    block_c = triton.next_power_of_2(group_size)
    if block_c > MAX_GROUP_ELEMENTS:
        raise ValueError(f"groups of {group_size} elements exceed the Triton norm's {MAX_GROUP_ELEMENTS}")
    return block_c, min(16, max(1, block_c // 256))


def _backward_programs(device: torch.device, rows: int, groups: int) -> int:
    """Programs per group: a few per SM over all groups (a handful in the interpreter)."""
    if device.type != "cuda":
        return min(rows, INTERPRETER_BACKWARD_PROGRAMS)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return min(rows, max(1, BACKWARD_PROGRAMS_PER_SM * sms // groups))


class _RowNorm(torch.autograd.Function):
    """The shared autograd function: s = x (+ residual) (* silu(z)), y = weight * rmsnorm_per_group(s).

    Returns (y, residual_out) with residual_out = x + residual in ``residual_dtype`` (None: not returned).
    """

    @staticmethod
    def forward(ctx, x, residual, z, weight, eps, group_size, out_dtype, residual_dtype):
        shape, width = x.shape, x.shape[-1]
        x2, residual2, z2 = _rows(x, width), _rows(residual, width), _rows(z, width)
        weight = weight.contiguous() if weight is not None else None
        rows = x2.shape[0]
        block_c, num_warps = _block_size(width, group_size)
        y = torch.empty(rows, width, dtype=out_dtype, device=x.device)
        residual_out = (torch.empty(rows, width, dtype=residual_dtype, device=x.device)
                        if residual_dtype is not None else None)
        rstd = torch.empty(rows, width // group_size, dtype=torch.float32, device=x.device)
        _norm_forward_kernel[(rows, width // group_size)](
            x2, residual2 if residual2 is not None else x2, z2 if z2 is not None else x2,
            weight if weight is not None else x2, y, residual_out if residual_out is not None else y, rstd,
            x2.stride(0), _row_stride(residual2), _row_stride(z2), y.stride(0), _row_stride(residual_out),
            group_size, eps, BLOCK_C=block_c, HAS_RESIDUAL=residual is not None, HAS_GATE=z is not None,
            HAS_WEIGHT=weight is not None, STORE_RESIDUAL=residual_out is not None, num_warps=num_warps,
        )
        ctx.save_for_backward(x2, residual2, z2, weight, rstd)
        ctx.shape, ctx.group_size = shape, group_size
        ctx.set_materialize_grads(False)
        return y.view(shape), None if residual_out is None else residual_out.view(shape)

    @staticmethod
    def backward(ctx, grad_y, grad_residual_out):
        x2, residual2, z2, weight, rstd = ctx.saved_tensors
        rows, width = x2.shape
        group_size = ctx.group_size
        block_c, num_warps = _block_size(width, group_size)
        dy = _rows(grad_y, width) if grad_y is not None else torch.zeros_like(x2)
        dresidual_out = _rows(grad_residual_out, width)
        dx = torch.empty_like(x2)
        dresidual = torch.empty_like(residual2) if residual2 is not None and ctx.needs_input_grad[1] else None
        dz = torch.empty_like(z2) if z2 is not None else None
        programs = _backward_programs(x2.device, rows, width // group_size)
        dweight_partial = (torch.empty(programs, width, dtype=torch.float32, device=x2.device)
                           if weight is not None else None)
        _norm_backward_kernel[(programs, width // group_size)](
            x2, residual2 if residual2 is not None else x2, z2 if z2 is not None else x2,
            weight if weight is not None else x2, rstd, dy, dresidual_out if dresidual_out is not None else dy,
            dx, dresidual if dresidual is not None else dx, dz if dz is not None else dx,
            dweight_partial if dweight_partial is not None else dx,
            x2.stride(0), _row_stride(residual2), _row_stride(z2), dy.stride(0), _row_stride(dresidual_out),
            dx.stride(0), _row_stride(dresidual), _row_stride(dz),
            rows, triton.cdiv(rows, programs), group_size,
            BLOCK_C=block_c, HAS_RESIDUAL=residual2 is not None, HAS_GATE=z2 is not None,
            HAS_WEIGHT=weight is not None, HAS_DRESIDUAL_OUT=dresidual_out is not None,
            STORE_DRESIDUAL=dresidual is not None, num_warps=num_warps,
        )
        shape = ctx.shape
        dweight = dweight_partial.sum(0).to(weight.dtype) if weight is not None else None
        return (dx.view(shape), None if dresidual is None else dresidual.view(shape),
                None if dz is None else dz.view(shape), dweight, None, None, None, None)


def rms_norm(x, weight=None, eps=1e-5, residual=None, residual_in_fp32=True):
    """Residual add + RMSNorm over the last axis (same contract and dtypes as the reference).

    x: (..., d); weight: (d,) or None; residual: like x. Returns (y, residual_out): residual_out = x + residual
    (fp32 when ``residual_in_fp32``, else x's dtype) and y = weight * normalize(residual_out) in weight's
    dtype (x's when weightless).
    """
    out_dtype = weight.dtype if weight is not None else x.dtype
    residual_dtype = torch.float32 if residual_in_fp32 else x.dtype
    return _RowNorm.apply(x, residual, None, weight, eps, x.shape[-1], out_dtype, residual_dtype)


def gated_rms_norm(x, z, weight, eps=1e-5, group_size=None):
    """Mamba-2's gated group RMSNorm y = weight * rmsnorm_per_group(x * silu(z)).

    x, z: (..., d); weight: (d,); group_size divides d (default d). Returns y in the dtype of weight * x
    (x's dtype when they match), as the reference.
    """
    out_dtype = torch.promote_types(weight.dtype, x.dtype)
    y, _ = _RowNorm.apply(x, None, z, weight, eps, group_size or x.shape[-1], out_dtype, None)
    return y
