"""Triton depthwise causal conv1d (Mamba's short conv): training forward/backward and the decode update.

Shapes (see ``mambakit.ops.reference``): x (b, d, l), weight (d, k), bias (d,), initial_state (b, d, k-1),
seq_idx (b, l), conv_state (b, d, s) with s >= k-1.

Design:
- The training kernels tile (time, channel) with one program per [BLOCK_L, BLOCK_D] tile. Every tensor is
  addressed through its strides, so the usual non-contiguous input (a transposed view of a (b, l, d)
  projection output, channels contiguous) is read in place; the tile's long side follows the contiguous
  axis so that loads coalesce. The k taps are k shifted loads of the same tile (served by L1/L2).
- Positions -(k-1)..-1 read the initial state; a packed-sequence boundary masks every tap whose input
  lies in another sequence than the output (``seq_idx`` differs), exactly as the reference.
- The backward is one fused pass: for each tap shift s it recomputes the activation gradient g at the
  output positions u + s (a k-tap conv when SiLU is fused), adds w[k-1-s] * g to dx[u] and reduces
  g * input[u] into the weight gradient. Each program walks several time tiles, keeping the weight and
  bias gradients in registers and writing one partial per program (summed afterwards: deterministic, no
  atomics). Tile -1 covers the initial-state positions and yields the initial state's gradient.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from mambakit.ops.reference import _check_activation

# Elements per program tile (8 warps) in the forward and the backward: the backward's k shifted recomputes
# hold more live values, so its tile is smaller (about 120 registers per thread at k=4 on sm_90).
FORWARD_TILE_ELEMENTS = 4096
BACKWARD_TILE_ELEMENTS = 1024
TRAINING_NUM_WARPS = 8
# A backward program walks up to this many time tiles (fewer weight-gradient partials to write and sum),
# as long as about BACKWARD_TARGET_PROGRAMS programs remain to fill the GPU.
BACKWARD_MAX_TILES_PER_PROGRAM = 16
BACKWARD_TARGET_PROGRAMS = 1024
# Channels per program in the decode update.
UPDATE_BLOCK_D = 128


@triton.jit
def _sequence_ids(seq_ptr, stride_seq_b, stride_seq_l, batch, pos, length):
    """seq_idx[batch, pos] for a vector of positions; positions before 0 belong to position 0's sequence."""
    pos = tl.maximum(pos, 0)
    return tl.load(seq_ptr + batch * stride_seq_b + pos * stride_seq_l, mask=pos < length, other=-1)


@triton.jit
def _load_inputs(
    x_ptr, init_ptr, batch, start, chan, chan_mask, length,
    stride_x_b, stride_x_d, stride_x_l, stride_init_b, stride_init_d, stride_init_k,
    K: tl.constexpr, BLOCK_L: tl.constexpr, HAS_INIT: tl.constexpr,
):
    """fp32 [BLOCK_L, BLOCK_D] tile of conv inputs at times start..start+BLOCK_L-1: x for 0 <= pos < length,
    the initial state (rounded to x's dtype, as the reference does) for -(k-1) <= pos < 0, else zero."""
    pos = start + tl.arange(0, BLOCK_L)
    in_x = (pos >= 0) & (pos < length)
    x_ptrs = x_ptr + batch * stride_x_b + pos[:, None] * stride_x_l + chan[None, :] * stride_x_d
    values = tl.load(x_ptrs, mask=in_x[:, None] & chan_mask[None, :], other=0.0).to(tl.float32)
    if HAS_INIT:
        if start < 0:  # only tiles that reach before position 0: one [BLOCK_D] vector per history step
            for step in tl.static_range(K - 1):
                history = tl.load(init_ptr + batch * stride_init_b + chan * stride_init_d + step * stride_init_k,
                                  mask=chan_mask, other=0.0).to(x_ptr.dtype.element_ty).to(tl.float32)
                values = tl.where((pos == step - (K - 1))[:, None], history[None, :], values)
    return values


