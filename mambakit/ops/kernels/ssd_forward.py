"""Forward Triton kernels of the Mamba-2 SSD chunked scan (see ``ssd.py`` for the algorithm).

Shapes use the glossary of ``mambakit/ops/reference.py``; in addition ``c`` is the number of chunks,
``q`` the chunk size and ``lq = c * q`` the length padded to whole chunks. Per-position scalars are kept
chunk-padded in (b, h, lq) fp32 buffers, with dt = 0 (hence no decay) on the padding.

Kernels, in launch order:

1. ``_dt_cumsum_kernel``: dt after bias/softplus/clamp, its within-chunk cumulative sum of dt·A (the
   log-decay from the chunk start), and each chunk's total decay (zero where a packed sequence starts
   inside the chunk).
2. ``_chunk_state_kernel``: each chunk's own contribution to the state at its end, (p, n) per head,
   as one matrix product (x weighted)ᵀ B over the chunk. The backward reuses it for the gradient of
   the state entering a chunk, (dy weighted)ᵀ C.
3. ``_state_passing_kernel``: sequential over chunks, turns the chunk contributions into the state
   entering each chunk (in place) and the final state.
4. ``_chunk_output_kernel``: y = (C Bᵀ ∘ decay mask) (dt x) + decay · C stateᵀ + D x, gated by silu(z).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from mambakit.ops.kernels.ssd_common import (
    ScanGeometry, chunk_extent, chunk_segment_bounds, matmul, sigmoid, softplus, strides,
)


@triton.jit
def _dt_cumsum_kernel(
    dt_ptr, A_ptr, dt_bias_ptr, seg_ptr, dt_out_ptr, log_decay_ptr, chunk_decay_ptr,
    length, heads, padded_len, n_chunks, dt_min, dt_max,
    stride_dt_b, stride_dt_l, stride_dt_h,
    CHUNK: tl.constexpr, BLOCK_H: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    HAS_DT_LIMIT: tl.constexpr, HAS_SEQ_IDX: tl.constexpr,
):
    """One chunk × BLOCK_H heads. dt (b, l, h) -> dt_out, log_decay (b, h, lq); chunk_decay (b, h, c).

    log_decay[t] = sum of dt·A over the chunk's positions up to t; chunk_decay = exp(log_decay[last]),
    or 0 when a packed sequence starts inside the chunk (the entering state does not survive it).
    """
    chunk_idx = tl.program_id(0)
    batch_idx = tl.program_id(1).to(tl.int64)
    chunk_start, chunk_len = chunk_extent(chunk_idx, length, CHUNK)
    offs_t = tl.arange(0, CHUNK)
    offs_h = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    head_ok = offs_h < heads
    valid = (offs_t < chunk_len)[:, None] & head_ok[None, :]

    dt_chunk = dt_ptr + batch_idx * stride_dt_b + chunk_start * stride_dt_l
    dt = tl.load(dt_chunk + offs_t[:, None] * stride_dt_l + offs_h[None, :] * stride_dt_h,
                 mask=valid, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + offs_h, mask=head_ok, other=0.0).to(tl.float32)[None, :]
    if DT_SOFTPLUS:
        dt = softplus(dt)
    if HAS_DT_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    dt = tl.where(valid, dt, 0.0)
    A = tl.load(A_ptr + offs_h, mask=head_ok, other=0.0).to(tl.float32)
    log_decay = tl.cumsum(dt * A[None, :], axis=0)

    row_offs = offs_h[None, :] * padded_len + offs_t[:, None]
    scalars_chunk = batch_idx * heads * padded_len + chunk_start
    tl.store(dt_out_ptr + scalars_chunk + row_offs, dt, mask=head_ok[None, :])
    tl.store(log_decay_ptr + scalars_chunk + row_offs, log_decay, mask=head_ok[None, :])

    total = tl.sum(tl.where(offs_t[:, None] == CHUNK - 1, log_decay, 0.0), axis=0)  # (BLOCK_H,)
    chunk_decay = tl.exp(total)
    if HAS_SEQ_IDX:
        seg_before, seg_last = chunk_segment_bounds(seg_ptr, batch_idx, chunk_start, chunk_len, length)
        chunk_decay = tl.where(seg_before == seg_last, chunk_decay, 0.0)
    tl.store(chunk_decay_ptr + (batch_idx * heads + offs_h) * n_chunks + chunk_idx, chunk_decay, mask=head_ok)


@triton.jit
def _chunk_state_kernel(
    vec_ptr, mat_ptr, dt_ptr, log_decay_ptr, seg_ptr, out_ptr,
    length, heads, heads_per_group, head_dim, state_dim, padded_len, state_slots,
    stride_vec_b, stride_vec_l, stride_vec_h, stride_vec_p,
    stride_mat_b, stride_mat_l, stride_mat_g, stride_mat_n,
    CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    ENTERING_STATE_GRAD: tl.constexpr, HAS_SEQ_IDX: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    """One (chunk, batch × head): slot k < c of out (b, c + 1, h, p, n) fp32 = the sum over the chunk's
    positions t of weight_t · vec_t ⊗ mat_t, with vec (b, l, h, p) and mat (b, l, g, n).

    Forward (vec = x, mat = B): the chunk's contribution to its end state,
    weight_t = exp(log_decay[last] - log_decay[t]) · dt_t, zero for positions of an earlier segment
    than the last position's.
    Backward (ENTERING_STATE_GRAD, vec = dy, mat = C): the gradient of the state entering the chunk,
    weight_t = exp(log_decay[t]), zero for positions in a later segment than the entering state's.
    """
    chunk_idx = tl.program_id(0)
    batch_idx = (tl.program_id(1) // heads).to(tl.int64)
    head_idx = tl.program_id(1) % heads
    group_idx = head_idx // heads_per_group
    chunk_start, chunk_len = chunk_extent(chunk_idx, length, CHUNK)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    scalars_chunk = (batch_idx * heads + head_idx) * padded_len + chunk_start
    log_decay_last = tl.load(log_decay_ptr + scalars_chunk + CHUNK - 1)
    if HAS_SEQ_IDX:
        seg_before, seg_last = chunk_segment_bounds(seg_ptr, batch_idx, chunk_start, chunk_len, length)
    vec_chunk = vec_ptr + batch_idx * stride_vec_b + chunk_start * stride_vec_l + head_idx * stride_vec_h
    mat_chunk = mat_ptr + batch_idx * stride_mat_b + chunk_start * stride_mat_l + group_idx * stride_mat_g

    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for start in range(0, CHUNK, BLOCK_T):
        offs_t = start + tl.arange(0, BLOCK_T)
        t_ok = offs_t < chunk_len
        log_decay = tl.load(log_decay_ptr + scalars_chunk + offs_t)
        if ENTERING_STATE_GRAD:
            weight = tl.exp(log_decay)
        else:
            weight = tl.exp(log_decay_last - log_decay) * tl.load(dt_ptr + scalars_chunk + offs_t)
        if HAS_SEQ_IDX:
            seg = tl.load(seg_ptr + batch_idx * length + chunk_start + offs_t, mask=t_ok, other=-1)
            if ENTERING_STATE_GRAD:
                weight = tl.where(seg == seg_before, weight, 0.0)
            else:
                weight = tl.where(seg == seg_last, weight, 0.0)
        vec_t = tl.load(vec_chunk + offs_p[:, None] * stride_vec_p + offs_t[None, :] * stride_vec_l,
                        mask=(offs_p < head_dim)[:, None] & t_ok[None, :], other=0.0)  # (P, T)
        mat = tl.load(mat_chunk + offs_t[:, None] * stride_mat_l + offs_n[None, :] * stride_mat_n,
                      mask=t_ok[:, None] & (offs_n < state_dim)[None, :], other=0.0)  # (T, N)
        acc += matmul(vec_t * weight[None, :], mat, DOT_DTYPE, PRECISION)

    out = out_ptr + ((batch_idx * state_slots + chunk_idx) * heads + head_idx) * head_dim * state_dim
    tl.store(out + offs_p[:, None] * state_dim + offs_n[None, :], acc,
             mask=(offs_p < head_dim)[:, None] & (offs_n < state_dim)[None, :])


@triton.jit
def _state_passing_kernel(
    states_ptr, chunk_decay_ptr, initial_state_ptr, heads, n_chunks, state_size,
    BLOCK: tl.constexpr, HAS_INITIAL_STATE: tl.constexpr,
):
    """One tile of BLOCK of the p·n state entries of one batch × head, sequential over chunks.

    states (b, c + 1, h, p, n) fp32 holds in slot k < c chunk k's own contribution on entry, and on exit
    the state entering chunk k: entering[0] = initial state (b, h, p, n) or 0,
    entering[k + 1] = chunk_decay[k] · entering[k] + own[k]; slot c receives the final state.
    """
    row = tl.program_id(1).to(tl.int64)  # batch × head
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_state = offs < state_size
    if HAS_INITIAL_STATE:
        state = tl.load(initial_state_ptr + row * state_size + offs, mask=in_state, other=0.0)
    else:
        state = tl.zeros((BLOCK,), dtype=tl.float32)
    chunk_stride = heads * state_size
    slot = states_ptr + ((row // heads) * (n_chunks + 1) * heads + row % heads) * state_size + offs
    chunk_decays = chunk_decay_ptr + row * n_chunks
    # the loads of chunk k + 1 are issued before chunk k's update: one memory latency hides another's
    own = tl.load(slot, mask=in_state, other=0.0)
    decay = tl.load(chunk_decays)
    for chunk_idx in range(n_chunks):
        # (after the last chunk these read slot c and the last decay again: in bounds, unused)
        next_own = tl.load(slot + chunk_stride, mask=in_state, other=0.0)
        next_decay = tl.load(chunk_decays + tl.minimum(chunk_idx + 1, n_chunks - 1))
        tl.store(slot, state, mask=in_state)
        state = decay * state + own
        own = next_own
        decay = next_decay
        slot += chunk_stride
    tl.store(slot, state, mask=in_state)


@triton.jit
def _chunk_output_kernel(
    x_ptr, B_ptr, C_ptr, z_ptr, D_ptr, dt_ptr, log_decay_ptr, seg_ptr, states_ptr, y_ptr, y_ungated_ptr,
    length, heads, heads_per_group, head_dim, state_dim, padded_len, state_slots,
    stride_x_b, stride_x_l, stride_x_h, stride_x_p,
    stride_B_b, stride_B_l, stride_B_g, stride_B_n,
    stride_C_b, stride_C_l, stride_C_g, stride_C_n,
    stride_z_b, stride_z_l, stride_z_h, stride_z_p,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, D_PER_CHANNEL: tl.constexpr, HAS_Z: tl.constexpr, STORE_UNGATED: tl.constexpr,
    HAS_SEQ_IDX: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    """One block of BLOCK_M output positions t of one (chunk, batch × head). y: (b, l, h, p) contiguous.

    y_t = sum_{s <= t in the chunk and segment} (C_t·B_s) exp(log_decay[t] - log_decay[s]) dt_s x_s
          + exp(log_decay[t]) C_t · entering_state (if t is in the entering state's segment) + D x_t,
    then y *= silu(z_t). With STORE_UNGATED, y before the gate also goes to y_ungated (for dz).
    Positions are counted from the chunk start (t, s < CHUNK).
    """
    chunk_idx = tl.program_id(0) // (CHUNK // BLOCK_M)
    block_start = (tl.program_id(0) % (CHUNK // BLOCK_M)) * BLOCK_M
    batch_idx = (tl.program_id(1) // heads).to(tl.int64)
    head_idx = tl.program_id(1) % heads
    group_idx = head_idx // heads_per_group
    chunk_start, chunk_len = chunk_extent(chunk_idx, length, CHUNK)
    offs_t = block_start + tl.arange(0, BLOCK_M)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    t_ok = offs_t < chunk_len
    p_ok = offs_p < head_dim
    n_ok = offs_n < state_dim
    scalars_chunk = (batch_idx * heads + head_idx) * padded_len + chunk_start
    x_chunk = x_ptr + batch_idx * stride_x_b + chunk_start * stride_x_l + head_idx * stride_x_h
    B_chunk = B_ptr + batch_idx * stride_B_b + chunk_start * stride_B_l + group_idx * stride_B_g
    C_chunk = C_ptr + batch_idx * stride_C_b + chunk_start * stride_C_l + group_idx * stride_C_g

    log_decay_t = tl.load(log_decay_ptr + scalars_chunk + offs_t)
    C_t = tl.load(C_chunk + offs_t[:, None] * stride_C_l + offs_n[None, :] * stride_C_n,
                  mask=t_ok[:, None] & n_ok[None, :], other=0.0)  # (T, N)
    entering_weight = tl.exp(log_decay_t)
    if HAS_SEQ_IDX:
        seg_chunk = seg_ptr + batch_idx * length + chunk_start
        seg_t = tl.load(seg_chunk + offs_t, mask=t_ok, other=-1)
        seg_before, _ = chunk_segment_bounds(seg_ptr, batch_idx, chunk_start, chunk_len, length)
        entering_weight = tl.where(seg_t == seg_before, entering_weight, 0.0)
    state = states_ptr + ((batch_idx * state_slots + chunk_idx) * heads + head_idx) * head_dim * state_dim
    entering_state_T = tl.load(state + offs_n[:, None] + offs_p[None, :] * state_dim,
                               mask=n_ok[:, None] & p_ok[None, :], other=0.0)  # (N, P)
    acc = matmul(C_t, entering_state_T, DOT_DTYPE, PRECISION) * entering_weight[:, None]  # (T, P)

    for start in range(0, block_start + BLOCK_M, BLOCK_K):
        offs_s = start + tl.arange(0, BLOCK_K)
        s_ok = offs_s < chunk_len
        B_s = tl.load(B_chunk + offs_n[:, None] * stride_B_n + offs_s[None, :] * stride_B_l,
                      mask=n_ok[:, None] & s_ok[None, :], other=0.0)  # (N, S)
        scores = matmul(C_t, B_s, DOT_DTYPE, PRECISION)  # (T, S)
        log_decay_s = tl.load(log_decay_ptr + scalars_chunk + offs_s)
        linked = offs_t[:, None] >= offs_s[None, :]
        if HAS_SEQ_IDX:
            seg_s = tl.load(seg_chunk + offs_s, mask=s_ok, other=-2)
            linked = linked & (seg_t[:, None] == seg_s[None, :])
        decay = tl.exp(tl.where(linked, log_decay_t[:, None] - log_decay_s[None, :], float("-inf")))
        dt_s = tl.load(dt_ptr + scalars_chunk + offs_s)
        x_s = tl.load(x_chunk + offs_s[:, None] * stride_x_l + offs_p[None, :] * stride_x_p,
                      mask=s_ok[:, None] & p_ok[None, :], other=0.0)  # (S, P)
        acc += matmul(scores * decay * dt_s[None, :], x_s, DOT_DTYPE, PRECISION)

    io_mask = t_ok[:, None] & p_ok[None, :]
    if HAS_D:
        x_t = tl.load(x_chunk + offs_t[:, None] * stride_x_l + offs_p[None, :] * stride_x_p,
                      mask=io_mask, other=0.0).to(tl.float32)
        if D_PER_CHANNEL:
            D = tl.load(D_ptr + head_idx * head_dim + offs_p, mask=p_ok, other=0.0).to(tl.float32)[None, :]
        else:
            D = tl.load(D_ptr + head_idx).to(tl.float32)
        acc += D * x_t
    out_chunk = ((batch_idx * length + chunk_start) * heads + head_idx) * head_dim
    out_offs = offs_t[:, None] * (heads * head_dim) + offs_p[None, :]
    if HAS_Z:
        if STORE_UNGATED:
            tl.store(y_ungated_ptr + out_chunk + out_offs, acc, mask=io_mask)
        z_chunk = z_ptr + batch_idx * stride_z_b + chunk_start * stride_z_l + head_idx * stride_z_h
        z = tl.load(z_chunk + offs_t[:, None] * stride_z_l + offs_p[None, :] * stride_z_p,
                    mask=io_mask, other=0.0).to(tl.float32)
        acc *= z * sigmoid(z)
    tl.store(y_ptr + out_chunk + out_offs, acc, mask=io_mask)


class ForwardResult(NamedTuple):
    """Outputs of ``ssd_forward`` and what the backward needs of it."""

    y: torch.Tensor  # (b, l, h, p) in x's dtype
    y_ungated: torch.Tensor | None  # (b, l, h, p) y before the silu(z) gate (only when asked for)
    dt: torch.Tensor  # (b, h, lq) fp32 dt after bias / softplus / clamp, 0 on the padding
    log_decay: torch.Tensor  # (b, h, lq) fp32 within-chunk cumulative sum of dt·A
    chunk_decay: torch.Tensor  # (b, h, c) fp32 decay of a state across each whole chunk
    states: torch.Tensor  # (b, c + 1, h, p, n) fp32 state entering each chunk, then the final state


def dt_launch_args(dt: torch.Tensor, geo: ScanGeometry) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    """Grid and stride arguments of the per-position dt kernels (one chunk × block of heads each)."""
    grid = (geo.n_chunks, geo.batch, triton.cdiv(geo.heads, geo.block_h))
    return grid, tuple(dt.stride())


def ssd_forward(x, dt, A, B, C, geo: ScanGeometry, D=None, z=None, dt_bias=None, dt_softplus=False,
                dt_limit=None, initial_state=None, seg=None, store_ungated=False) -> ForwardResult:
    """Run the four forward kernels. Shapes as in ``ssd_scan``; ``seg`` from ``segment_ids``;
    ``dt_limit`` None or (min, max); ``initial_state`` None or contiguous fp32 (b, h, p, n)."""
    device = x.device
    scalars = dict(device=device, dtype=torch.float32)
    dt_out = torch.empty(geo.batch, geo.heads, geo.padded_len, **scalars)
    log_decay = torch.empty_like(dt_out)
    chunk_decay = torch.empty(geo.batch, geo.heads, geo.n_chunks, **scalars)
    grid, dt_strides = dt_launch_args(dt, geo)
    _dt_cumsum_kernel[grid](
        dt, A, dt_bias, seg, dt_out, log_decay, chunk_decay,
        geo.length, geo.heads, geo.padded_len, geo.n_chunks,
        *(dt_limit if dt_limit is not None else (0.0, 0.0)), *dt_strides,
        CHUNK=geo.chunk, BLOCK_H=geo.block_h, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=dt_softplus,
        HAS_DT_LIMIT=dt_limit is not None, HAS_SEQ_IDX=seg is not None, num_warps=4,
    )

    states = torch.empty(geo.batch, geo.n_chunks + 1, geo.heads, geo.head_dim, geo.state_dim, **scalars)
    _chunk_state_kernel[(geo.n_chunks, geo.batch * geo.heads)](
        x, B, dt_out, log_decay, seg, states,
        geo.length, geo.heads, geo.heads_per_group, geo.head_dim, geo.state_dim, geo.padded_len,
        geo.n_chunks + 1, *x.stride(), *B.stride(),
        CHUNK=geo.chunk, BLOCK_P=geo.block_p, BLOCK_N=geo.block_n, ENTERING_STATE_GRAD=False,
        HAS_SEQ_IDX=seg is not None, DOT_DTYPE=geo.dot_dtype, PRECISION=geo.precision, **geo.tiles("chunk_state"),
    )
    _state_passing_kernel[(triton.cdiv(geo.state_size, geo.state_block), geo.batch * geo.heads)](
        states, chunk_decay, initial_state, geo.heads, geo.n_chunks, geo.state_size,
        BLOCK=geo.state_block, HAS_INITIAL_STATE=initial_state is not None, num_warps=4,
    )

    y = torch.empty(geo.batch, geo.length, geo.heads, geo.head_dim, device=device, dtype=x.dtype)
    y_ungated = torch.empty_like(y) if z is not None and store_ungated else None
    tiles = geo.tiles("chunk_output")
    _chunk_output_kernel[(geo.n_chunks * (geo.chunk // tiles["BLOCK_M"]), geo.batch * geo.heads)](
        x, B, C, z, D, dt_out, log_decay, seg, states, y, y_ungated,
        geo.length, geo.heads, geo.heads_per_group, geo.head_dim, geo.state_dim, geo.padded_len,
        geo.n_chunks + 1, *x.stride(), *B.stride(), *C.stride(), *strides(z),
        CHUNK=geo.chunk, BLOCK_P=geo.block_p, BLOCK_N=geo.block_n,
        HAS_D=D is not None, D_PER_CHANNEL=D is not None and D.dim() == 2, HAS_Z=z is not None,
        STORE_UNGATED=y_ungated is not None, HAS_SEQ_IDX=seg is not None,
        DOT_DTYPE=geo.dot_dtype, PRECISION=geo.precision, **tiles,
    )
    return ForwardResult(y, y_ungated, dt_out, log_decay, chunk_decay, states)
