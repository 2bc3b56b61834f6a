"""The chunked Triton selective scan (Mamba-1): the first kernel, kept as a selectable baseline.

Select it with ``selective_scan.CONFIG["variant"] = "chunked"``; the default is the segmented kernel
(selective_scan_forward.py, selective_scan_backward.py), which runs the recurrence of a channel inside one
thread. Here one program owns a block of ``BLOCK_D`` channels of one batch row and walks the sequence in
chunks of ``CHUNK`` time steps. Per chunk it loads u, delta (and z) once as (BLOCK_D, CHUNK) tiles,
coalesced along l (so the launcher gives every (b, d, l) tensor a unit stride along l), then loops over the
n states: for state n the recurrence ``h_t = exp(delta_t A_n) h_{t-1} + delta_t u_t B_{n,t}`` is solved
over the chunk with ``tl.associative_scan`` (the state entering the chunk is folded into the first step),
and ``C_{n,t} h_t`` is accumulated into y, which is written once per chunk. The state leaving the chunk
goes to a checkpoint buffer (b, slots, n, d) in fp32 and is read back by the next chunk.

The forward keeps every chunk's entering state when a backward will follow. The backward walks the
chunks in reverse: it recomputes h inside the chunk from the checkpoint, solves the adjoint recurrence
``g_t = C_t dout_t + exp(delta_{t+1} A) g_{t+1}`` with a reverse scan (the adjoint arriving from the
next chunk folded into the last step), and forms every gradient from h and g:
dC = sum_d dout h, dB = sum_d g delta u (both added atomically into fp32 (b, g, n, l) buffers after
a reduction over the program's channels), d(delta u) = sum_n g B, and, through the decay,
g_t exp(delta_t A) h_{t-1} = g_t (h_t - delta_t u_t B_t) which gives dA and the decay's part of ddelta.

``seq_idx`` resets become a per-position log-decay of -inf (decay 0); padded positions past l have
delta = 0 and B = 0, so they neither decay nor drive the state.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _linear_recurrence_combine(decay_early, state_early, decay_late, state_late):
    """Compose two stretches of h -> decay * h + state, the earlier one applied first."""
    return decay_early * decay_late, decay_late * state_early + state_late


@triton.jit
def _adjoint_recurrence_combine(first_late, inner_late, adjoint_late, first_early, inner_early, adjoint_early):
    """Compose two stretches of the adjoint recurrence g_t = c_t + a_{t+1} g_{t+1} (reverse-scan order:
    the later stretch comes first). A stretch [i, j] is summarised by (a_i, prod_{k=i+1..j} a_k, g_i
    computed from the stretch alone); no shifted copy of a is needed."""
    bridge = inner_early * first_late
    return first_early, bridge * inner_late, adjoint_early + bridge * adjoint_late


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))


@triton.jit
def _load_delta(u_ptrs, delta_ptrs, tile_mask, delta_bias, HAS_DELTA_BIAS: tl.constexpr,
                DELTA_SOFTPLUS: tl.constexpr):
    """(delta, delta * u) for one (BLOCK_D, CHUNK) tile in fp32, both zero outside ``tile_mask``."""
    delta = tl.load(delta_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
    if HAS_DELTA_BIAS:
        delta += delta_bias
    if DELTA_SOFTPLUS:
        delta = _softplus(delta)
    delta = tl.where(tile_mask, delta, 0.0)
    return delta, delta * tl.load(u_ptrs, mask=tile_mask, other=0.0).to(tl.float32)


@triton.jit
def _load_state_inputs(A_ptrs, B_ptrs, C_ptrs, state_ptrs, n, stride_A_n, stride_bc_n, stride_states_n, d_mask):
    """A[:, n] (BLOCK_D,), rows n of B and C broadcast to (BLOCK_D, CHUNK) tiles, and the state n entering
    the chunk (BLOCK_D,), all fp32. The state loops fetch state n + 1's inputs while computing state n;
    the state (written by the previous chunk, so an L2 read) is loaded volatile so that the compiler
    keeps the fetch early in the loop body instead of sinking it next to its use."""
    A_n = tl.load(A_ptrs + n * stride_A_n, mask=d_mask, other=0.0)
    B_n = tl.load(B_ptrs + n * stride_bc_n)
    C_n = tl.load(C_ptrs + n * stride_bc_n)
    h_start = tl.load(state_ptrs + n * stride_states_n, mask=d_mask, other=0.0, volatile=True)
    return A_n, B_n, C_n, h_start


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, log_keep_ptr, y_ptr, states_ptr,
    length, channels, state_size, channels_per_group, num_state_slots,
    stride_u_b, stride_u_d, stride_delta_b, stride_delta_d, stride_z_b, stride_z_d, stride_y_b, stride_y_d,
    stride_A_d, stride_A_n, stride_bc_b, stride_bc_g, stride_bc_n, stride_keep_b,
    stride_states_b, stride_states_slot, stride_states_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    HAS_SEQ_IDX: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
):
    """Grid (cdiv(d, BLOCK_D), b). u, delta, z, y: (b, d, l), unit stride along l; A: (d, n);
    B, C: (b, g, n, l_pad) fp32 (zero past l); log_keep: (b, l_pad) fp32, -inf where a sequence starts;
    states: (b, slots, n, d) fp32, slot 0 holds the initial state, chunk c reads slot c % slots and
    writes slot (c + 1) % slots."""
    block = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)  # batch * stride can pass 2**31
    d_offs = block * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d_offs < channels
    t_local = tl.arange(0, CHUNK)
    is_first = (t_local == 0)[None, :]
    is_last = (t_local == CHUNK - 1)[None, :]
    row_of_tile = tl.zeros((BLOCK_D, 1), dtype=tl.int32)  # broadcasts per-position vectors to tiles

    group = (block * BLOCK_D) // channels_per_group
    B_base = B_ptr + batch * stride_bc_b + group * stride_bc_g
    C_base = C_ptr + batch * stride_bc_b + group * stride_bc_g
    A_ptrs = A_ptr + d_offs * stride_A_d
    states_base = states_ptr + batch * stride_states_b + d_offs
    if HAS_D:
        skip = tl.load(D_ptr + d_offs, mask=d_mask, other=0.0)[:, None]
    delta_bias = 0.0
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + d_offs, mask=d_mask, other=0.0)[:, None]

    for chunk in range(tl.cdiv(length, CHUNK)):
        t_offs = chunk * CHUNK + t_local
        tile_mask = d_mask[:, None] & (t_offs < length)[None, :]
        u_ptrs = u_ptr + batch * stride_u_b + d_offs[:, None] * stride_u_d + t_offs[None, :]
        delta_ptrs = delta_ptr + batch * stride_delta_b + d_offs[:, None] * stride_delta_d + t_offs[None, :]
        delta, delta_u = _load_delta(u_ptrs, delta_ptrs, tile_mask, delta_bias, HAS_DELTA_BIAS, DELTA_SOFTPLUS)
        bc_offs = row_of_tile + t_offs[None, :]
        if HAS_SEQ_IDX:
            log_keep = tl.load(log_keep_ptr + batch * stride_keep_b + bc_offs)
        state_in = states_base + (chunk % num_state_slots) * stride_states_slot
        state_out = states_base + ((chunk + 1) % num_state_slots) * stride_states_slot

        y = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        A_next, B_next, C_next, h_start_next = _load_state_inputs(
            A_ptrs, B_base + bc_offs, C_base + bc_offs, state_in, 0, stride_A_n, stride_bc_n, stride_states_n, d_mask)
        for n in range(state_size):
            A_n, B_n, C_n, h_start = A_next, B_next, C_next, h_start_next
            A_next, B_next, C_next, h_start_next = _load_state_inputs(
                A_ptrs, B_base + bc_offs, C_base + bc_offs, state_in, tl.minimum(n + 1, state_size - 1),
                stride_A_n, stride_bc_n, stride_states_n, d_mask)
            log2_decay = delta * (A_n * LOG2E)[:, None]
            if HAS_SEQ_IDX:
                log2_decay += log_keep
            decay = tl.exp2(log2_decay)
            drive = delta_u * B_n
            drive = tl.where(is_first, drive + decay * h_start[:, None], drive)
            _, h = tl.associative_scan((decay, drive), axis=1, combine_fn=_linear_recurrence_combine)
            y += h * C_n
            h_end = tl.sum(tl.where(is_last, h, 0.0), axis=1)
            tl.store(state_out + n * stride_states_n, h_end, mask=d_mask)

        if HAS_D:
            y += skip * tl.load(u_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + batch * stride_z_b + d_offs[:, None] * stride_z_d + t_offs[None, :],
                        mask=tile_mask, other=0.0).to(tl.float32)
            y *= z * tl.sigmoid(z)
        tl.store(y_ptr + batch * stride_y_b + d_offs[:, None] * stride_y_d + t_offs[None, :],
                 y.to(y_ptr.dtype.element_ty), mask=tile_mask)
        tl.debug_barrier()  # the next chunk reads the states written above by other threads


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, log_keep_ptr, states_ptr, dy_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, ddelta_bias_ptr, adjoint_ptr,
    length, channels, state_size, channels_per_group,
    stride_u_b, stride_u_d, stride_delta_b, stride_delta_d, stride_z_b, stride_z_d, stride_dy_b, stride_dy_d,
    stride_du_b, stride_du_d, stride_ddelta_b, stride_ddelta_d, stride_dz_b, stride_dz_d,
    stride_A_d, stride_A_n, stride_bc_b, stride_bc_g, stride_bc_n, stride_keep_b,
    stride_states_b, stride_states_slot, stride_states_n, stride_adjoint_b, stride_adjoint_slot, stride_adjoint_n,
    stride_dA_b, stride_dA_d, stride_dD_b,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    HAS_SEQ_IDX: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, STATE_PAD: tl.constexpr,
):
    """Grid (cdiv(d, BLOCK_D), b). Inputs as in the forward kernel, with states holding every chunk's
    entering state (slot c for chunk c) and dy: (b, d, l). Writes du, ddelta, dz: (b, d, l);
    adds into dB, dC: (b, g, n, l_pad) fp32 (zeroed by the caller); writes per-batch partial sums
    dA: (b, d, n), dD and ddelta_bias: (b, d). adjoint: (b, 2, n, d) fp32, the gradient reaching the
    state between chunks; the caller puts the final state's gradient in slot num_chunks % 2 and finds
    the initial state's gradient in slot 0."""
    block = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)  # batch * stride can pass 2**31
    d_offs = block * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d_offs < channels
    t_local = tl.arange(0, CHUNK)
    is_first = (t_local == 0)[None, :]
    is_last = (t_local == CHUNK - 1)[None, :]
    row_of_tile = tl.zeros((BLOCK_D, 1), dtype=tl.int32)
    state_cols = tl.arange(0, STATE_PAD)[None, :]
    ones = tl.full((BLOCK_D, CHUNK), 1.0, dtype=tl.float32)

    group = (block * BLOCK_D) // channels_per_group
    B_base = B_ptr + batch * stride_bc_b + group * stride_bc_g
    C_base = C_ptr + batch * stride_bc_b + group * stride_bc_g
    dB_base = dB_ptr + batch * stride_bc_b + group * stride_bc_g
    dC_base = dC_ptr + batch * stride_bc_b + group * stride_bc_g
    A_ptrs = A_ptr + d_offs * stride_A_d
    states_base = states_ptr + batch * stride_states_b + d_offs
    adjoint_base = adjoint_ptr + batch * stride_adjoint_b + d_offs
    if HAS_D:
        skip = tl.load(D_ptr + d_offs, mask=d_mask, other=0.0)[:, None]
    delta_bias = 0.0
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + d_offs, mask=d_mask, other=0.0)[:, None]
    dA = tl.zeros((BLOCK_D, STATE_PAD), dtype=tl.float32)
    dD = tl.zeros((BLOCK_D,), dtype=tl.float32)
    ddelta_bias = tl.zeros((BLOCK_D,), dtype=tl.float32)

    num_chunks = tl.cdiv(length, CHUNK)
    for reversed_chunk in range(num_chunks):
        chunk = num_chunks - 1 - reversed_chunk
        t_offs = chunk * CHUNK + t_local
        tile_mask = d_mask[:, None] & (t_offs < length)[None, :]
        u_ptrs = u_ptr + batch * stride_u_b + d_offs[:, None] * stride_u_d + t_offs[None, :]
        delta_ptrs = delta_ptr + batch * stride_delta_b + d_offs[:, None] * stride_delta_d + t_offs[None, :]
        dy_ptrs = dy_ptr + batch * stride_dy_b + d_offs[:, None] * stride_dy_d + t_offs[None, :]
        z_ptrs = z_ptr + batch * stride_z_b + d_offs[:, None] * stride_z_d + t_offs[None, :]
        delta, delta_u = _load_delta(u_ptrs, delta_ptrs, tile_mask, delta_bias, HAS_DELTA_BIAS, DELTA_SOFTPLUS)
        dout = tl.load(dy_ptrs, mask=tile_mask, other=0.0).to(tl.float32)  # gradient of C h + D u
        if HAS_Z:
            z = tl.load(z_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
            dout *= z * tl.sigmoid(z)
            out = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)  # C h, for dz
        bc_offs = row_of_tile + t_offs[None, :]
        if HAS_SEQ_IDX:
            log_keep = tl.load(log_keep_ptr + batch * stride_keep_b + bc_offs)
        state_in = states_base + chunk * stride_states_slot
        adjoint_in = adjoint_base + ((chunk + 1) % 2) * stride_adjoint_slot
        adjoint_out = adjoint_base + (chunk % 2) * stride_adjoint_slot

        ddelta_u = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        ddelta_decay = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        A_next, B_next, C_next, h_start_next = _load_state_inputs(
            A_ptrs, B_base + bc_offs, C_base + bc_offs, state_in, 0, stride_A_n, stride_bc_n, stride_states_n, d_mask)
        next_adjoint_end = tl.load(adjoint_in, mask=d_mask, other=0.0)
        for n in range(state_size):
            A_n, B_n, C_n, h_start = A_next, B_next, C_next, h_start_next
            adjoint_end = next_adjoint_end
            n_next = tl.minimum(n + 1, state_size - 1)
            A_next, B_next, C_next, h_start_next = _load_state_inputs(
                A_ptrs, B_base + bc_offs, C_base + bc_offs, state_in, n_next,
                stride_A_n, stride_bc_n, stride_states_n, d_mask)
            next_adjoint_end = tl.load(adjoint_in + n_next * stride_adjoint_n, mask=d_mask, other=0.0,
                                       volatile=True)
            log2_decay = delta * (A_n * LOG2E)[:, None]
            if HAS_SEQ_IDX:
                log2_decay += log_keep
            decay = tl.exp2(log2_decay)
            drive = delta_u * B_n
            _, h = tl.associative_scan((decay, tl.where(is_first, drive + decay * h_start[:, None], drive)),
                                       axis=1, combine_fn=_linear_recurrence_combine)
            if HAS_Z:
                out += h * C_n
            dh_direct = dout * C_n
            dh_direct = tl.where(is_last, dh_direct + adjoint_end[:, None], dh_direct)
            _, _, g = tl.associative_scan((decay, ones, dh_direct), axis=1,
                                          combine_fn=_adjoint_recurrence_combine, reverse=True)
            g_delta_u = g * delta_u
            tl.atomic_add(dB_base + n * stride_bc_n + t_offs, tl.sum(g_delta_u, axis=0), sem="relaxed")
            tl.atomic_add(dC_base + n * stride_bc_n + t_offs, tl.sum(dout * h, axis=0), sem="relaxed")
            ddelta_u += g * B_n
            through_decay = g * h - g_delta_u * B_n  # g_t * exp(delta_t A) * h_{t-1}
            ddelta_decay += through_decay * A_n[:, None]
            dA_n = tl.sum(through_decay * delta, axis=1)
            dA = tl.where(state_cols == n, dA + dA_n[:, None], dA)
            adjoint_start = tl.sum(tl.where(is_first, decay * g, 0.0), axis=1)
            tl.store(adjoint_out + n * stride_adjoint_n, adjoint_start, mask=d_mask)

        # Inputs are loaded again rather than kept in registers through the state loop.
        u = tl.load(u_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
        delta_in = tl.load(delta_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            delta_in += delta_bias
        du = ddelta_u * delta
        ddelta = ddelta_u * u + ddelta_decay
        if DELTA_SOFTPLUS:
            ddelta *= tl.sigmoid(delta_in)
        ddelta = tl.where(tile_mask, ddelta, 0.0)
        if HAS_DELTA_BIAS:
            ddelta_bias += tl.sum(ddelta, axis=1)
        if HAS_D:
            dD += tl.sum(dout * u, axis=1)
            du += skip * dout
        tl.store(du_ptr + batch * stride_du_b + d_offs[:, None] * stride_du_d + t_offs[None, :],
                 du.to(du_ptr.dtype.element_ty), mask=tile_mask)
        tl.store(ddelta_ptr + batch * stride_ddelta_b + d_offs[:, None] * stride_ddelta_d + t_offs[None, :],
                 ddelta.to(ddelta_ptr.dtype.element_ty), mask=tile_mask)
        if HAS_Z:
            if HAS_D:
                out += skip * u
            dy = tl.load(dy_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
            z_sigmoid = tl.sigmoid(z)
            dz = dy * out * z_sigmoid * (1.0 + z * (1.0 - z_sigmoid))
            tl.store(dz_ptr + batch * stride_dz_b + d_offs[:, None] * stride_dz_d + t_offs[None, :],
                     dz.to(dz_ptr.dtype.element_ty), mask=tile_mask)
        tl.debug_barrier()  # the previous chunk reads the adjoints written above by other threads

    tl.store(dA_ptr + batch * stride_dA_b + d_offs[:, None] * stride_dA_d + state_cols, dA,
             mask=d_mask[:, None] & (state_cols < state_size))
    if HAS_D:
        tl.store(dD_ptr + batch * stride_dD_b + d_offs, dD, mask=d_mask)
    if HAS_DELTA_BIAS:
        tl.store(ddelta_bias_ptr + batch * stride_dD_b + d_offs, ddelta_bias, mask=d_mask)


def tile_config(channels: int, channels_per_group: int, chunk: int, num_warps: int) -> tuple[int, int, int]:
    """(BLOCK_D, CHUNK, num_warps) for both kernels: 8 elements of each (BLOCK_D, CHUNK) tile per thread,
    so that with one warp the scans and reductions stay inside the warp. A channel block never straddles
    two groups of B and C."""
    block_d = max(1, 32 * 8 * num_warps // chunk)
    if channels_per_group != channels:
        while channels_per_group % block_d:
            block_d //= 2
    return block_d, chunk, num_warps


def _unit_stride(t: torch.Tensor | None) -> torch.Tensor | None:
    """t with unit stride along its last axis (the kernels vectorise loads along l)."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def _padded_projection(P: torch.Tensor, padded_length: int) -> torch.Tensor:
    """B or C, (b, n, l) or (b, g, n, l), as a contiguous fp32 (b, g, n, padded_length), zero past l."""
    grouped = P.unsqueeze(1) if P.dim() == 3 else P
    padded = grouped.new_zeros(*grouped.shape[:-1], padded_length, dtype=torch.float32)
    padded[..., : grouped.shape[-1]] = grouped
    return padded


def chunked_forward(u, delta, A32, B, C, D32, z, bias32, log_keep_of, initial_state, delta_softplus: bool,
                    save_checkpoints: bool, config: tuple[int, int, int]):
    """Run the forward kernel. ``log_keep_of(padded_length)`` gives the (b, l_pad) log-keep or None.
    Returns y, the final state (b, d, n) fp32 (a view) and the tensors ``chunked_backward`` needs."""
    batch, channels, length = u.shape
    state_size = A32.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    block_d, chunk, num_warps = config
    num_chunks = triton.cdiv(length, chunk)
    padded_length = num_chunks * chunk
    u, delta, z = _unit_stride(u), _unit_stride(delta), _unit_stride(z)
    B32, C32 = _padded_projection(B, padded_length), _padded_projection(C, padded_length)
    log_keep = log_keep_of(padded_length)
    num_slots = num_chunks + 1 if save_checkpoints else 2
    states = u.new_empty(batch, num_slots, state_size, channels, dtype=torch.float32)
    if initial_state is None:
        states[:, 0].zero_()
    else:
        states[:, 0] = initial_state.transpose(1, 2)
    y = torch.empty_like(u)
    placeholder = A32  # passed for absent optional inputs; the kernel never reads it
    grid = (triton.cdiv(channels, block_d), batch)
    _selective_scan_fwd_kernel[grid](
        u, delta, A32, B32, C32, placeholder if D32 is None else D32, u if z is None else z,
        placeholder if bias32 is None else bias32, placeholder if log_keep is None else log_keep, y, states,
        length, channels, state_size, channels // groups, num_slots,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1),
        *((0, 0) if z is None else (z.stride(0), z.stride(1))), y.stride(0), y.stride(1),
        A32.stride(0), A32.stride(1), B32.stride(0), B32.stride(1), B32.stride(2),
        0 if log_keep is None else log_keep.stride(0),
        states.stride(0), states.stride(1), states.stride(2),
        HAS_D=D32 is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=bias32 is not None,
        DELTA_SOFTPLUS=delta_softplus, HAS_SEQ_IDX=log_keep is not None,
        BLOCK_D=block_d, CHUNK=chunk, num_warps=num_warps,
    )
    final_state = states[:, num_chunks % num_slots].transpose(1, 2)
    return y, final_state, (u, delta, z, B32, C32, log_keep, states)


def chunked_backward(saved, A32, D32, bias32, dy, dfinal_state, delta_softplus: bool, config: tuple[int, int, int]):
    """Run the backward kernel on ``chunked_forward``'s saved tensors. Returns du, ddelta, dz (like u, delta,
    z) and fp32 dA (d, n), dB, dC (b, g, n, l), dD, ddelta_bias (d,), initial-state gradient (b, n, d)."""
    u, delta, z, B32, C32, log_keep, states = saved
    batch, channels, length = u.shape
    state_size = A32.shape[1]
    groups = B32.shape[1]
    block_d, chunk, num_warps = config
    num_chunks = triton.cdiv(length, chunk)
    dy = _unit_stride(dy)
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dz = None if z is None else torch.empty_like(z)
    dB32 = torch.zeros_like(B32)
    dC32 = torch.zeros_like(C32)
    dA_per_batch = u.new_empty(batch, channels, state_size, dtype=torch.float32)
    dD_per_batch = u.new_empty(batch, channels, dtype=torch.float32)
    dbias_per_batch = torch.empty_like(dD_per_batch)
    adjoint = u.new_empty(batch, 2, state_size, channels, dtype=torch.float32)
    if dfinal_state is None:
        adjoint[:, num_chunks % 2].zero_()
    else:
        adjoint[:, num_chunks % 2] = dfinal_state.transpose(1, 2)
    placeholder = A32
    grid = (triton.cdiv(channels, block_d), batch)
    _selective_scan_bwd_kernel[grid](
        u, delta, A32, B32, C32, placeholder if D32 is None else D32, u if z is None else z,
        placeholder if bias32 is None else bias32, placeholder if log_keep is None else log_keep, states, dy,
        du, ddelta, du if dz is None else dz, dA_per_batch, dB32, dC32, dD_per_batch, dbias_per_batch, adjoint,
        length, channels, state_size, channels // groups,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1),
        *((0, 0) if z is None else (z.stride(0), z.stride(1))), dy.stride(0), dy.stride(1),
        du.stride(0), du.stride(1), ddelta.stride(0), ddelta.stride(1),
        *((0, 0) if dz is None else (dz.stride(0), dz.stride(1))),
        A32.stride(0), A32.stride(1), B32.stride(0), B32.stride(1), B32.stride(2),
        0 if log_keep is None else log_keep.stride(0),
        states.stride(0), states.stride(1), states.stride(2),
        adjoint.stride(0), adjoint.stride(1), adjoint.stride(2),
        dA_per_batch.stride(0), dA_per_batch.stride(1), dD_per_batch.stride(0),
        HAS_D=D32 is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=bias32 is not None,
        DELTA_SOFTPLUS=delta_softplus, HAS_SEQ_IDX=log_keep is not None,
        BLOCK_D=block_d, CHUNK=chunk, STATE_PAD=triton.next_power_of_2(state_size), num_warps=num_warps,
    )
    return (du, ddelta, dz, dA_per_batch.sum(0), dB32[..., :length], dC32[..., :length], dD_per_batch.sum(0),
            dbias_per_batch.sum(0), adjoint[:, 0])