@triton.jit
def _preactivation(
    x_ptr, weight_ptr, bias_ptr, init_ptr, seq_ptr, batch, start, chan, chan_mask, length,
    stride_x_b, stride_x_d, stride_x_l, stride_w_d, stride_w_k,
    stride_init_b, stride_init_d, stride_init_k, stride_seq_b, stride_seq_l,
    K: tl.constexpr, BLOCK_L: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
):
    """fp32 [BLOCK_L, BLOCK_D] conv output before the activation at output times start..start+BLOCK_L-1."""
    pos = start + tl.arange(0, BLOCK_L)
    if HAS_SEQ:
        seq_out = _sequence_ids(seq_ptr, stride_seq_b, stride_seq_l, batch, pos, length)
    acc = tl.zeros([BLOCK_L, chan.shape[0]], dtype=tl.float32)
    for tap in tl.static_range(K):
        inputs = _load_inputs(x_ptr, init_ptr, batch, start + (tap - (K - 1)), chan, chan_mask, length,
                              stride_x_b, stride_x_d, stride_x_l, stride_init_b, stride_init_d, stride_init_k,
                              K, BLOCK_L, HAS_INIT)
        if HAS_SEQ:
            in_pos = pos + (tap - (K - 1))
            same = _sequence_ids(seq_ptr, stride_seq_b, stride_seq_l, batch, in_pos, length) == seq_out
            inputs = tl.where(same[:, None], inputs, 0.0)
        w_tap = tl.load(weight_ptr + chan * stride_w_d + tap * stride_w_k, mask=chan_mask, other=0.0)
        acc += inputs * w_tap.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + chan, mask=chan_mask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _conv_forward_kernel(
    x_ptr, weight_ptr, bias_ptr, init_ptr, seq_ptr, y_ptr, final_ptr, length, channels,
    stride_x_b, stride_x_d, stride_x_l, stride_w_d, stride_w_k,
    stride_init_b, stride_init_d, stride_init_k, stride_seq_b, stride_seq_l,
    stride_y_b, stride_y_d, stride_y_l, stride_final_b, stride_final_d, stride_final_k,
    K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_TAIL: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
    SILU: tl.constexpr, STORE_FINAL: tl.constexpr,
):
    """y[b, d, l] = act(sum_j w[d, j] input[l - (k-1) + j] + bias[d]); grid (l blocks, d blocks, b)."""
    pid_l = tl.program_id(0)
    batch = tl.program_id(2).to(tl.int64)
    start = pid_l * BLOCK_L
    pos = start + tl.arange(0, BLOCK_L)
    chan = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = chan < channels
    out = _preactivation(x_ptr, weight_ptr, bias_ptr, init_ptr, seq_ptr, batch, start, chan, chan_mask, length,
                         stride_x_b, stride_x_d, stride_x_l, stride_w_d, stride_w_k,
                         stride_init_b, stride_init_d, stride_init_k, stride_seq_b, stride_seq_l,
                         K, BLOCK_L, HAS_BIAS, HAS_INIT, HAS_SEQ)
    if SILU:
        out = out * tl.sigmoid(out)
    y_ptrs = y_ptr + batch * stride_y_b + pos[:, None] * stride_y_l + chan[None, :] * stride_y_d
    tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=(pos < length)[:, None] & chan_mask[None, :])

    if STORE_FINAL:
        if pid_l == tl.num_programs(0) - 1:  # the last k-1 inputs, zeroed where from an earlier sequence
            tail = tl.arange(0, BLOCK_TAIL)
            tail_pos = length - (K - 1) + tail
            tail_inputs = _load_inputs(x_ptr, init_ptr, batch, length - (K - 1), chan, chan_mask, length,
                                       stride_x_b, stride_x_d, stride_x_l,
                                       stride_init_b, stride_init_d, stride_init_k, K, BLOCK_TAIL, HAS_INIT)
            if HAS_SEQ:
                last_seq = _sequence_ids(seq_ptr, stride_seq_b, stride_seq_l, batch, tail * 0 + length - 1, length)
                same = _sequence_ids(seq_ptr, stride_seq_b, stride_seq_l, batch, tail_pos, length) == last_seq
                tail_inputs = tl.where(same[:, None], tail_inputs, 0.0)
            final_ptrs = (final_ptr + batch * stride_final_b + tail[:, None] * stride_final_k
                          + chan[None, :] * stride_final_d)
            tl.store(final_ptrs, tail_inputs.to(final_ptr.dtype.element_ty),
                     mask=(tail < K - 1)[:, None] & chan_mask[None, :])


