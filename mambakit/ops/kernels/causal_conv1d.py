"""Triton depthwise causal conv1d (Mamba's short conv): training forward/backward and the decode update.

Shapes (see ``mambakit.ops.reference``): x (b, d, l), weight (d, k), bias (d,), initial_state (b, d, k-1),
seq_idx (b, l), conv_state (b, d, s) with s >= k-1.

Design:
- The training kernels walk time: a program owns a chunk of positions of BLOCK_D channels and handles one
  [BLOCK_D] row per position, ROWS_PER_STEP rows loaded at once (so that many loads are in flight). The
  latest k inputs (and, backward, the latest k activation gradients) stay in registers as tuples, oldest
  first, so every row is read from memory once and each position's pre-activation and SiLU gradient are
  formed once: no shifted reloads, no recomputation, no shared memory and no barriers.
- Every tensor is addressed through its strides. With channels contiguous (the model's input: a transposed
  view of a (b, l, d) projection output) a row is one coalesced access; otherwise each thread takes one
  channel, and consecutive rows reuse the sectors that L1 fetched.
- Positions -(k-1)..-1 read the initial state; a packed-sequence boundary drops every tap whose input lies
  in another sequence than the output (``seq_idx`` differs), exactly as the reference.
- Backward: dx[u] = sum_s w[k-1-s] g[u+s] (same sequence) with g = dy * act'(pre); each program sums
  g * input and g over its chunk into one partial per program, and a second small kernel sums the
  partials into the weight and bias gradients (deterministic, no atomics).
- The decode update reads each state column once and shifts it in place, one channel per thread.

Launch parameters come from the module-level dicts FORWARD_CONFIG, BACKWARD_CONFIG and UPDATE_CONFIG,
read at every call, so that a benchmark can sweep them without editing this file.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from mambakit.ops.reference import _check_activation

# row_bytes: bytes of one program's row when channels are contiguous (1024: 512 bf16 channels over 4 warps,
# 8-byte accesses, about 150 registers in the backward); rows_per_step: rows loaded before use;
# target_programs: about how many programs to launch (a few waves over 132 SMs; fewer means longer chunks,
# more means more halo rows).
FORWARD_CONFIG = {"row_bytes": 1024, "num_warps": 4, "rows_per_step": 8, "target_programs": 1024}
BACKWARD_CONFIG = {"row_bytes": 1024, "num_warps": 4, "rows_per_step": 8, "target_programs": 1024}
# block_d: channels per program, a power of two >= 32: one channel per thread (block_d / 32 warps), so that a
# thread owns its channels' state for the in-place shift and every access shares one layout.
UPDATE_CONFIG = {"block_d": 128}


@triton.jit
def _row_mask(chan_mask, valid):
    """chan_mask where the scalar ``valid`` holds (a select, not ``&``: Triton 3.9's interpreter widens a
    scalar-and-vector ``&`` of booleans to int32, which a load rejects as a mask)."""
    return tl.where(valid, chan_mask, False)


@triton.jit
def _sequence_id(seq_ptr, stride_seq_b, stride_seq_l, batch, pos, length):
    """seq_idx[batch, pos] for a scalar position; positions before 0 belong to position 0's sequence,
    positions from ``length`` on to none (-1)."""
    pos = tl.maximum(pos, 0)
    return tl.load(seq_ptr + batch * stride_seq_b + pos * stride_seq_l, mask=pos < length, other=-1)


@triton.jit
def _load_row(
    x_ptr, init_ptr, batch, pos, chan, chan_mask, length,
    stride_x_b, stride_x_d, stride_x_l, stride_init_b, stride_init_d, stride_init_k,
    K: tl.constexpr, HAS_INIT: tl.constexpr,
):
    """fp32 [BLOCK_D] conv input at the scalar time ``pos``: x for 0 <= pos < length, the initial state (rounded
    to x's dtype, as the reference does) for -(k-1) <= pos < 0, else zero."""
    in_x = (pos >= 0) & (pos < length)
    row = tl.load(x_ptr + batch * stride_x_b + pos * stride_x_l + chan * stride_x_d, mask=_row_mask(chan_mask, in_x),
                  other=0.0).to(tl.float32)
    if HAS_INIT:
        if pos < 0:  # a uniform branch, taken by the first k-1 rows only
            history = tl.load(init_ptr + batch * stride_init_b + chan * stride_init_d + (pos + K - 1) * stride_init_k,
                              mask=_row_mask(chan_mask, pos >= 1 - K), other=0.0)
            row = history.to(x_ptr.dtype.element_ty).to(tl.float32)
    return row


@triton.jit
def _load_weights(weight_ptr, bias_ptr, chan, chan_mask, stride_w_d, stride_w_k, K: tl.constexpr,
                  HAS_BIAS: tl.constexpr):
    """(the k taps' weights as a tuple, the bias) of the channels, fp32 [BLOCK_D] each (bias 0 without one)."""
    weights = ()
    for tap in tl.static_range(K):
        w_tap = tl.load(weight_ptr + chan * stride_w_d + tap * stride_w_k, mask=chan_mask, other=0.0)
        weights = weights + (w_tap.to(tl.float32),)
    bias = tl.zeros(chan.shape, dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + chan, mask=chan_mask, other=0.0).to(tl.float32)
    return weights, bias


@triton.jit
def _tap_inputs(inputs, seqs, K: tl.constexpr, HAS_SEQ: tl.constexpr):
    """The inputs that taps 0..k-1 meet for the output at the window's newest position: the window itself,
    with an input zeroed where it lies in another sequence than the output."""
    if HAS_SEQ:
        masked = ()
        for tap in tl.static_range(K):
            masked = masked + (tl.where(seqs[tap] == seqs[K - 1], inputs[tap], 0.0),)
        return masked
    return inputs


@triton.jit
def _conv_forward_kernel(
    x_ptr, weight_ptr, bias_ptr, init_ptr, seq_ptr, y_ptr, final_ptr, length, channels, chunk_len,
    stride_x_b, stride_x_d, stride_x_l, stride_w_d, stride_w_k,
    stride_init_b, stride_init_d, stride_init_k, stride_seq_b, stride_seq_l,
    stride_y_b, stride_y_d, stride_y_l, stride_final_b, stride_final_d, stride_final_k,
    K: tl.constexpr, BLOCK_D: tl.constexpr, ROWS_PER_STEP: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
    SILU: tl.constexpr, STORE_FINAL: tl.constexpr,
):
    """y[p] = act(sum_j w[j] input[p-(k-1)+j] + bias) for positions p of one chunk; grid (chunks, d blocks, b).

    The last chunk also writes the final state: inputs length-(k-1)..length-1, zeroed where they lie in an
    earlier sequence than position length-1.
    """
    chunk = tl.program_id(0)
    batch = tl.program_id(2).to(tl.int64)
    chan = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = chan < channels
    first = chunk * chunk_len
    weights, bias = _load_weights(weight_ptr, bias_ptr, chan, chan_mask, stride_w_d, stride_w_k, K, HAS_BIAS)
    inputs = ()  # positions first-k..first-1, oldest first
    seqs = ()
    for i in tl.static_range(K):
        inputs = inputs + (_load_row(x_ptr, init_ptr, batch, first - K + i, chan, chan_mask, length,
                                     stride_x_b, stride_x_d, stride_x_l, stride_init_b, stride_init_d,
                                     stride_init_k, K, HAS_INIT),)
        if HAS_SEQ:
            seqs = seqs + (_sequence_id(seq_ptr, stride_seq_b, stride_seq_l, batch, first - K + i, length),)

    for step in range(first, tl.minimum(first + chunk_len, length), ROWS_PER_STEP):
        x_rows = ()
        seq_rows = ()
        for i in tl.static_range(ROWS_PER_STEP):  # issue every load of the step before any use
            x_rows = x_rows + (_load_row(x_ptr, init_ptr, batch, step + i, chan, chan_mask, length,
                                         stride_x_b, stride_x_d, stride_x_l, stride_init_b, stride_init_d,
                                         stride_init_k, K, HAS_INIT),)
            if HAS_SEQ:
                seq_rows = seq_rows + (_sequence_id(seq_ptr, stride_seq_b, stride_seq_l, batch, step + i, length),)
        for i in tl.static_range(ROWS_PER_STEP):
            pos = step + i
            inputs = inputs[1:] + (x_rows[i],)
            if HAS_SEQ:
                seqs = seqs[1:] + (seq_rows[i],)
            taps_in = _tap_inputs(inputs, seqs, K, HAS_SEQ)
            out = bias
            for tap in tl.static_range(K):
                out += weights[tap] * taps_in[tap]
            if SILU:
                out = out * tl.sigmoid(out)
            tl.store(y_ptr + batch * stride_y_b + pos * stride_y_l + chan * stride_y_d, out.to(y_ptr.dtype.element_ty),
                     mask=_row_mask(chan_mask, pos < length))

    if STORE_FINAL:
        if chunk == tl.num_programs(0) - 1:
            if HAS_SEQ:
                last_seq = _sequence_id(seq_ptr, stride_seq_b, stride_seq_l, batch, length - 1, length)
            for i in tl.static_range(K - 1):
                pos = length - (K - 1) + i
                row = _load_row(x_ptr, init_ptr, batch, pos, chan, chan_mask, length, stride_x_b, stride_x_d,
                                stride_x_l, stride_init_b, stride_init_d, stride_init_k, K, HAS_INIT)
                if HAS_SEQ:
                    row = tl.where(_sequence_id(seq_ptr, stride_seq_b, stride_seq_l, batch, pos, length) == last_seq,
                                   row, 0.0)
                tl.store(final_ptr + batch * stride_final_b + chan * stride_final_d + i * stride_final_k,
                         row.to(final_ptr.dtype.element_ty), mask=chan_mask)


@triton.jit
def _conv_backward_kernel(
    x_ptr, weight_ptr, bias_ptr, init_ptr, seq_ptr, dy_ptr, dfinal_ptr,
    dx_ptr, dinit_ptr, partial_ptr, length, channels, chunk_len,
    stride_x_b, stride_x_d, stride_x_l, stride_w_d, stride_w_k,
    stride_init_b, stride_init_d, stride_init_k, stride_seq_b, stride_seq_l,
    stride_dy_b, stride_dy_d, stride_dy_l, stride_dfinal_b, stride_dfinal_d, stride_dfinal_k,
    stride_dx_b, stride_dx_d, stride_dx_l, stride_dinit_b, stride_dinit_d, stride_dinit_k,
    K: tl.constexpr, BLOCK_D: tl.constexpr, ROWS_PER_STEP: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
    SILU: tl.constexpr, HAS_DFINAL: tl.constexpr,
):
    """Gradients for one chunk of positions; grid (chunks, d blocks, b).

    The program owns positions first..last-1 (from -(k-1) with an initial state, whose dx is its gradient)
    and walks p = first..last+k-2, forming g[p] = dy[p] * act'(pre[p]) once per position:
      dweight[j] += g[p] * input[p-(k-1)+j] (same sequence) and dbias += g[p] for owned p;
      dx[u] = sum_s w[k-1-s] g[u+s] (same sequence), + dfinal for the last k-1 positions, at u = p-(k-1).
    Program r writes its sums to partial[j, r, d] (j = k: the bias gradient).
    """
    chunk = tl.program_id(0)
    batch = tl.program_id(2).to(tl.int64)
    chan = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = chan < channels
    first = chunk * chunk_len - (K - 1 if HAS_INIT else 0)
    last = tl.minimum(first + chunk_len, length)
    weights, bias = _load_weights(weight_ptr, bias_ptr, chan, chan_mask, stride_w_d, stride_w_k, K, HAS_BIAS)
    inputs = ()  # positions first-k..first-1, oldest first (g before `first` is never used)
    grads = ()
    seqs = ()
    for i in tl.static_range(K):
        inputs = inputs + (_load_row(x_ptr, init_ptr, batch, first - K + i, chan, chan_mask, length,
                                     stride_x_b, stride_x_d, stride_x_l, stride_init_b, stride_init_d,
                                     stride_init_k, K, HAS_INIT),)
        grads = grads + (tl.zeros([BLOCK_D], dtype=tl.float32),)
        if HAS_SEQ:
            seqs = seqs + (_sequence_id(seq_ptr, stride_seq_b, stride_seq_l, batch, first - K + i, length),)
    sums = ()  # dweight taps 0..k-1, then dbias
    for j in tl.static_range(K + 1 if HAS_BIAS else K):
        sums = sums + (tl.zeros([BLOCK_D], dtype=tl.float32),)
    if HAS_DFINAL and HAS_SEQ:
        last_seq = _sequence_id(seq_ptr, stride_seq_b, stride_seq_l, batch, length - 1, length)

    for step in range(first, last + K - 1, ROWS_PER_STEP):
        x_rows = ()
        dy_rows = ()
        seq_rows = ()
        for i in tl.static_range(ROWS_PER_STEP):  # issue every load of the step before any use
            pos = step + i
            x_rows = x_rows + (_load_row(x_ptr, init_ptr, batch, pos, chan, chan_mask, length,
                                         stride_x_b, stride_x_d, stride_x_l, stride_init_b, stride_init_d,
                                         stride_init_k, K, HAS_INIT),)
            dy_rows = dy_rows + (tl.load(dy_ptr + batch * stride_dy_b + pos * stride_dy_l + chan * stride_dy_d,
                                         mask=_row_mask(chan_mask, (pos >= 0) & (pos < length)), other=0.0),)
            if HAS_SEQ:
                seq_rows = seq_rows + (_sequence_id(seq_ptr, stride_seq_b, stride_seq_l, batch, pos, length),)
        for i in tl.static_range(ROWS_PER_STEP):
            pos = step + i
            inputs = inputs[1:] + (x_rows[i],)
            if HAS_SEQ:
                seqs = seqs[1:] + (seq_rows[i],)
            taps_in = _tap_inputs(inputs, seqs, K, HAS_SEQ)
            grad = dy_rows[i].to(tl.float32)
            if SILU:
                pre = bias
                for tap in tl.static_range(K):
                    pre += weights[tap] * taps_in[tap]
                sig = tl.sigmoid(pre)
                grad = grad * sig * (1.0 + pre * (1.0 - sig))
            owned_grad = tl.where(pos < last, grad, 0.0)
            new_sums = ()
            for tap in tl.static_range(K):
                new_sums = new_sums + (sums[tap] + owned_grad * taps_in[tap],)
            if HAS_BIAS:
                new_sums = new_sums + (sums[K] + owned_grad,)
            sums = new_sums

            grads = grads[1:] + (grad,)  # g at positions u..pos
            u = pos - (K - 1)
            grad_in = tl.zeros([BLOCK_D], dtype=tl.float32)
            for shift in tl.static_range(K):  # g[u + shift] meets tap k-1-shift
                if HAS_SEQ:
                    grad_in += weights[K - 1 - shift] * tl.where(seqs[shift] == seqs[0], grads[shift], 0.0)
                else:
                    grad_in += weights[K - 1 - shift] * grads[shift]
            if HAS_DFINAL:  # the final state holds inputs length-(k-1)..length-1 of the last sequence
                tail = u - (length - (K - 1))
                if tail >= 0:
                    grad_final = tl.load(dfinal_ptr + batch * stride_dfinal_b + chan * stride_dfinal_d
                                         + tail * stride_dfinal_k, mask=_row_mask(chan_mask, u < length),
                                         other=0.0).to(tl.float32)
                    if HAS_SEQ:
                        grad_final = tl.where(seqs[0] == last_seq, grad_final, 0.0)
                    grad_in += grad_final
            ours = (u >= first) & (u < last)
            tl.store(dx_ptr + batch * stride_dx_b + u * stride_dx_l + chan * stride_dx_d,
                     grad_in.to(dx_ptr.dtype.element_ty), mask=_row_mask(chan_mask, ours & (u >= 0)))
            if HAS_INIT:
                if u < 0:
                    tl.store(dinit_ptr + batch * stride_dinit_b + chan * stride_dinit_d
                             + (u + K - 1) * stride_dinit_k, grad_in.to(dinit_ptr.dtype.element_ty),
                             mask=_row_mask(chan_mask, ours))

    partial_rows = tl.num_programs(0) * tl.num_programs(2)
    partial_row = batch * tl.num_programs(0) + chunk
    for j in tl.static_range(K + 1 if HAS_BIAS else K):
        tl.store(partial_ptr + (j * partial_rows + partial_row) * channels + chan, sums[j], mask=chan_mask)


@triton.jit
def _sum_partials_kernel(
    partial_ptr, dweight_ptr, dbias_ptr, partial_rows, channels, stride_dw_d, stride_dw_k,
    K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dweight[d, j] = sum_r partial[j, r, d] for j < k and dbias[d] = sum_r partial[k, r, d];
    grid (d blocks, k or k+1)."""
    tap = tl.program_id(1)
    chan = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = chan < channels
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for first_row in range(0, partial_rows, BLOCK_R):
        row = first_row + tl.arange(0, BLOCK_R)
        ptrs = partial_ptr + (tap * partial_rows + row[:, None]) * channels + chan[None, :]
        acc += tl.load(ptrs, mask=(row < partial_rows)[:, None] & chan_mask[None, :], other=0.0)
    total = tl.sum(acc, axis=0)
    if tap < K:
        tl.store(dweight_ptr + chan * stride_dw_d + tap * stride_dw_k, total.to(dweight_ptr.dtype.element_ty),
                 mask=chan_mask)
    else:
        tl.store(dbias_ptr + chan, total.to(dbias_ptr.dtype.element_ty), mask=chan_mask)


@triton.jit
def _conv_update_kernel(
    x_ptr, state_ptr, weight_ptr, bias_ptr, y_ptr, channels,
    stride_x_b, stride_state_b, stride_state_d, stride_state_s, stride_w_d,
    K: tl.constexpr, STATE_LEN: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):
    """One decode step for BLOCK_D channels of one batch row; grid (d blocks, b). x and y: (b, d), channels
    contiguous; weight: (d, k), taps contiguous.

    y = act(sum_j w[j] window[j] + bias) over window = (state[s-(k-1):], x); then state <- (state[1:], x).
    Each channel belongs to one thread, which reads column c before overwriting column c-1 with it.
    """
    batch = tl.program_id(1).to(tl.int64)
    chan = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = chan < channels
    x = tl.load(x_ptr + batch * stride_x_b + chan, mask=chan_mask, other=0.0)
    out = x.to(tl.float32) * tl.load(weight_ptr + chan * stride_w_d + K - 1, mask=chan_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        out += tl.load(bias_ptr + chan, mask=chan_mask, other=0.0).to(tl.float32)
    state_ptrs = state_ptr + batch * stride_state_b + chan * stride_state_d
    for col in tl.static_range(STATE_LEN):
        value = tl.load(state_ptrs + col * stride_state_s, mask=chan_mask)
        if col >= STATE_LEN - (K - 1):
            w_tap = tl.load(weight_ptr + chan * stride_w_d + (col - (STATE_LEN - (K - 1))), mask=chan_mask, other=0.0)
            out += value.to(tl.float32) * w_tap.to(tl.float32)
        if col > 0:
            tl.store(state_ptrs + (col - 1) * stride_state_s, value, mask=chan_mask)
    tl.store(state_ptrs + (STATE_LEN - 1) * stride_state_s, x.to(state_ptr.dtype.element_ty), mask=chan_mask)
    if SILU:
        out = out * tl.sigmoid(out)
    tl.store(y_ptr + batch * channels + chan, out.to(y_ptr.dtype.element_ty), mask=chan_mask)


def _launch_shape(x: torch.Tensor, config: dict, positions: int, halo: int) -> tuple[int, int, int, int]:
    """(block_d, num_warps, chunk_len, chunks) for a row-walking kernel over ``positions`` positions.

    A program takes row_bytes of channels (a power of two) when x's channels are contiguous (a row is one
    coalesced access), else one channel per thread. The chunks give about target_programs programs over
    (chunks, d blocks, b), each walking chunk_len + halo positions, a multiple of rows_per_step.
    """
    batch, channels, _ = x.shape
    num_warps, rows_per_step = config["num_warps"], config["rows_per_step"]
    block_d = config["row_bytes"] // x.element_size() if x.stride(1) == 1 else 32 * num_warps
    block_d = min(block_d, triton.next_power_of_2(channels))
    num_warps = max(1, min(num_warps, block_d // 32))
    programs_l = max(1, config["target_programs"] // (triton.cdiv(channels, block_d) * batch))
    walked = triton.cdiv(max(1, triton.cdiv(positions, programs_l)) + halo, rows_per_step) * rows_per_step
    chunk_len = walked - halo  # >= 1: walked > halo
    return block_d, num_warps, chunk_len, triton.cdiv(positions, chunk_len)


def _strides(t: torch.Tensor | None, rank: int) -> tuple[int, ...]:
    return t.stride() if t is not None else (0,) * rank


def _conv_forward(x, weight, bias, initial_state, seq_idx, silu, return_final_state):
    batch, channels, length = x.shape
    width = weight.shape[-1]
    y = torch.empty_like(x)  # x's layout when x is dense
    store_final = return_final_state and width > 1
    final = x.new_empty(batch, channels, width - 1) if return_final_state else None
    block_d, num_warps, chunk_len, chunks = _launch_shape(x, FORWARD_CONFIG, length, 0)
    _conv_forward_kernel[(chunks, triton.cdiv(channels, block_d), batch)](
        x, weight, bias if bias is not None else x, initial_state if initial_state is not None else x,
        seq_idx if seq_idx is not None else x, y, final if store_final else x, length, channels, chunk_len,
        *x.stride(), *weight.stride(), *_strides(initial_state, 3), *_strides(seq_idx, 2),
        *y.stride(), *_strides(final if store_final else None, 3),
        K=width, BLOCK_D=block_d, ROWS_PER_STEP=FORWARD_CONFIG["rows_per_step"],
        HAS_BIAS=bias is not None, HAS_INIT=initial_state is not None, HAS_SEQ=seq_idx is not None,
        SILU=silu, STORE_FINAL=store_final, num_warps=num_warps,
    )
    return y, final


def _conv_backward(x, weight, bias, initial_state, seq_idx, silu, grad_y, grad_final):
    batch, channels, length = x.shape
    width = weight.shape[-1]
    has_dfinal = grad_final is not None and width > 1
    grad_x = torch.empty_like(x)  # x's layout when x is dense
    grad_init = torch.empty_like(initial_state) if initial_state is not None else None
    positions = length + (width - 1 if initial_state is not None else 0)
    block_d, num_warps, chunk_len, chunks = _launch_shape(x, BACKWARD_CONFIG, positions, width - 1)
    sums = width + (bias is not None)
    partials = torch.empty(sums, batch * chunks, channels, dtype=torch.float32, device=x.device)
    _conv_backward_kernel[(chunks, triton.cdiv(channels, block_d), batch)](
        x, weight, bias if bias is not None else x, initial_state if initial_state is not None else x,
        seq_idx if seq_idx is not None else x, grad_y, grad_final if has_dfinal else x,
        grad_x, grad_init if grad_init is not None else x, partials, length, channels, chunk_len,
        *x.stride(), *weight.stride(), *_strides(initial_state, 3), *_strides(seq_idx, 2),
        *grad_y.stride(), *_strides(grad_final if has_dfinal else None, 3),
        *grad_x.stride(), *_strides(grad_init, 3),
        K=width, BLOCK_D=block_d, ROWS_PER_STEP=BACKWARD_CONFIG["rows_per_step"],
        HAS_BIAS=bias is not None, HAS_INIT=initial_state is not None, HAS_SEQ=seq_idx is not None,
        SILU=silu, HAS_DFINAL=has_dfinal, num_warps=num_warps,
    )
    grad_weight = torch.empty(channels, width, dtype=weight.dtype, device=x.device)
    grad_bias = torch.empty_like(bias) if bias is not None else None
    sum_block_d = min(128, triton.next_power_of_2(channels))
    _sum_partials_kernel[(triton.cdiv(channels, sum_block_d), sums)](
        partials, grad_weight, grad_bias if grad_bias is not None else grad_weight, batch * chunks, channels,
        *grad_weight.stride(), K=width, BLOCK_R=min(32, triton.next_power_of_2(batch * chunks)),
        BLOCK_D=sum_block_d, num_warps=4,
    )
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
    """One decode step; updates ``conv_state`` (b, d, s), s >= k-1, any strides, in place. No host sync
    (graph-safe).

    x: (b, d); weight: (d, k); bias: (d,). Returns y (b, d) in x's dtype.
    """
    _check_activation(activation)
    batch, channels = x.shape
    state_len = conv_state.shape[-1]
    width = weight.shape[-1]
    if state_len < width - 1:
        raise ValueError(f"conv_state holds {state_len} steps; a width-{width} conv needs at least {width - 1}")
    if x.stride(1) != 1:
        x = x.contiguous()
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    y = x.new_empty(batch, channels)
    block_d = max(32, min(UPDATE_CONFIG["block_d"], triton.next_power_of_2(channels)))
    _conv_update_kernel[(triton.cdiv(channels, block_d), batch)](
        x, conv_state, weight, bias if bias is not None else x, y, channels,
        x.stride(0), *conv_state.stride(), weight.stride(0),
        K=width, STATE_LEN=state_len, BLOCK_D=block_d, HAS_BIAS=bias is not None, SILU=activation is not None,
        num_warps=block_d // 32,
    )
    return y
