"""Fused single-token decode kernels, part 2: conv + SSM recurrence, one kernel per mixer.

- ``mamba1_ssm_step``: Mamba-1's conv (recomputed from conv_state and x, then rolled in place), dt_proj,
  softplus, -exp(A_log), the state update and the gated output, after ``mamba1_conv_xproj`` has produced
  x_dbl (Δ_low, B, C) from the same conv window.
- ``mamba2_conv_ssm_step``: Mamba-2's conv over the x, B and C channels, the per-head step size and the
  state update (the gate comes later, in ``gated_norm_linear``).

Design: a program owns a block of channels (Mamba-1) or of one head's lanes (Mamba-2) of one batch row
(grid axis 1): per-row work is the state tile, the few weights (dt_proj rows, A_log, D, conv taps) are
requested before waiting for the previous kernel (programmatic dependent launch, see ``decode_fused``).
Each program computes the conv of exactly the channels whose state it updates and rolls them. Mamba-2's
B and C channels are shared by every head of a group, so every program recomputes their conv from the old
window and none may roll them while others still read: the programs count themselves out on a per-device
arrival counter (acquire-release, shared with ``decode_fused``), and the last to arrive rolls the shared
channels of every row and resets the counter to zero for the next call. Calls on one device must therefore
not run concurrently on several streams.

Shapes: b batch, d = d_inner, n = d_state, r = dt_rank, k = d_conv, s >= k-1 conv_state columns;
Mamba-2: h heads, p = headdim, g = ngroups, c = d + 2·g·n conv channels.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from mambakit.ops.kernels.decode_fused import (
    arrival_counter, conv_silu, conv_taps, multiprocessors, pdl_launch, roll_conv_state, softplus,
    unit_stride_rows, wait_for_previous_kernel,
)

# Programs per multiprocessor the channel (lane) blocks aim for, the widest block, and the most elements of
# its largest tile (Mamba-1: dt_proj rows [BLOCK_D, r]; Mamba-2: the state [BLOCK_P, n]): ~16 fp32 a thread.
SSM_PROGRAMS_PER_SM = 2
MAX_BLOCK_CHANNELS = 64
SSM_TILE_ELEMENTS = 2048
SSM_NUM_WARPS = 4
# Channels per step when the last Mamba-2 program rolls the shared B and C conv state.
SHARED_ROLL_BLOCK = 256


@triton.jit
def _rms_normalized(v, count, eps):
    """v * rsqrt(mean(v^2) + eps) over the first ``count`` entries (the rest are zero)."""
    return v * tl.rsqrt(tl.sum(v * v, axis=0) / count + eps)


@triton.jit
def _mamba1_ssm_step_kernel(
    x_ptr, z_ptr, x_dbl_ptr, conv_state_ptr, conv_weight_ptr, conv_bias_ptr, dt_weight_ptr, dt_bias_ptr,
    A_log_ptr, D_ptr, ssm_state_ptr, y_ptr,
    channels, dt_rank, state_size, state_len, bcdt_eps,
    stride_x_b, stride_z_b, stride_x_dbl_b, stride_conv_b, stride_conv_c, stride_conv_s,
    stride_conv_w_c, stride_conv_w_k, stride_dt_w_d, stride_A_d, stride_ssm_b, stride_ssm_d, stride_ssm_n,
    stride_y_b,
    CONV_WIDTH: tl.constexpr, BLOCK_S: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, BCDT_NORM: tl.constexpr,
    BLOCK_D: tl.constexpr, RANK_PAD: tl.constexpr, STATE_PAD: tl.constexpr, USE_PDL: tl.constexpr,
):
    """Grid (cdiv(d, BLOCK_D), b): BLOCK_D channels of one batch row."""
    row = tl.program_id(1).to(tl.int64)
    chans = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = chans < channels
    ranks = tl.arange(0, RANK_PAD)
    rank_mask = ranks < dt_rank
    n = tl.arange(0, STATE_PAD)
    n_mask = n < state_size
    tile_mask = chan_mask[:, None] & n_mask[None, :]
    dt_weight = tl.load(dt_weight_ptr + chans[:, None] * stride_dt_w_d + ranks[None, :],
                        mask=chan_mask[:, None] & rank_mask[None, :], other=0.0)
    dt_bias = tl.load(dt_bias_ptr + chans, mask=chan_mask, other=0.0).to(tl.float32)
    A = -tl.exp(tl.load(A_log_ptr + chans[:, None] * stride_A_d + n[None, :], mask=tile_mask, other=0.0).to(tl.float32))
    D = tl.load(D_ptr + chans, mask=chan_mask, other=0.0).to(tl.float32)
    state_taps, input_tap, conv_bias = conv_taps(conv_weight_ptr, conv_bias_ptr, chans, chan_mask, stride_conv_w_c,
                                                 stride_conv_w_k, state_len, CONV_WIDTH, BLOCK_S, HAS_CONV_BIAS)
    wait_for_previous_kernel(USE_PDL)

    x_dbl_row = x_dbl_ptr + row * stride_x_dbl_b
    dt_low = tl.load(x_dbl_row + ranks, mask=rank_mask, other=0.0).to(tl.float32)
    B = tl.load(x_dbl_row + dt_rank + n, mask=n_mask, other=0.0).to(tl.float32)
    C = tl.load(x_dbl_row + dt_rank + state_size + n, mask=n_mask, other=0.0).to(tl.float32)
    if BCDT_NORM:
        dt_low = _rms_normalized(dt_low, dt_rank, bcdt_eps)
        B = _rms_normalized(B, state_size, bcdt_eps)
        C = _rms_normalized(C, state_size, bcdt_eps)
    dt = softplus(tl.sum(dt_weight.to(tl.float32) * dt_low[None, :], axis=1) + dt_bias)

    conv_row = conv_state_ptr + row * stride_conv_b
    x, x_input = conv_silu(conv_row, x_ptr + row * stride_x_b, chans, chan_mask, state_taps, input_tap, conv_bias,
                           stride_conv_c, stride_conv_s, state_len, BLOCK_S)
    roll_conv_state(conv_row, x_input, chans, chan_mask, stride_conv_c, stride_conv_s, state_len, BLOCK_S)

    state_ptrs = ssm_state_ptr + row * stride_ssm_b + chans[:, None] * stride_ssm_d + n[None, :] * stride_ssm_n
    state = tl.load(state_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
    state = tl.exp(dt[:, None] * A) * state + (dt * x)[:, None] * B[None, :]
    tl.store(state_ptrs, state.to(ssm_state_ptr.dtype.element_ty), mask=tile_mask)
    z = tl.load(z_ptr + row * stride_z_b + chans, mask=chan_mask, other=0.0).to(tl.float32)
    y = (tl.sum(state * C[None, :], axis=1) + D * x) * z * tl.sigmoid(z)
    tl.store(y_ptr + row * stride_y_b + chans, y.to(y_ptr.dtype.element_ty), mask=chan_mask)


@triton.jit
def _mamba2_conv_ssm_step_kernel(
    xbc_ptr, dt_ptr, conv_state_ptr, conv_weight_ptr, conv_bias_ptr, dt_bias_ptr, A_log_ptr, D_ptr,
    ssm_state_ptr, y_ptr, arrivals_ptr,
    batch, head_dim, state_size, heads_per_group, d_inner, group_channels, state_len, dt_min, dt_max,
    stride_xbc_b, stride_dt_b, stride_conv_b, stride_conv_c, stride_conv_s, stride_conv_w_c, stride_conv_w_k,
    stride_ssm_b, stride_ssm_h, stride_ssm_p, stride_ssm_n, stride_y_b,
    CONV_WIDTH: tl.constexpr, BLOCK_S: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, BLOCK_P: tl.constexpr,
    STATE_PAD: tl.constexpr, SHARED_BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
):
    """Grid (h * cdiv(p, BLOCK_P), b): BLOCK_P lanes of one head of one batch row. The B channels of group
    g are d + g·n .. d + (g+1)·n - 1, its C channels ``group_channels`` (= g_total·n) further."""
    blocks_per_head = tl.cdiv(head_dim, BLOCK_P)
    head = tl.program_id(0) // blocks_per_head
    lanes = (tl.program_id(0) % blocks_per_head) * BLOCK_P + tl.arange(0, BLOCK_P)
    lane_mask = lanes < head_dim
    row = tl.program_id(1).to(tl.int64)
    n = tl.arange(0, STATE_PAD)
    n_mask = n < state_size
    x_chans = head * head_dim + lanes
    B_chans = d_inner + (head // heads_per_group) * state_size + n
    C_chans = B_chans + group_channels
    x_taps, x_input_tap, x_bias = conv_taps(conv_weight_ptr, conv_bias_ptr, x_chans, lane_mask, stride_conv_w_c,
                                            stride_conv_w_k, state_len, CONV_WIDTH, BLOCK_S, HAS_CONV_BIAS)
    B_taps, B_input_tap, B_bias = conv_taps(conv_weight_ptr, conv_bias_ptr, B_chans, n_mask, stride_conv_w_c,
                                            stride_conv_w_k, state_len, CONV_WIDTH, BLOCK_S, HAS_CONV_BIAS)
    C_taps, C_input_tap, C_bias = conv_taps(conv_weight_ptr, conv_bias_ptr, C_chans, n_mask, stride_conv_w_c,
                                            stride_conv_w_k, state_len, CONV_WIDTH, BLOCK_S, HAS_CONV_BIAS)
    dt_bias = tl.load(dt_bias_ptr + head).to(tl.float32)
    A = -tl.exp(tl.load(A_log_ptr + head).to(tl.float32))
    D = tl.load(D_ptr + head).to(tl.float32)
    wait_for_previous_kernel(USE_PDL)

    xbc_row = xbc_ptr + row * stride_xbc_b
    conv_row = conv_state_ptr + row * stride_conv_b
    x, x_input = conv_silu(conv_row, xbc_row, x_chans, lane_mask, x_taps, x_input_tap, x_bias,
                           stride_conv_c, stride_conv_s, state_len, BLOCK_S)
    B, _ = conv_silu(conv_row, xbc_row, B_chans, n_mask, B_taps, B_input_tap, B_bias,
                     stride_conv_c, stride_conv_s, state_len, BLOCK_S)
    C, _ = conv_silu(conv_row, xbc_row, C_chans, n_mask, C_taps, C_input_tap, C_bias,
                     stride_conv_c, stride_conv_s, state_len, BLOCK_S)
    dt = softplus(tl.load(dt_ptr + row * stride_dt_b + head).to(tl.float32) + dt_bias)
    dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)

    tile_mask = lane_mask[:, None] & n_mask[None, :]
    state_ptrs = (ssm_state_ptr + row * stride_ssm_b + head * stride_ssm_h + lanes[:, None] * stride_ssm_p
                  + n[None, :] * stride_ssm_n)
    state = tl.load(state_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
    state = tl.exp(dt * A) * state + (dt * x)[:, None] * B[None, :]
    tl.store(state_ptrs, state.to(ssm_state_ptr.dtype.element_ty), mask=tile_mask)
    y = tl.sum(state * C[None, :], axis=1) + D * x
    tl.store(y_ptr + row * stride_y_b + x_chans, y.to(y_ptr.dtype.element_ty), mask=lane_mask)
    roll_conv_state(conv_row, x_input, x_chans, lane_mask, stride_conv_c, stride_conv_s, state_len, BLOCK_S)

    tl.debug_barrier()  # this program's reads of the shared window are done before it counts itself out
    arrived = tl.atomic_add(arrivals_ptr, 1, sem="acq_rel")
    if arrived == tl.num_programs(0) * tl.num_programs(1) - 1:
        offs = tl.arange(0, SHARED_BLOCK)
        for shared_row in range(batch):
            row_xbc = xbc_ptr + shared_row * stride_xbc_b
            row_conv = conv_state_ptr + shared_row * stride_conv_b
            for start in range(0, 2 * group_channels, SHARED_BLOCK):
                chans = d_inner + start + offs
                chan_mask = start + offs < 2 * group_channels
                new_input = tl.load(row_xbc + chans, mask=chan_mask, other=0.0)
                roll_conv_state(row_conv, new_input, chans, chan_mask, stride_conv_c, stride_conv_s, state_len,
                                BLOCK_S)
        tl.atomic_xchg(arrivals_ptr, 0, sem="release")


def _channel_block(units: int, size: int, rows: int, tile_width: int, device: torch.device) -> int:
    """Channels (lanes) per program: the widest power of two up to MAX_BLOCK_CHANNELS, with a tile of at
    most SSM_TILE_ELEMENTS at ``tile_width`` elements a channel, whose grid of ``units`` units of ``size``
    channels over ``rows`` batch rows still gives SSM_PROGRAMS_PER_SM programs per multiprocessor."""
    block = min(MAX_BLOCK_CHANNELS, triton.next_power_of_2(size), max(1, SSM_TILE_ELEMENTS // tile_width))
    wanted = SSM_PROGRAMS_PER_SM * multiprocessors(device)
    while block > 1 and units * triton.cdiv(size, block) * rows < wanted:
        block //= 2
    return block


def _conv_shapes(conv_state: torch.Tensor, conv_weight: torch.Tensor) -> dict:
    width = conv_weight.shape[-1]
    state_len = conv_state.shape[-1]
    if state_len < width - 1:
        raise ValueError(f"conv_state holds {state_len} steps; a width-{width} conv needs at least {width - 1}")
    return dict(CONV_WIDTH=width, BLOCK_S=triton.next_power_of_2(max(state_len, 1)))


def mamba1_ssm_step(x, z, x_dbl, conv_state, conv_weight, conv_bias, dt_proj_weight, dt_proj_bias, A_log, D,
                    ssm_state, bcdt_eps=None):
    """Mamba-1's conv (rolling ``conv_state``), dt_proj and SSM update (``ssm_state``) for one token.

    x, z: (b, d); x_dbl: (b, r + 2n); conv_state: (b, d, s); conv_weight: (d, k); conv_bias: (d,) or None;
    dt_proj_weight: (d, r); dt_proj_bias: (d,); A_log: (d, n); D: (d,); ssm_state: (b, d, n).
    ``bcdt_eps``: Falcon-Mamba's weightless RMSNorm of Δ_low, B and C (None: off). Returns y (b, d) in x's dtype.
    """
    batch, channels = x.shape
    dt_rank = dt_proj_weight.shape[1]
    state_size = A_log.shape[1]
    x, z, x_dbl = unit_stride_rows(x), unit_stride_rows(z), unit_stride_rows(x_dbl)
    dt_proj_weight, A_log = unit_stride_rows(dt_proj_weight), unit_stride_rows(A_log)
    y = torch.empty(batch, channels, device=x.device, dtype=x.dtype)
    rank_pad, state_pad = triton.next_power_of_2(dt_rank), triton.next_power_of_2(state_size)
    block_d = _channel_block(1, channels, batch, max(rank_pad, state_pad), x.device)
    use_pdl, launch_options = pdl_launch(x.device)
    _mamba1_ssm_step_kernel[(triton.cdiv(channels, block_d), batch)](
        x, z, x_dbl, conv_state, conv_weight, conv_bias if conv_bias is not None else D, dt_proj_weight,
        dt_proj_bias, A_log, D, ssm_state, y,
        channels, dt_rank, state_size, conv_state.shape[-1], bcdt_eps if bcdt_eps is not None else 0.0,
        x.stride(0), z.stride(0), x_dbl.stride(0), *conv_state.stride(), *conv_weight.stride(),
        dt_proj_weight.stride(0), A_log.stride(0), *ssm_state.stride(), y.stride(0),
        HAS_CONV_BIAS=conv_bias is not None, BCDT_NORM=bcdt_eps is not None, BLOCK_D=block_d,
        RANK_PAD=rank_pad, STATE_PAD=state_pad, USE_PDL=use_pdl,
        **_conv_shapes(conv_state, conv_weight), num_warps=SSM_NUM_WARPS, **launch_options,
    )
    return y


def mamba2_conv_ssm_step(xbc, dt, conv_state, conv_weight, conv_bias, dt_bias, A_log, D, ssm_state, ngroups,
                         headdim, dt_limit=(0.0, math.inf)):
    """Mamba-2's conv (rolling ``conv_state``) and SSM update (``ssm_state``) for one token, without the gate.

    xbc: (b, d + 2·g·n); dt: (b, h); conv_state: (b, d + 2·g·n, s); conv_weight: (d + 2·g·n, k);
    conv_bias: (d + 2·g·n,) or None; dt_bias, A_log, D: (h,); ssm_state: (b, h, p, n).
    Returns y (b, d) in xbc's dtype.
    """
    batch = xbc.shape[0]
    heads, head_dim, state_size = ssm_state.shape[1:]
    if heads % ngroups:
        raise ValueError(f"{heads} heads cannot be split into {ngroups} groups")
    d_inner = heads * head_dim
    xbc, dt = unit_stride_rows(xbc), unit_stride_rows(dt)
    y = torch.empty(batch, d_inner, device=xbc.device, dtype=xbc.dtype)
    state_pad = triton.next_power_of_2(state_size)
    block_p = _channel_block(heads, head_dim, batch, state_pad, xbc.device)
    use_pdl, launch_options = pdl_launch(xbc.device)
    _mamba2_conv_ssm_step_kernel[(heads * triton.cdiv(head_dim, block_p), batch)](
        xbc, dt, conv_state, conv_weight, conv_bias if conv_bias is not None else D, dt_bias, A_log, D,
        ssm_state, y, arrival_counter(xbc.device),
        batch, head_dim, state_size, heads // ngroups, d_inner, ngroups * state_size, conv_state.shape[-1],
        float(dt_limit[0]), float(dt_limit[1]),
        xbc.stride(0), dt.stride(0), *conv_state.stride(), *conv_weight.stride(), *ssm_state.stride(), y.stride(0),
        HAS_CONV_BIAS=conv_bias is not None, BLOCK_P=block_p, STATE_PAD=state_pad,
        SHARED_BLOCK=min(SHARED_ROLL_BLOCK, triton.next_power_of_2(2 * ngroups * state_size)), USE_PDL=use_pdl,
        **_conv_shapes(conv_state, conv_weight), num_warps=SSM_NUM_WARPS, **launch_options,
    )
    return y