@triton.jit
def _conv_backward_kernel(
    x_ptr, weight_ptr, bias_ptr, init_ptr, seq_ptr, dy_ptr, dfinal_ptr,
    dx_ptr, dinit_ptr, dweight_partial_ptr, dbias_partial_ptr, length, channels, num_tiles, tiles_per_program,
    stride_x_b, stride_x_d, stride_x_l, stride_w_d, stride_w_k,
    stride_init_b, stride_init_d, stride_init_k, stride_seq_b, stride_seq_l,
    stride_dy_b, stride_dy_d, stride_dy_l, stride_dfinal_b, stride_dfinal_d, stride_dfinal_k,
    stride_dx_b, stride_dx_d, stride_dx_l, stride_dinit_b, stride_dinit_d, stride_dinit_k,
    K: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
    SILU: tl.constexpr, HAS_DFINAL: tl.constexpr,
):
    """Gradients for input positions u, tile by tile; grid (programs over time tiles, d blocks, b).

    Each program walks ``tiles_per_program`` consecutive [BLOCK_L, BLOCK_D] tiles; tile -1 (positions
    -BLOCK_L..-1) is the initial state's. dx[u] = sum_s w[k-1-s] g[u+s] (same sequence), plus dfinal for the
    last k-1 positions, where g = dy * act'(pre). The program's sums dweight[k-1-s] = sum_u g[u+s] input[u]
    and dbias = sum_t g[t] go to partials (b * programs, k, d) and (b * programs, d), summed afterwards.
    """
    pid_l = tl.program_id(0)
    batch = tl.program_id(2).to(tl.int64)
    chan = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = chan < channels
    taps = tl.arange(0, BLOCK_K)
    dweight = tl.zeros([BLOCK_K, BLOCK_D], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_D], dtype=tl.float32)
    first_tile = pid_l * tiles_per_program
    if HAS_INIT:
        first_tile -= 1
    for tile in range(first_tile, tl.minimum(first_tile + tiles_per_program, num_tiles)):
        start = tile * BLOCK_L
        pos = start + tl.arange(0, BLOCK_L)
        inputs = _load_inputs(x_ptr, init_ptr, batch, start, chan, chan_mask, length,
                              stride_x_b, stride_x_d, stride_x_l, stride_init_b, stride_init_d, stride_init_k,
                              K, BLOCK_L, HAS_INIT)
        if HAS_SEQ:
            seq_in = _sequence_ids(seq_ptr, stride_seq_b, stride_seq_l, batch, pos, length)
        grad_in = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
        for shift in tl.static_range(K):
            out_pos = pos + shift
            in_range = (out_pos >= 0) & (out_pos < length)
            dy_ptrs = dy_ptr + batch * stride_dy_b + out_pos[:, None] * stride_dy_l + chan[None, :] * stride_dy_d
            grad_out = tl.load(dy_ptrs, mask=in_range[:, None] & chan_mask[None, :], other=0.0).to(tl.float32)
            if SILU:
                pre = _preactivation(x_ptr, weight_ptr, bias_ptr, init_ptr, seq_ptr, batch, start + shift, chan,
                                     chan_mask, length, stride_x_b, stride_x_d, stride_x_l, stride_w_d, stride_w_k,
                                     stride_init_b, stride_init_d, stride_init_k, stride_seq_b, stride_seq_l,
                                     K, BLOCK_L, HAS_BIAS, HAS_INIT, HAS_SEQ)
                sig = tl.sigmoid(pre)
                grad_out = grad_out * sig * (1.0 + pre * (1.0 - sig))
            if shift == 0:
                dbias += tl.sum(grad_out, axis=0)
            if HAS_SEQ:
                same = _sequence_ids(seq_ptr, stride_seq_b, stride_seq_l, batch, out_pos, length) == seq_in
                grad_out = tl.where(same[:, None], grad_out, 0.0)
            tap = K - 1 - shift
            w_tap = tl.load(weight_ptr + chan * stride_w_d + tap * stride_w_k, mask=chan_mask, other=0.0)
            grad_in += grad_out * w_tap.to(tl.float32)[None, :]
            dweight += tl.where((taps == tap)[:, None], tl.sum(grad_out * inputs, axis=0)[None, :], 0.0)

        if HAS_DFINAL:  # the final state holds inputs length-(k-1)..length-1 of the last sequence
            if start + BLOCK_L > length - (K - 1):
                tail = pos - (length - (K - 1))
                in_tail = (tail >= 0) & (pos < length)
                dfinal_ptrs = (dfinal_ptr + batch * stride_dfinal_b + tail[:, None] * stride_dfinal_k
                               + chan[None, :] * stride_dfinal_d)
                grad_final = tl.load(dfinal_ptrs, mask=in_tail[:, None] & chan_mask[None, :], other=0.0)
                if HAS_SEQ:
                    last_seq = _sequence_ids(seq_ptr, stride_seq_b, stride_seq_l, batch, pos * 0 + length - 1,
                                             length)
                    grad_final = tl.where((seq_in == last_seq)[:, None], grad_final, 0.0)
                grad_in += grad_final.to(tl.float32)

        dx_ptrs = dx_ptr + batch * stride_dx_b + pos[:, None] * stride_dx_l + chan[None, :] * stride_dx_d
        tl.store(dx_ptrs, grad_in.to(dx_ptr.dtype.element_ty),
                 mask=((pos >= 0) & (pos < length))[:, None] & chan_mask[None, :])
        if HAS_INIT:
            dinit_ptrs = (dinit_ptr + batch * stride_dinit_b + (pos + K - 1)[:, None] * stride_dinit_k
                          + chan[None, :] * stride_dinit_d)
            tl.store(dinit_ptrs, grad_in.to(dinit_ptr.dtype.element_ty),
                     mask=((pos < 0) & (pos >= 1 - K))[:, None] & chan_mask[None, :])

    partial_row = batch * tl.num_programs(0) + pid_l
    tl.store(dweight_partial_ptr + (partial_row * K + taps[:, None]) * channels + chan[None, :], dweight,
             mask=(taps < K)[:, None] & chan_mask[None, :])
    if HAS_BIAS:
        tl.store(dbias_partial_ptr + partial_row * channels + chan, dbias, mask=chan_mask)


