"""Backward Triton kernels of the Mamba-2 SSD chunked scan (shapes and buffers as in ``ssd_forward.py``).

The forward keeps dt, the within-chunk log-decay and the state entering every chunk (plus the final
state); nothing of the forward is recomputed here except the C·Bᵀ and dy·xᵀ tiles, which are cheaper to
redo on tensor cores than to store. Notation per chunk and head: ℓ_t = log_decay, w_ts =
exp(ℓ_t - ℓ_s) for s <= t in one segment (else 0), dy = the gradient of y before the silu(z) gate.

Kernels, in launch order:

1. ``_gate_backward_kernel`` (only with z): dy = dout·silu(z), dz = dout·y_ungated·silu'(z).
2. ``_chunk_state_kernel`` (forward file, ENTERING_STATE_GRAD): the gradient of the state entering
   each chunk through that chunk's outputs, Σ_t exp(ℓ_t) dy_t ⊗ C_t.
3. ``_state_passing_backward_kernel``: sequential over chunks from the last; the gradient G_k of the
   state leaving chunk k (in place), the gradient of the initial state, and <G_k, leaving state_k>,
   the derivative of the loss with respect to ℓ_last of chunk k through that state.
4. ``_chunk_input_grad_kernel``: per block of source positions s, looping over a few heads of a group:
   dx_s = dt_s Σ_t w_ts (C_t·B_s) dy_t + dt_s exp(ℓ_last - ℓ_s) G B_s + D dy_s; the direct dt gradient
   x_s·dx_s / dt_s; dB_s summed over those heads; partial sums of dD.
5. ``_chunk_C_grad_kernel``: per block of output positions t, looping over heads likewise:
   dC_t = Σ_s w_ts dt_s (dy_t·x_s) B_s + exp(ℓ_t) dy_t·entering state, summed over the heads, and per head
   C_t·dC_t = dy_t·y_t (before D and the gate).
6. ``_dt_backward_kernel``: dℓ_t = dy_t·y_t - x_t·dx_t (the identity that turns every pair term of the
   quadratic form into a row sum minus a column sum), its reverse cumulative sum plus the chunk term
   gives d(dt·A); then dA, and dt back through the clamp, softplus and bias.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from mambakit.ops.kernels.ssd_common import (
    ScanGeometry, chunk_extent, chunk_segment_bounds, matmul, sigmoid, softplus,
)
from mambakit.ops.kernels.ssd_forward import ForwardResult, _chunk_state_kernel, dt_launch_args


@triton.jit
def _gate_backward_kernel(
    dout_ptr, z_ptr, y_ungated_ptr, dy_ptr, dz_ptr,
    length, heads, head_dim,
    stride_dout_b, stride_dout_l, stride_dout_h, stride_dout_p,
    stride_z_b, stride_z_l, stride_z_h, stride_z_p,
    BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """BLOCK_L positions of one batch × head. dy, dz: (b, l, h, p) contiguous, like y_ungated."""
    batch_idx = (tl.program_id(1) // heads).to(tl.int64)
    head_idx = tl.program_id(1) % heads
    block_start = tl.program_id(0).to(tl.int64) * BLOCK_L
    offs_l = tl.arange(0, BLOCK_L)
    offs_p = tl.arange(0, BLOCK_P)
    mask = (offs_l < length - block_start)[:, None] & (offs_p < head_dim)[None, :]
    dout_block = dout_ptr + batch_idx * stride_dout_b + block_start * stride_dout_l + head_idx * stride_dout_h
    dout = tl.load(dout_block + offs_l[:, None] * stride_dout_l + offs_p[None, :] * stride_dout_p,
                   mask=mask, other=0.0).to(tl.float32)
    z_block = z_ptr + batch_idx * stride_z_b + block_start * stride_z_l + head_idx * stride_z_h
    z = tl.load(z_block + offs_l[:, None] * stride_z_l + offs_p[None, :] * stride_z_p,
                mask=mask, other=0.0).to(tl.float32)
    block = ((batch_idx * length + block_start) * heads + head_idx) * head_dim
    offs = offs_l[:, None] * (heads * head_dim) + offs_p[None, :]
    y_ungated = tl.load(y_ungated_ptr + block + offs, mask=mask, other=0.0).to(tl.float32)
    gate = sigmoid(z)
    tl.store(dy_ptr + block + offs, dout * z * gate, mask=mask)
    tl.store(dz_ptr + block + offs, dout * y_ungated * gate * (1.0 + z * (1.0 - gate)), mask=mask)


@triton.jit
def _state_passing_backward_kernel(
    state_grads_ptr, states_ptr, chunk_decay_ptr, final_state_grad_ptr, initial_state_grad_ptr,
    decay_grad_ptr, heads, n_chunks, state_size,
    BLOCK: tl.constexpr, HAS_FINAL_STATE_GRAD: tl.constexpr,
):
    """One tile of BLOCK state entries of one batch × head, from the last chunk to the first.

    state_grads (b, c + 1, h, p, n): slot k holds on entry the gradient of the state entering chunk k
    through chunk k's outputs, and on exit G_k, the total gradient of the state leaving chunk k
    (G_last = final_state_grad or 0; G_{k-1} = entering grad_k + chunk_decay_k · G_k).
    initial_state_grad (b, h, p, n) = G_{-1}. decay_grad (tiles, b, h, c) = this tile's part of
    <G_k, state leaving chunk k> with states (b, c + 1, h, p, n) from the forward.
    """
    row = tl.program_id(1).to(tl.int64)  # batch × head
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_state = offs < state_size
    if HAS_FINAL_STATE_GRAD:
        grad = tl.load(final_state_grad_ptr + row * state_size + offs, mask=in_state, other=0.0)
    else:
        grad = tl.zeros((BLOCK,), dtype=tl.float32)
    chunk_stride = heads * state_size
    last_slot = (((row // heads) * (n_chunks + 1) + n_chunks - 1) * heads + row % heads) * state_size
    grad_slot = state_grads_ptr + last_slot + offs
    leaving_state = states_ptr + last_slot + chunk_stride + offs
    chunk_decays = chunk_decay_ptr + row * n_chunks
    decay_grads = decay_grad_ptr + (tl.program_id(0) * tl.num_programs(1) + row) * n_chunks
    # the loads of chunk k - 1 are issued before chunk k's update: one memory latency hides another's
    entering_grad = tl.load(grad_slot, mask=in_state, other=0.0)
    leaving = tl.load(leaving_state, mask=in_state, other=0.0)
    decay = tl.load(chunk_decays + n_chunks - 1)
    for step in range(n_chunks):
        chunk_idx = n_chunks - 1 - step
        back = tl.minimum(chunk_idx, 1) * chunk_stride  # 0 at chunk 0: re-reads in bounds, unused
        next_entering_grad = tl.load(grad_slot - back, mask=in_state, other=0.0)
        next_leaving = tl.load(leaving_state - back, mask=in_state, other=0.0)
        next_decay = tl.load(chunk_decays + tl.maximum(chunk_idx - 1, 0))
        tl.store(grad_slot, grad, mask=in_state)
        tl.store(decay_grads + chunk_idx, tl.sum(grad * leaving, axis=0))
        grad = entering_grad + decay * grad
        entering_grad = next_entering_grad
        leaving = next_leaving
        decay = next_decay
        grad_slot -= chunk_stride
        leaving_state -= chunk_stride
    tl.store(initial_state_grad_ptr + row * state_size + offs, grad, mask=in_state)


@triton.jit
def _chunk_input_grad_kernel(
    x_ptr, dy_ptr, B_ptr, C_ptr, D_ptr, dt_ptr, log_decay_ptr, seg_ptr, state_grads_ptr,
    dx_ptr, dt_direct_grad_ptr, dB_partial_ptr, dD_partial_ptr,
    length, heads, heads_per_group, heads_per_program, head_dim, state_dim, padded_len, n_chunks,
    stride_x_b, stride_x_l, stride_x_h, stride_x_p,
    stride_dy_b, stride_dy_l, stride_dy_h, stride_dy_p,
    stride_B_b, stride_B_l, stride_B_g, stride_B_n,
    stride_C_b, stride_C_l, stride_C_g, stride_C_n,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, D_PER_CHANNEL: tl.constexpr, HAS_SEQ_IDX: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    """One block of BLOCK_M source positions s of one chunk, for heads_per_program heads of one group.

    Writes dx (b, l, h, p) in x's dtype; dt_direct_grad (b, h, lq) = x_s·dx_s / dt_s without the D
    term (the dt gradient through the input scaling, not the decay); dB_partial (b, l, h / heads_per_program,
    n) = dB summed over this program's heads; dD_partial (b, programs along axis 0, h, p) = Σ_s dy_s x_s.
    Positions are counted from the chunk start (s, t < CHUNK).
    """
    blocks_per_chunk = CHUNK // BLOCK_M
    chunk_idx = tl.program_id(0) // blocks_per_chunk
    block_start = (tl.program_id(0) % blocks_per_chunk) * BLOCK_M
    programs_per_row = heads // heads_per_program
    batch_idx = (tl.program_id(1) // programs_per_row).to(tl.int64)
    first_head = (tl.program_id(1) % programs_per_row) * heads_per_program
    group_idx = first_head // heads_per_group
    chunk_start, chunk_len = chunk_extent(chunk_idx, length, CHUNK)
    offs_s = block_start + tl.arange(0, BLOCK_M)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    s_ok = offs_s < chunk_len
    p_ok = offs_p < head_dim
    n_ok = offs_n < state_dim
    io_mask = s_ok[:, None] & p_ok[None, :]
    C_chunk = C_ptr + batch_idx * stride_C_b + chunk_start * stride_C_l + group_idx * stride_C_g
    B_chunk = B_ptr + batch_idx * stride_B_b + chunk_start * stride_B_l + group_idx * stride_B_g
    B_s = tl.load(B_chunk + offs_s[:, None] * stride_B_l + offs_n[None, :] * stride_B_n,
                  mask=s_ok[:, None] & n_ok[None, :], other=0.0)  # (S, N)
    if HAS_SEQ_IDX:
        seg_chunk = seg_ptr + batch_idx * length + chunk_start
        seg_s = tl.load(seg_chunk + offs_s, mask=s_ok, other=-1)
        _, seg_last = chunk_segment_bounds(seg_ptr, batch_idx, chunk_start, chunk_len, length)

    dB = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for head_offset in range(heads_per_program):
        head_idx = first_head + head_offset
        scalars_chunk = (batch_idx * heads + head_idx) * padded_len + chunk_start
        x_chunk = x_ptr + batch_idx * stride_x_b + chunk_start * stride_x_l + head_idx * stride_x_h
        dy_chunk = dy_ptr + batch_idx * stride_dy_b + chunk_start * stride_dy_l + head_idx * stride_dy_h
        x_s = tl.load(x_chunk + offs_s[:, None] * stride_x_l + offs_p[None, :] * stride_x_p,
                      mask=io_mask, other=0.0)  # (S, P)
        dt_s = tl.load(dt_ptr + scalars_chunk + offs_s)
        log_decay_s = tl.load(log_decay_ptr + scalars_chunk + offs_s)

        dx = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)  # without the dt_s factor and the D term
        for start in range(block_start, CHUNK, BLOCK_K):
            offs_t = start + tl.arange(0, BLOCK_K)
            t_ok = offs_t < chunk_len
            C_t = tl.load(C_chunk + offs_t[:, None] * stride_C_l + offs_n[None, :] * stride_C_n,
                          mask=t_ok[:, None] & n_ok[None, :], other=0.0)  # (T, N)
            dy_t = tl.load(dy_chunk + offs_t[:, None] * stride_dy_l + offs_p[None, :] * stride_dy_p,
                           mask=t_ok[:, None] & p_ok[None, :], other=0.0)  # (T, P)
            log_decay_t = tl.load(log_decay_ptr + scalars_chunk + offs_t)
            linked = offs_t[None, :] >= offs_s[:, None]
            if HAS_SEQ_IDX:
                seg_t = tl.load(seg_chunk + offs_t, mask=t_ok, other=-2)
                linked = linked & (seg_s[:, None] == seg_t[None, :])
            decay = tl.exp(tl.where(linked, log_decay_t[None, :] - log_decay_s[:, None], float("-inf")))  # (S, T)
            scores = matmul(B_s, tl.trans(C_t), DOT_DTYPE, PRECISION)  # (S, T) = B_s·C_t
            dx += matmul(scores * decay, dy_t, DOT_DTYPE, PRECISION)
            x_dy = matmul(x_s, tl.trans(dy_t), DOT_DTYPE, PRECISION)  # (S, T) = x_s·dy_t
            dB += matmul(x_dy * decay * dt_s[:, None], C_t, DOT_DTYPE, PRECISION)

        state_grad = tl.load(state_grads_ptr + ((batch_idx * (n_chunks + 1) + chunk_idx) * heads + head_idx)
                             * head_dim * state_dim + offs_p[:, None] * state_dim + offs_n[None, :],
                             mask=p_ok[:, None] & n_ok[None, :], other=0.0)  # (P, N)
        to_end = tl.exp(tl.load(log_decay_ptr + scalars_chunk + CHUNK - 1) - log_decay_s)
        if HAS_SEQ_IDX:
            to_end = tl.where(seg_s == seg_last, to_end, 0.0)
        dx += matmul(B_s, tl.trans(state_grad), DOT_DTYPE, PRECISION) * to_end[:, None]
        dB += matmul(x_s, state_grad, DOT_DTYPE, PRECISION) * (to_end * dt_s)[:, None]

        x_s = x_s.to(tl.float32)
        tl.store(dt_direct_grad_ptr + scalars_chunk + offs_s, tl.sum(dx * x_s, axis=1), mask=s_ok)
        dx *= dt_s[:, None]
        if HAS_D:
            dy_s = tl.load(dy_chunk + offs_s[:, None] * stride_dy_l + offs_p[None, :] * stride_dy_p,
                           mask=io_mask, other=0.0).to(tl.float32)
            if D_PER_CHANNEL:
                D = tl.load(D_ptr + head_idx * head_dim + offs_p, mask=p_ok, other=0.0).to(tl.float32)[None, :]
            else:
                D = tl.load(D_ptr + head_idx).to(tl.float32)
            dx += D * dy_s
            dD_row = (batch_idx * tl.num_programs(0) + tl.program_id(0)) * heads + head_idx
            tl.store(dD_partial_ptr + dD_row * head_dim + offs_p, tl.sum(dy_s * x_s, axis=0), mask=p_ok)
        dx_chunk = dx_ptr + ((batch_idx * length + chunk_start) * heads + head_idx) * head_dim
        tl.store(dx_chunk + offs_s[:, None] * (heads * head_dim) + offs_p[None, :], dx, mask=io_mask)

    dB_chunk = dB_partial_ptr + ((batch_idx * length + chunk_start) * programs_per_row
                                 + tl.program_id(1) % programs_per_row) * state_dim
    tl.store(dB_chunk + offs_s[:, None] * (programs_per_row * state_dim) + offs_n[None, :], dB,
             mask=s_ok[:, None] & n_ok[None, :])


@triton.jit
def _chunk_C_grad_kernel(
    x_ptr, dy_ptr, B_ptr, C_ptr, dt_ptr, log_decay_ptr, seg_ptr, states_ptr,
    dC_partial_ptr, dy_dot_y_ptr,
    length, heads, heads_per_group, heads_per_program, head_dim, state_dim, padded_len, n_chunks,
    stride_x_b, stride_x_l, stride_x_h, stride_x_p,
    stride_dy_b, stride_dy_l, stride_dy_h, stride_dy_p,
    stride_B_b, stride_B_l, stride_B_g, stride_B_n,
    stride_C_b, stride_C_l, stride_C_g, stride_C_n,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_SEQ_IDX: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    """One block of BLOCK_M output positions t of one chunk, for heads_per_program heads of one group.

    Writes dC_partial (b, l, h / heads_per_program, n) = dC summed over this program's heads, and
    dy_dot_y (b, h, lq) = C_t·dC_t of each head alone, which equals dy_t·y_t (y without D).
    Positions are counted from the chunk start (s, t < CHUNK).
    """
    blocks_per_chunk = CHUNK // BLOCK_M
    chunk_idx = tl.program_id(0) // blocks_per_chunk
    block_start = (tl.program_id(0) % blocks_per_chunk) * BLOCK_M
    programs_per_row = heads // heads_per_program
    batch_idx = (tl.program_id(1) // programs_per_row).to(tl.int64)
    first_head = (tl.program_id(1) % programs_per_row) * heads_per_program
    group_idx = first_head // heads_per_group
    chunk_start, chunk_len = chunk_extent(chunk_idx, length, CHUNK)
    offs_t = block_start + tl.arange(0, BLOCK_M)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    t_ok = offs_t < chunk_len
    p_ok = offs_p < head_dim
    n_ok = offs_n < state_dim
    B_chunk = B_ptr + batch_idx * stride_B_b + chunk_start * stride_B_l + group_idx * stride_B_g
    C_chunk = C_ptr + batch_idx * stride_C_b + chunk_start * stride_C_l + group_idx * stride_C_g
    C_t = tl.load(C_chunk + offs_t[:, None] * stride_C_l + offs_n[None, :] * stride_C_n,
                  mask=t_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)  # (T, N)
    if HAS_SEQ_IDX:
        seg_chunk = seg_ptr + batch_idx * length + chunk_start
        seg_t = tl.load(seg_chunk + offs_t, mask=t_ok, other=-1)
        seg_before, _ = chunk_segment_bounds(seg_ptr, batch_idx, chunk_start, chunk_len, length)

    dC = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for head_offset in range(heads_per_program):
        head_idx = first_head + head_offset
        scalars_chunk = (batch_idx * heads + head_idx) * padded_len + chunk_start
        x_chunk = x_ptr + batch_idx * stride_x_b + chunk_start * stride_x_l + head_idx * stride_x_h
        dy_chunk = dy_ptr + batch_idx * stride_dy_b + chunk_start * stride_dy_l + head_idx * stride_dy_h
        dy_t = tl.load(dy_chunk + offs_t[:, None] * stride_dy_l + offs_p[None, :] * stride_dy_p,
                       mask=t_ok[:, None] & p_ok[None, :], other=0.0)  # (T, P)
        log_decay_t = tl.load(log_decay_ptr + scalars_chunk + offs_t)
        entering_weight = tl.exp(log_decay_t)
        if HAS_SEQ_IDX:
            entering_weight = tl.where(seg_t == seg_before, entering_weight, 0.0)
        entering_state = tl.load(states_ptr + ((batch_idx * (n_chunks + 1) + chunk_idx) * heads + head_idx)
                                 * head_dim * state_dim + offs_p[:, None] * state_dim + offs_n[None, :],
                                 mask=p_ok[:, None] & n_ok[None, :], other=0.0)  # (P, N)
        head_dC = matmul(dy_t, entering_state, DOT_DTYPE, PRECISION) * entering_weight[:, None]  # (T, N)

        for start in range(0, block_start + BLOCK_M, BLOCK_K):
            offs_s = start + tl.arange(0, BLOCK_K)
            s_ok = offs_s < chunk_len
            x_s = tl.load(x_chunk + offs_p[:, None] * stride_x_p + offs_s[None, :] * stride_x_l,
                          mask=p_ok[:, None] & s_ok[None, :], other=0.0)  # (P, S)
            B_s = tl.load(B_chunk + offs_s[:, None] * stride_B_l + offs_n[None, :] * stride_B_n,
                          mask=s_ok[:, None] & n_ok[None, :], other=0.0)  # (S, N)
            log_decay_s = tl.load(log_decay_ptr + scalars_chunk + offs_s)
            linked = offs_t[:, None] >= offs_s[None, :]
            if HAS_SEQ_IDX:
                seg_s = tl.load(seg_chunk + offs_s, mask=s_ok, other=-2)
                linked = linked & (seg_t[:, None] == seg_s[None, :])
            decay = tl.exp(tl.where(linked, log_decay_t[:, None] - log_decay_s[None, :], float("-inf")))  # (T, S)
            dt_s = tl.load(dt_ptr + scalars_chunk + offs_s)
            dy_x = matmul(dy_t, x_s, DOT_DTYPE, PRECISION)  # (T, S) = dy_t·x_s
            head_dC += matmul(dy_x * decay * dt_s[None, :], B_s, DOT_DTYPE, PRECISION)

        tl.store(dy_dot_y_ptr + scalars_chunk + offs_t, tl.sum(head_dC * C_t, axis=1), mask=t_ok)
        dC += head_dC

    dC_chunk = dC_partial_ptr + ((batch_idx * length + chunk_start) * programs_per_row
                                 + tl.program_id(1) % programs_per_row) * state_dim
    tl.store(dC_chunk + offs_t[:, None] * (programs_per_row * state_dim) + offs_n[None, :], dC,
             mask=t_ok[:, None] & n_ok[None, :])


@triton.jit
def _dt_backward_kernel(
    dt_raw_ptr, A_ptr, dt_bias_ptr, dt_ptr, dt_direct_grad_ptr, dy_dot_y_ptr, decay_grad_ptr,
    ddt_ptr, dA_partial_ptr,
    length, heads, padded_len, n_chunks, dt_min, dt_max,
    stride_dt_b, stride_dt_l, stride_dt_h,
    CHUNK: tl.constexpr, BLOCK_H: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    HAS_DT_LIMIT: tl.constexpr,
):
    """One chunk × BLOCK_H heads. Writes ddt (b, l, h) fp32, the gradient of the raw dt input, and
    dA_partial (b, c, h) = Σ_t dt_t · d(dt_t A) over the chunk.

    d ℓ_t = dy_dot_y_t - dt_t · dt_direct_grad_t; d(dt_s A) = Σ_{t >= s} d ℓ_t + decay_grad (the
    loss's derivative by ℓ_last through the state leaving the chunk, which every ℓ_t for t <= last feeds).
    """
    chunk_idx = tl.program_id(0)
    batch_idx = tl.program_id(1).to(tl.int64)
    chunk_start, chunk_len = chunk_extent(chunk_idx, length, CHUNK)
    offs_t = tl.arange(0, CHUNK)
    offs_h = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    head_ok = offs_h < heads
    valid = (offs_t < chunk_len)[:, None] & head_ok[None, :]
    scalars_chunk = batch_idx * heads * padded_len + chunk_start
    row_offs = offs_h[None, :] * padded_len + offs_t[:, None]
    dt = tl.load(dt_ptr + scalars_chunk + row_offs, mask=valid, other=0.0)
    dt_direct_grad = tl.load(dt_direct_grad_ptr + scalars_chunk + row_offs, mask=valid, other=0.0)
    log_decay_grad = tl.load(dy_dot_y_ptr + scalars_chunk + row_offs, mask=valid, other=0.0) - dt * dt_direct_grad
    decay_grad = tl.load(decay_grad_ptr + (batch_idx * heads + offs_h) * n_chunks + chunk_idx, mask=head_ok, other=0.0)
    dA_dt_grad = tl.cumsum(log_decay_grad, axis=0, reverse=True) + decay_grad[None, :]
    A = tl.load(A_ptr + offs_h, mask=head_ok, other=0.0).to(tl.float32)
    tl.store(dA_partial_ptr + (batch_idx * n_chunks + chunk_idx) * heads + offs_h,
             tl.sum(dt * dA_dt_grad, axis=0), mask=head_ok)

    ddt = dt_direct_grad + A[None, :] * dA_dt_grad
    raw_chunk = dt_raw_ptr + batch_idx * stride_dt_b + chunk_start * stride_dt_l
    raw = tl.load(raw_chunk + offs_t[:, None] * stride_dt_l + offs_h[None, :] * stride_dt_h,
                  mask=valid, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        raw += tl.load(dt_bias_ptr + offs_h, mask=head_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_DT_LIMIT:
        unclamped = raw
        if DT_SOFTPLUS:
            unclamped = softplus(raw)
        ddt = tl.where((unclamped >= dt_min) & (unclamped <= dt_max), ddt, 0.0)
    if DT_SOFTPLUS:
        ddt *= tl.where(raw > 20.0, 1.0, sigmoid(raw))
    ddt_chunk = ddt_ptr + (batch_idx * length + chunk_start) * heads
    tl.store(ddt_chunk + offs_t[:, None] * heads + offs_h[None, :], ddt, mask=valid)


class Gradients(NamedTuple):
    """Gradients of ``ssd_scan``'s tensor inputs (fp32 except dx, dz: x's and z's dtype)."""

    dx: torch.Tensor
    ddt: torch.Tensor
    dA: torch.Tensor
    dB: torch.Tensor
    dC: torch.Tensor
    dD: torch.Tensor | None
    dz: torch.Tensor | None
    ddt_bias: torch.Tensor | None
    dinitial_state: torch.Tensor


def ssd_backward(dout, final_state_grad, saved: ForwardResult, x, dt, A, B, C, geo: ScanGeometry, D=None,
                 z=None, dt_bias=None, dt_softplus=False, dt_limit=None, seg=None) -> Gradients:
    """Gradients of all inputs from dout (b, l, h, p) and final_state_grad (b, h, p, n) fp32 or None.

    ``saved`` is the forward's result, with y_ungated present when z is given.
    """
    fp32 = dict(device=x.device, dtype=torch.float32)
    dy, dz = _ungated_output_grad(dout, z, saved, geo)
    state_grads, dinitial_state, decay_grad = _state_grads(dy, C, final_state_grad, saved, geo, seg)

    programs_per_row = geo.heads // geo.heads_per_program
    common = (geo.length, geo.heads, geo.heads_per_group, geo.heads_per_program, geo.head_dim, geo.state_dim,
              geo.padded_len, geo.n_chunks, *x.stride(), *dy.stride(), *B.stride(), *C.stride())
    shared_meta = dict(CHUNK=geo.chunk, BLOCK_P=geo.block_p, BLOCK_N=geo.block_n, HAS_SEQ_IDX=seg is not None,
                       DOT_DTYPE=geo.dot_dtype, PRECISION=geo.precision)
    input_tiles = geo.tiles("chunk_input_grad")
    blocks = geo.n_chunks * (geo.chunk // input_tiles["BLOCK_M"])
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    dt_direct_grad = torch.empty_like(saved.dt)
    dB_partial = torch.empty(geo.batch, geo.length, programs_per_row, geo.state_dim, **fp32)
    dD_partial = torch.empty(geo.batch, blocks, geo.heads, geo.head_dim, **fp32) if D is not None else None
    _chunk_input_grad_kernel[(blocks, geo.batch * programs_per_row)](
        x, dy, B, C, D, saved.dt, saved.log_decay, seg, state_grads, dx, dt_direct_grad, dB_partial, dD_partial,
        *common, HAS_D=D is not None, D_PER_CHANNEL=D is not None and D.dim() == 2, **shared_meta, **input_tiles,
    )
    dC_partial = torch.empty_like(dB_partial)
    dy_dot_y = torch.empty_like(saved.dt)
    C_tiles = geo.tiles("chunk_C_grad")
    _chunk_C_grad_kernel[(geo.n_chunks * (geo.chunk // C_tiles["BLOCK_M"]), geo.batch * programs_per_row)](
        x, dy, B, C, saved.dt, saved.log_decay, seg, saved.states, dC_partial, dy_dot_y, *common,
        **shared_meta, **C_tiles,
    )
    ddt, dA = _dt_grads(dt, A, dt_bias, dt_softplus, dt_limit, saved, dt_direct_grad, dy_dot_y, decay_grad, geo)

    per_group = (geo.batch, geo.length, geo.groups, programs_per_row // geo.groups, geo.state_dim)
    dD = None
    if D is not None:
        dD = dD_partial.sum((0, 1))
        dD = dD if D.dim() == 2 else dD.sum(-1)
    return Gradients(
        dx=dx, ddt=ddt, dA=dA, dB=dB_partial.view(per_group).sum(3), dC=dC_partial.view(per_group).sum(3),
        dD=dD, dz=dz, ddt_bias=ddt.sum((0, 1)) if dt_bias is not None else None, dinitial_state=dinitial_state,
    )


def _ungated_output_grad(dout, z, saved: ForwardResult, geo: ScanGeometry):
    """(dy, dz): the gradient of y before the silu(z) gate, and z's gradient (None without z)."""
    if z is None:
        return dout, None
    dy = torch.empty_like(saved.y_ungated)
    dz = torch.empty(z.shape, device=z.device, dtype=z.dtype)
    block_l = 64
    _gate_backward_kernel[(triton.cdiv(geo.length, block_l), geo.batch * geo.heads)](
        dout, z, saved.y_ungated, dy, dz, geo.length, geo.heads, geo.head_dim, *dout.stride(), *z.stride(),
        BLOCK_L=block_l, BLOCK_P=geo.block_p, num_warps=4,
    )
    return dy, dz


def _state_grads(dy, C, final_state_grad, saved: ForwardResult, geo: ScanGeometry, seg):
    """(G (b, c + 1, h, p, n): slot k the gradient of the state leaving chunk k; the initial state's
    gradient (b, h, p, n); the loss's derivative by each chunk's total log-decay (b, h, c))."""
    fp32 = dict(device=dy.device, dtype=torch.float32)
    state_grads = torch.empty_like(saved.states)
    _chunk_state_kernel[(geo.n_chunks, geo.batch * geo.heads)](
        dy, C, saved.dt, saved.log_decay, seg, state_grads,
        geo.length, geo.heads, geo.heads_per_group, geo.head_dim, geo.state_dim, geo.padded_len,
        geo.n_chunks + 1, *dy.stride(), *C.stride(),
        CHUNK=geo.chunk, BLOCK_P=geo.block_p, BLOCK_N=geo.block_n, ENTERING_STATE_GRAD=True,
        HAS_SEQ_IDX=seg is not None, DOT_DTYPE=geo.dot_dtype, PRECISION=geo.precision, **geo.tiles("chunk_state"),
    )
    state_tiles = triton.cdiv(geo.state_size, geo.state_block)
    dinitial_state = torch.empty(geo.batch, geo.heads, geo.head_dim, geo.state_dim, **fp32)
    decay_grad = torch.empty(state_tiles, geo.batch, geo.heads, geo.n_chunks, **fp32)
    _state_passing_backward_kernel[(state_tiles, geo.batch * geo.heads)](
        state_grads, saved.states, saved.chunk_decay, final_state_grad, dinitial_state, decay_grad,
        geo.heads, geo.n_chunks, geo.state_size,
        BLOCK=geo.state_block, HAS_FINAL_STATE_GRAD=final_state_grad is not None, num_warps=4,
    )
    return state_grads, dinitial_state, decay_grad.sum(0)


def _dt_grads(dt, A, dt_bias, dt_softplus, dt_limit, saved: ForwardResult, dt_direct_grad, dy_dot_y, decay_grad,
              geo: ScanGeometry):
    """(ddt (b, l, h) fp32 for the raw dt input, dA (h,) fp32)."""
    fp32 = dict(device=dt.device, dtype=torch.float32)
    ddt = torch.empty(geo.batch, geo.length, geo.heads, **fp32)
    dA_partial = torch.empty(geo.batch, geo.n_chunks, geo.heads, **fp32)
    grid, dt_strides = dt_launch_args(dt, geo)
    _dt_backward_kernel[grid](
        dt, A, dt_bias, saved.dt, dt_direct_grad, dy_dot_y, decay_grad, ddt, dA_partial,
        geo.length, geo.heads, geo.padded_len, geo.n_chunks,
        *(dt_limit if dt_limit is not None else (0.0, 0.0)), *dt_strides,
        CHUNK=geo.chunk, BLOCK_H=geo.block_h, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=dt_softplus,
        HAS_DT_LIMIT=dt_limit is not None, num_warps=4,
    )
    return ddt, dA_partial.sum((0, 1))
