"""Triton kernel for one decoding step of the SSM recurrence (Mamba-1 and Mamba-2 layouts).

Same signature and results as ``mambakit.ops.reference.selective_state_update``; updates ``state`` in
place. Both layouts are one kernel over "rows": a Mamba-1 channel is a head of head dim 1, and the
rows of a batch element are its (head, head-dim) pairs. Each program owns ``BLOCK_ROWS`` rows and all
n states of one batch element, so a state tile is read and written once, coalesced along n.
Nothing depends on the data on the host (no sync, no data-dependent allocation): the call can be
captured in a CUDA graph.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from mambakit.ops.reference import mamba1_as_heads

LOG2E = tl.constexpr(1.4426950408889634)
# State elements (rows x padded n) per program, at most STATE_MAX_ROWS rows, and its warps. H200, batch 64,
# 48 layers (benchmarks/state_update_probe.py): mamba2-1.3b (n=128) 72 µs a layer fp32 / 49 bf16 at 2048
# elements against 96 / 97 at 512; mamba-1.4b (n=16) is best at 64 rows (12.6 / 8.8 µs against 12.8 / 12.0).
STATE_TILE_ELEMENTS = 2048
STATE_MAX_ROWS = 64
STATE_NUM_WARPS = 4


@triton.jit
def _selective_state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, y_ptr,
    rows, head_dim, state_size, heads_per_group,
    stride_state_b, stride_state_h, stride_state_p, stride_state_n,
    stride_x_b, stride_x_h, stride_x_p, stride_dt_b, stride_dt_h, stride_dt_p,
    stride_z_b, stride_z_h, stride_z_p, stride_y_b, stride_y_h, stride_y_p,
    stride_A_h, stride_A_p, stride_A_n, stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n,
    stride_D_h, stride_D_p, stride_dt_bias_h, stride_dt_bias_p,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    A_IS_LOG: tl.constexpr, A_PER_ROW: tl.constexpr, BLOCK_ROWS: tl.constexpr, STATE_PAD: tl.constexpr,
):
    """Grid (cdiv(h * p, BLOCK_ROWS), b). state: (b, h, p, n); x, dt, z, y: (b, h, p); A: (h, p, n) (A_log
    with A_IS_LOG; A_PER_ROW: its n stride is 0); B, C: (b, g, n); D, dt_bias: (h, p). Row r is head r // p,
    head-dim index r % p."""
    batch = tl.program_id(1).to(tl.int64)
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = row < rows
    head = row // head_dim
    lane = row % head_dim
    group = head // heads_per_group
    n = tl.arange(0, STATE_PAD)[None, :]
    tile_mask = row_mask[:, None] & (n < state_size)

    state_ptrs = (state_ptr + batch * stride_state_b + (head * stride_state_h + lane * stride_state_p)[:, None]
                  + n * stride_state_n)
    state = tl.load(state_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + batch * stride_x_b + head * stride_x_h + lane * stride_x_p, mask=row_mask, other=0.0)
    x = x.to(tl.float32)
    dt = tl.load(dt_ptr + batch * stride_dt_b + head * stride_dt_h + lane * stride_dt_p, mask=row_mask, other=0.0)
    dt = dt.to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + head * stride_dt_bias_h + lane * stride_dt_bias_p, mask=row_mask,
                      other=0.0).to(tl.float32)
    if DT_SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))
    if A_PER_ROW:  # Mamba-2: one rate per head, so one exp per row below
        A = tl.load(A_ptr + head * stride_A_h + lane * stride_A_p, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    else:
        A = tl.load(A_ptr + (head * stride_A_h + lane * stride_A_p)[:, None] + n * stride_A_n, mask=tile_mask,
                    other=0.0).to(tl.float32)
    if A_IS_LOG:
        A = -tl.exp(A)
    B = tl.load(B_ptr + batch * stride_B_b + (group * stride_B_g)[:, None] + n * stride_B_n, mask=tile_mask,
                other=0.0).to(tl.float32)
    C = tl.load(C_ptr + batch * stride_C_b + (group * stride_C_g)[:, None] + n * stride_C_n, mask=tile_mask,
                other=0.0).to(tl.float32)

    state = tl.exp2(dt[:, None] * A * LOG2E) * state + (dt * x)[:, None] * B
    tl.store(state_ptrs, state.to(state_ptr.dtype.element_ty), mask=tile_mask)
    y = tl.sum(state * C, axis=1)
    if HAS_D:
        y += x * tl.load(D_ptr + head * stride_D_h + lane * stride_D_p, mask=row_mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + batch * stride_z_b + head * stride_z_h + lane * stride_z_p, mask=row_mask, other=0.0)
        z = z.to(tl.float32)
        y *= z * tl.sigmoid(z)
    tl.store(y_ptr + batch * stride_y_b + head * stride_y_h + lane * stride_y_p, y.to(y_ptr.dtype.element_ty),
             mask=row_mask)


def _strides3(t: torch.Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if t is None else tuple(t.stride())


def _strides2(t: torch.Tensor | None) -> tuple[int, int]:
    return (0, 0) if t is None else tuple(t.stride())


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, A_is_log=False):
    """One decoding step of the SSM recurrence, for both mixers. Updates ``state`` in place.

    Mamba-1 layout: state (b, d, n); x, dt, z: (b, d); A: (d, n); B, C: (b, n) or (b, g, n); D, dt_bias: (d,).
    Mamba-2 layout: state (b, h, p, n); x, dt, z: (b, h, p); A: (h, p, n); B, C: (b, g, n); D, dt_bias: (h, p).
    ``A_is_log``: A holds A_log, the decay rate is -exp(A_log). Returns y like x: y = (C h + D x) * silu(z).
    """
    if state.dim() == 3:
        return selective_state_update(*mamba1_as_heads(state, x, dt, A, B, C, D, z, dt_bias), dt_softplus,
                                      A_is_log).squeeze(-1)
    batch, heads, head_dim, state_size = state.shape
    B = B if B.dim() == 3 else B.unsqueeze(1)
    C = C if C.dim() == 3 else C.unsqueeze(1)
    groups = B.shape[1]
    if heads % groups:
        raise ValueError(f"{heads} heads cannot be split into {groups} groups")
    y = torch.empty_like(x)
    rows = heads * head_dim
    state_pad = triton.next_power_of_2(state_size)
    block_rows = min(triton.next_power_of_2(rows), STATE_MAX_ROWS, max(1, STATE_TILE_ELEMENTS // state_pad))
    grid = (triton.cdiv(rows, block_rows), batch)
    _selective_state_update_kernel[grid](
        state, x, dt, A, B, C, A if D is None else D, x if z is None else z, A if dt_bias is None else dt_bias, y,
        rows, head_dim, state_size, heads // groups,
        *state.stride(), *x.stride(), *dt.stride(), *_strides3(z), *y.stride(),
        *A.stride(), *B.stride(), *C.stride(), *_strides2(D), *_strides2(dt_bias),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
        A_IS_LOG=bool(A_is_log), A_PER_ROW=A.stride(-1) == 0, BLOCK_ROWS=block_rows, STATE_PAD=state_pad,
        num_warps=STATE_NUM_WARPS,
    )
    return y