@triton.jit
def _conv_update_kernel(
    x_ptr, state_ptr, weight_ptr, bias_ptr, y_ptr, channels, state_len,
    stride_x_b, stride_x_d, stride_state_b, stride_state_d, stride_state_s,
    stride_w_d, stride_w_k, stride_y_b, stride_y_d,
    K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):
    """One decode step for BLOCK_D channels of one batch row; grid (d blocks, b).

    y = act(sum_j w[j] window[j] + bias) over window = (state[s-(k-1):], x); then state <- (state[1:], x).
    """
    batch = tl.program_id(1).to(tl.int64)
    chan = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = chan < channels
    cols = tl.arange(0, BLOCK_S)
    state_ptrs = (state_ptr + batch * stride_state_b + chan[:, None] * stride_state_d
                  + cols[None, :] * stride_state_s)
    x = tl.load(x_ptr + batch * stride_x_b + chan * stride_x_d, mask=chan_mask, other=0.0)

    tap = cols - (state_len - (K - 1))  # the weight tap each state column meets (negative: too old)
    tap_mask = chan_mask[:, None] & ((tap >= 0) & (cols < state_len))[None, :]
    state = tl.load(state_ptrs, mask=tap_mask, other=0.0).to(tl.float32)
    w_state = tl.load(weight_ptr + chan[:, None] * stride_w_d + tap[None, :] * stride_w_k, mask=tap_mask, other=0.0)
    w_last = tl.load(weight_ptr + chan * stride_w_d + (K - 1) * stride_w_k, mask=chan_mask, other=0.0)
    out = tl.sum(state * w_state.to(tl.float32), axis=1) + x.to(tl.float32) * w_last.to(tl.float32)
    if HAS_BIAS:
        out += tl.load(bias_ptr + chan, mask=chan_mask, other=0.0).to(tl.float32)
    if SILU:
        out = out * tl.sigmoid(out)
    tl.store(y_ptr + batch * stride_y_b + chan * stride_y_d, out.to(y_ptr.dtype.element_ty), mask=chan_mask)

    store_mask = chan_mask[:, None] & (cols < state_len)[None, :]
    shifted = tl.load(state_ptrs + stride_state_s, mask=chan_mask[:, None] & (cols + 1 < state_len)[None, :])
    shifted = tl.where((cols == state_len - 1)[None, :], x.to(state_ptr.dtype.element_ty)[:, None], shifted)
    tl.debug_barrier()  # every thread has read the old state before any overwrites it
    tl.store(state_ptrs, shifted, mask=store_mask)


def _tile_shape(x: torch.Tensor, width: int, elements: int) -> tuple[int, int]:
    """(BLOCK_L, BLOCK_D) of about ``elements`` elements, long along x's contiguous axis (time or channels).

    BLOCK_L is at least k-1: the backward's initial-state tile covers positions -BLOCK_L..-1.
    """
    _, channels, length = x.shape
    min_block_l = triton.next_power_of_2(max(width - 1, 1))
    if x.stride(1) == 1 and x.stride(2) != 1:
        block_d = min(128, elements, triton.next_power_of_2(channels))
        return max(min_block_l, min(elements // block_d, triton.next_power_of_2(length))), block_d
    block_l = max(min_block_l, min(128, elements, triton.next_power_of_2(length)))
    return block_l, max(1, min(elements // block_l, triton.next_power_of_2(channels)))


def _strides(t: torch.Tensor | None, rank: int) -> tuple[int, ...]:
    return t.stride() if t is not None else (0,) * rank


def _conv_forward(x, weight, bias, initial_state, seq_idx, silu, return_final_state):
    batch, channels, length = x.shape
    width = weight.shape[-1]
    y = torch.empty_like(x)  # x's layout when x is dense
    store_final = return_final_state and width > 1
    final = x.new_empty(batch, channels, width - 1) if return_final_state else None
    block_l, block_d = _tile_shape(x, width, FORWARD_TILE_ELEMENTS)
    grid = (triton.cdiv(length, block_l), triton.cdiv(channels, block_d), batch)
    _conv_forward_kernel[grid](
        x, weight, bias if bias is not None else x, initial_state if initial_state is not None else x,
        seq_idx if seq_idx is not None else x, y, final if store_final else x, length, channels,
        *x.stride(), *weight.stride(), *_strides(initial_state, 3), *_strides(seq_idx, 2),
        *y.stride(), *_strides(final if store_final else None, 3),
        K=width, BLOCK_L=block_l, BLOCK_D=block_d, BLOCK_TAIL=max(2, triton.next_power_of_2(width - 1)),
        HAS_BIAS=bias is not None, HAS_INIT=initial_state is not None, HAS_SEQ=seq_idx is not None,
        SILU=silu, STORE_FINAL=store_final, num_warps=TRAINING_NUM_WARPS,
    )
    return y, final


def _conv_backward(x, weight, bias, initial_state, seq_idx, silu, grad_y, grad_final):
    batch, channels, length = x.shape
    width = weight.shape[-1]
    has_dfinal = grad_final is not None and width > 1
    grad_x = torch.empty_like(x)  # x's layout when x is dense
    grad_init = torch.empty_like(initial_state) if initial_state is not None else None
    block_l, block_d = _tile_shape(x, width, BACKWARD_TILE_ELEMENTS)
    num_tiles = triton.cdiv(length, block_l)
    blocks_d = triton.cdiv(channels, block_d)
    tiles_per_program = max(1, min(BACKWARD_MAX_TILES_PER_PROGRAM,
                                   num_tiles * blocks_d * batch // BACKWARD_TARGET_PROGRAMS))
    programs_l = triton.cdiv(num_tiles + (initial_state is not None), tiles_per_program)
    dweight_partial = torch.empty(batch * programs_l, width, channels, dtype=torch.float32, device=x.device)
    dbias_partial = (torch.empty(batch * programs_l, channels, dtype=torch.float32, device=x.device)
                     if bias is not None else None)
    _conv_backward_kernel[(programs_l, blocks_d, batch)](
        x, weight, bias if bias is not None else x, initial_state if initial_state is not None else x,
        seq_idx if seq_idx is not None else x, grad_y, grad_final if has_dfinal else x,
        grad_x, grad_init if grad_init is not None else x, dweight_partial,
        dbias_partial if dbias_partial is not None else x, length, channels, num_tiles, tiles_per_program,
        *x.stride(), *weight.stride(), *_strides(initial_state, 3), *_strides(seq_idx, 2),
        *grad_y.stride(), *_strides(grad_final if has_dfinal else None, 3),
        *grad_x.stride(), *_strides(grad_init, 3),
        K=width, BLOCK_K=triton.next_power_of_2(width), BLOCK_L=block_l, BLOCK_D=block_d,
        HAS_BIAS=bias is not None, HAS_INIT=initial_state is not None, HAS_SEQ=seq_idx is not None,
        SILU=silu, HAS_DFINAL=has_dfinal, num_warps=TRAINING_NUM_WARPS,
    )
    grad_weight = dweight_partial.sum(0).t().to(weight.dtype, memory_format=torch.contiguous_format)
    grad_bias = dbias_partial.sum(0).to(bias.dtype) if bias is not None else None
    return grad_x, grad_weight, grad_bias, grad_init


class _CausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, seq_idx, silu, return_final_state):
        y, final = _conv_forward(x, weight, bias, initial_state, seq_idx, silu, return_final_state)
        ctx.save_for_backward(x, weight, bias, initial_state, seq_idx)
        ctx.silu = silu
        ctx.set_materialize_grads(False)  # an unused final state brings None, not a tensor of zeros
        return (y, final) if return_final_state else y

    @staticmethod
    def backward(ctx, grad_y, grad_final=None):
        x, weight, bias, initial_state, seq_idx = ctx.saved_tensors
        if grad_y is None:
            grad_y = torch.zeros_like(x)
        grad_x, grad_weight, grad_bias, grad_init = _conv_backward(
            x, weight, bias, initial_state, seq_idx, ctx.silu, grad_y, grad_final)
        return grad_x, grad_weight, grad_bias, grad_init, None, None, None


def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None, seq_idx=None, return_final_state=False):
    """Depthwise causal conv over time with optional fused SiLU (same contract as the reference).

    x: (b, d, l), any strides; weight: (d, k); bias: (d,); initial_state: (b, d, k-1); seq_idx: (b, l) int.
    Returns y (b, d, l) in x's dtype (in x's memory layout when x is dense) and, with
    ``return_final_state``, the last k-1 inputs (b, d, k-1) in x's dtype.
    """
    _check_activation(activation)
    return _CausalConv1d.apply(x, weight, bias, initial_state, seq_idx, activation is not None, return_final_state)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """One decode step; updates ``conv_state`` (b, d, s), s >= k-1, in place. No host sync (graph-safe).

    x: (b, d); weight: (d, k); bias: (d,). Returns y (b, d) in x's dtype.
    """
    _check_activation(activation)
    batch, channels = x.shape
    state_len = conv_state.shape[-1]
    width = weight.shape[-1]
    if state_len < width - 1:
        raise ValueError(f"conv_state holds {state_len} steps; a width-{width} conv needs at least {width - 1}")
    y = torch.empty_like(x)
    block_d = min(UPDATE_BLOCK_D, triton.next_power_of_2(channels))
    _conv_update_kernel[(triton.cdiv(channels, block_d), batch)](
        x, conv_state, weight, bias if bias is not None else x, y, channels, state_len,
        *x.stride(), *conv_state.stride(), *weight.stride(), *y.stride(),
        K=width, BLOCK_D=block_d, BLOCK_S=triton.next_power_of_2(state_len),
        HAS_BIAS=bias is not None, SILU=activation is not None, num_warps=4,
    )
    return y
