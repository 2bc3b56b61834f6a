"""Segmented forward of the Mamba-1 selective scan: every thread runs the recurrence of one channel.

Layout. A program owns BLOCK_D channels of one batch row and one *segment* of SEGMENT time steps. Its
state is an (N_PAD, BLOCK_D) fp32 tile in Triton's default layout: channels across the lanes (and warps),
the states of a channel in the registers of its thread (with BLOCK_D < 32 the states of a channel spread
over 32 / BLOCK_D lanes). A step ``h = exp2(delta A log2e) h + delta u B`` is then one exp and three FMAs per
register, and ``y = sum_n C h`` an in-thread sum: no scans, shuffles or shared memory. Inputs are read in
(STEPS, BLOCK_D) tiles, one per STEPS steps (STEPS * element size = 16 bytes: one vector load per thread
when l is the unit-stride axis); the steps of a tile are unrolled, so picking a tile's row is a register
copy. B and C rows come from a padded fp32 copy laid out (b, g, l, N_PAD): one broadcast 16-byte load per
four states. Tensors whose d axis is the unit-stride one (the transposed (b, l, d) views of the model) are
read in place with one element per thread per step, coalesced across the warp (see ``program_geometry``).

Parallel segments. The sequence is split into segments so that batch * channel blocks * segments fills
the GPU. ``_segment_summary_kernel`` walks every segment but the last from a zero state and stores its
end state and its total decay exp(A * sum delta) (b, segments, 2, N_PAD, d); ``_segment_carry_kernel``
runs the initial state through these summaries, giving the state entering every segment;
``_segment_output_kernel`` walks each segment again from its entering state, writing y, and stores the
state entering every checkpoint_steps-th step (and the final state) for the backward. Padded positions
past l have delta = 0 and B = 0 (identity steps). ``seq_idx`` resets enter as a per-position log2-decay
of -inf (decay 0).
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))


@triton.jit
def step_tile(ptr, cols, stride_l, t0, length, d_mask, STEPS: tl.constexpr):
    """(STEPS, BLOCK_D) tile of a (d, l) tensor in its dtype: rows are steps t0.., columns the channels
    whose element offsets are ``cols`` (int64); 0 past ``length`` and outside ``d_mask``."""
    rows = tl.arange(0, STEPS)
    mask = (t0 + rows < length)[:, None] & d_mask[None, :]
    row_ptr = ptr + tl.cast(t0, tl.int64) * stride_l
    return tl.load(row_ptr + rows[:, None] * stride_l + cols[None, :], mask=mask, other=0.0)


@triton.jit
def advance(prefetched, ptr, cols, stride_l, t0, length, d_mask, PREFETCH: tl.constexpr, STEPS: tl.constexpr):
    """(tile at t0, what to carry to the next step of a loop over tiles). With PREFETCH the tile at t0 was
    loaded one iteration earlier and the one at t0 + STEPS is loaded now, so that its latency hides behind
    a tile of work (for more registers); otherwise the tile is loaded when needed."""
    if PREFETCH:
        current = prefetched
        prefetched = step_tile(ptr, cols, stride_l, t0 + STEPS, length, d_mask, STEPS)
    else:
        current = step_tile(ptr, cols, stride_l, t0, length, d_mask, STEPS)
    return current, prefetched


@triton.jit
def first_tile(ptr, cols, stride_l, t0, length, d_mask, PREFETCH: tl.constexpr, STEPS: tl.constexpr):
    """What ``advance`` carries into the first iteration (zeros, which it passes on unused, without PREFETCH)."""
    tile = tl.zeros((STEPS, cols.shape[0]), dtype=ptr.dtype.element_ty)
    if PREFETCH:
        tile = step_tile(ptr, cols, stride_l, t0, length, d_mask, STEPS)
    return tile


@triton.jit
def store_step_tile(ptr, cols, stride_l, t0, length, d_mask, tile, STEPS: tl.constexpr):
    """Write a (STEPS, BLOCK_D) tile laid out as ``step_tile`` reads it, in ptr's dtype."""
    rows = tl.arange(0, STEPS)
    mask = (t0 + rows < length)[:, None] & d_mask[None, :]
    row_ptr = ptr + tl.cast(t0, tl.int64) * stride_l
    tl.store(row_ptr + rows[:, None] * stride_l + cols[None, :], tile.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def delta_tile(raw, t0, length, d_mask, delta_bias,
               HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr, STEPS: tl.constexpr):
    """(STEPS, BLOCK_D) fp32 step sizes from a ``step_tile`` of delta: after bias and softplus, 0 at padded
    positions (identity steps)."""
    delta = raw.to(tl.float32)
    if HAS_DELTA_BIAS:
        delta += delta_bias[None, :]
    if DELTA_SOFTPLUS:
        delta = softplus(delta)
    valid = (t0 + tl.arange(0, STEPS) < length)[:, None] & d_mask[None, :]
    return tl.where(valid, delta, 0.0)


@triton.jit
def state_tile(ptr, stride_n, cols, state_rows, state_mask):
    """(N_PAD, BLOCK_D) fp32 state read through its n stride and column offsets, 0 where masked."""
    return tl.load(ptr + state_rows * stride_n + cols[None, :], mask=state_mask, other=0.0).to(tl.float32)


@triton.jit
def program_geometry(channels, state_size, channels_per_group, zero, BLOCK_D: tl.constexpr, N_PAD: tl.constexpr):
    """Channels of this program (d_offs, d_mask), their int64 index for addressing (b, d, l) tensors, the
    state rows / mask and the group of B and C.

    The index is d_offs plus a runtime 0 (``zero``, never specialised): Triton's contiguity analysis then
    still sees consecutive channels (so a tensor whose d axis has unit stride is read with the lanes along
    d, coalesced) but no alignment, so it does not vectorise along d, which would move the steps of a
    channel out of its thread."""
    block = tl.program_id(0)
    d_offs = block * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d_offs < channels
    d_index = (d_offs + zero).to(tl.int64)
    state_rows = tl.arange(0, N_PAD)[:, None]
    state_mask = (state_rows < state_size) & d_mask[None, :]
    group = (block * BLOCK_D) // channels_per_group
    return d_offs, d_mask, d_index, state_rows, state_mask, group


@triton.jit(do_not_specialize=["zero"])  # a runtime 0: see program_geometry
def _segment_summary_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, delta_bias_ptr, log_keep_ptr, summary_ptr,
    length, channels, state_size, channels_per_group, segment_steps, zero,
    stride_u_b, stride_u_d, stride_u_l, stride_delta_b, stride_delta_d, stride_delta_l,
    stride_A_d, stride_A_n, stride_bc_b, stride_bc_g, stride_keep_b,
    stride_summary_b, stride_summary_seg, stride_summary_part,
    HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr, HAS_SEQ_IDX: tl.constexpr,
    BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, STEPS: tl.constexpr, PREFETCH: tl.constexpr,
):
    """Grid (cdiv(d, BLOCK_D), segments - 1, b). u, delta: (b, d, l) any strides; A: (d, n);
    B: (b, g, l_pad, N_PAD) fp32 contiguous; log_keep: (b, l_pad); summary: (b, segments, 2, N_PAD, d) fp32.
    Writes, for segment s, the total decay exp(A sum delta) (part 0) and the end state from a zero start
    (part 1)."""
    d_offs, d_mask, d_index, state_rows, state_mask, group = program_geometry(
        channels, state_size, channels_per_group, zero, BLOCK_D, N_PAD)
    segment = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    A2 = tl.load(A_ptr + d_offs[None, :] * stride_A_d + state_rows * stride_A_n, mask=state_mask, other=0.0) * LOG2E
    u_base, u_cols = u_ptr + batch * stride_u_b, d_index * stride_u_d
    delta_base, delta_cols = delta_ptr + batch * stride_delta_b, d_index * stride_delta_d
    B_base = B_ptr + batch * stride_bc_b + group * stride_bc_g
    keep_base = log_keep_ptr + batch * stride_keep_b
    delta_bias = 0.0
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + d_offs, mask=d_mask, other=0.0)
    states = tl.arange(0, N_PAD)

    h = tl.zeros((N_PAD, BLOCK_D), dtype=tl.float32)
    delta_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    keep_sum = 0.0
    first = segment * segment_steps
    delta_next = first_tile(delta_base, delta_cols, stride_delta_l, first, length, d_mask, PREFETCH, STEPS)
    u_next = first_tile(u_base, u_cols, stride_u_l, first, length, d_mask, PREFETCH, STEPS)
    for t0 in range(first, first + segment_steps, STEPS):
        delta_raw, delta_next = advance(delta_next, delta_base, delta_cols, stride_delta_l, t0, length, d_mask,
                                        PREFETCH, STEPS)
        u_raw, u_next = advance(u_next, u_base, u_cols, stride_u_l, t0, length, d_mask, PREFETCH, STEPS)
        delta = delta_tile(delta_raw, t0, length, d_mask, delta_bias, HAS_DELTA_BIAS, DELTA_SOFTPLUS, STEPS)
        delta_u = delta * u_raw.to(tl.float32)
        delta_sum += tl.sum(delta, axis=0)
        for j in tl.static_range(STEPS):
            row = (tl.arange(0, STEPS) == j)[:, None]  # rows of a tile live in each thread: picks are copies
            log2_decay = tl.sum(tl.where(row, delta, 0.0), axis=0)[None, :] * A2
            if HAS_SEQ_IDX:
                keep = tl.load(keep_base + t0 + j)
                keep_sum += keep
                log2_decay += keep
            B_j = tl.load(B_base + (t0 + j) * N_PAD + states)
            h = tl.exp2(log2_decay) * h + tl.sum(tl.where(row, delta_u, 0.0), axis=0)[None, :] * B_j[:, None]

    out = summary_ptr + batch * stride_summary_b + segment * stride_summary_seg
    out += state_rows * channels + d_offs[None, :]
    tl.store(out, tl.exp2(A2 * delta_sum[None, :] + keep_sum), mask=state_mask)
    tl.store(out + stride_summary_part, h, mask=state_mask)


@triton.jit
def _segment_carry_kernel(
    summary_ptr, start_ptr, carried_ptr, last_ptr, channels, state_size, num_segments, chained_segments,
    stride_summary_b, stride_summary_seg, stride_summary_part, stride_start_b, stride_start_d, stride_start_n,
    stride_carried_b, stride_carried_seg,
    HAS_START: tl.constexpr, REVERSE: tl.constexpr, STORE_LAST: tl.constexpr, N_PAD: tl.constexpr,
    BLOCK: tl.constexpr, UNROLL: tl.constexpr,
):
    """Grid (cdiv(N_PAD * d, BLOCK), b). summary: (b, segments, 2, N_PAD, d) fp32, each segment's (decay,
    term); start: (b, d, n) any strides (zero without HAS_START); carried: (b, segments, N_PAD, d) fp32.
    Forwards: carried[0] = start, carried[s + 1] = decay_s carried[s] + term_s (the state entering each
    segment). REVERSE: carried[S - 1] = start, carried[s - 1] = decay_s carried[s] + term_s (the adjoint
    reaching the end of each segment). Only the first ``chained_segments`` summaries in that order are
    read; with STORE_LAST the value after them goes to last (b, N_PAD, d) fp32. UNROLL segments are loaded
    at once, then chained in registers."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat (n, d) index
    batch = tl.program_id(1).to(tl.int64)
    state, channel = offs // channels, offs % channels
    mask = (offs < N_PAD * channels) & (state < state_size)
    carried = tl.zeros((BLOCK,), dtype=tl.float32)
    if HAS_START:
        carried = tl.load(start_ptr + batch * stride_start_b + channel * stride_start_d + state * stride_start_n,
                          mask=mask, other=0.0).to(tl.float32)
    summary = summary_ptr + batch * stride_summary_b + offs[None, :]
    out = carried_ptr + batch * stride_carried_b + offs[None, :]
    for first in range(0, num_segments, UNROLL):
        step = first + tl.arange(0, UNROLL)
        segment = (num_segments - 1 - step) if REVERSE else step
        valid = (step < num_segments)[:, None] & mask[None, :]
        chained = (step < chained_segments)[:, None] & mask[None, :]
        decay = tl.load(summary + segment[:, None] * stride_summary_seg, mask=chained, other=1.0)
        term = tl.load(summary + segment[:, None] * stride_summary_seg + stride_summary_part, mask=chained, other=0.0)
        values = tl.zeros((UNROLL, BLOCK), dtype=tl.float32)
        for j in tl.static_range(UNROLL):
            row = (tl.arange(0, UNROLL) == j)[:, None]  # rows live in each thread: picks are copies
            values = tl.where(row, carried[None, :], values)
            carried = tl.sum(tl.where(row, decay, 0.0), axis=0) * carried + tl.sum(tl.where(row, term, 0.0), axis=0)
        tl.store(out + segment[:, None] * stride_carried_seg, values, mask=valid)
    if STORE_LAST:
        tl.store(last_ptr + batch * N_PAD * channels + offs, carried, mask=mask)


@triton.jit(do_not_specialize=["zero"])  # a runtime 0: see program_geometry
def _segment_output_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, log_keep_ptr, entering_ptr,
    y_ptr, states_ptr,
    length, channels, state_size, channels_per_group, segment_steps, checkpoint_steps, final_slot, zero,
    stride_u_b, stride_u_d, stride_u_l, stride_delta_b, stride_delta_d, stride_delta_l,
    stride_z_b, stride_z_d, stride_z_l, stride_y_b, stride_y_d, stride_y_l,
    stride_A_d, stride_A_n, stride_bc_b, stride_bc_g, stride_keep_b,
    stride_entering_b, stride_entering_seg, stride_entering_d, stride_entering_n,
    stride_states_b, stride_states_slot, stride_states_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    HAS_SEQ_IDX: tl.constexpr, HAS_ENTERING_STATE: tl.constexpr, SAVE_CHECKPOINTS: tl.constexpr,
    SAVE_FINAL: tl.constexpr, BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, STEPS: tl.constexpr,
    PREFETCH: tl.constexpr,
):
    """Grid (cdiv(d, BLOCK_D), segments, b). Inputs as in ``_segment_summary_kernel``, plus C like B, z and y:
    (b, d, l) any strides, entering: (b, segments, d, n) through strides, the state entering each segment
    (zero without HAS_ENTERING_STATE). states: (b, slots, n, d) fp32; with SAVE_CHECKPOINTS slot c receives
    the state entering step c * checkpoint_steps; with SAVE_FINAL slot ``final_slot`` the final state."""
    d_offs, d_mask, d_index, state_rows, state_mask, group = program_geometry(
        channels, state_size, channels_per_group, zero, BLOCK_D, N_PAD)
    segment = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    A2 = tl.load(A_ptr + d_offs[None, :] * stride_A_d + state_rows * stride_A_n, mask=state_mask, other=0.0) * LOG2E
    u_base, u_cols = u_ptr + batch * stride_u_b, d_index * stride_u_d
    delta_base, delta_cols = delta_ptr + batch * stride_delta_b, d_index * stride_delta_d
    z_base, z_cols = z_ptr + batch * stride_z_b, d_index * stride_z_d
    y_base, y_cols = y_ptr + batch * stride_y_b, d_index * stride_y_d
    B_base = B_ptr + batch * stride_bc_b + group * stride_bc_g
    C_base = C_ptr + batch * stride_bc_b + group * stride_bc_g
    keep_base = log_keep_ptr + batch * stride_keep_b
    states_base = states_ptr + batch * stride_states_b
    delta_bias = 0.0
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + d_offs, mask=d_mask, other=0.0)
    if HAS_D:
        skip = tl.load(D_ptr + d_offs, mask=d_mask, other=0.0)[None, :]
    states = tl.arange(0, N_PAD)

    h = tl.zeros((N_PAD, BLOCK_D), dtype=tl.float32)
    if HAS_ENTERING_STATE:
        entering = entering_ptr + batch * stride_entering_b + tl.cast(segment, tl.int64) * stride_entering_seg
        h = state_tile(entering, stride_entering_n, d_index * stride_entering_d, state_rows, state_mask)

    first = segment * segment_steps
    delta_next = first_tile(delta_base, delta_cols, stride_delta_l, first, length, d_mask, PREFETCH, STEPS)
    u_next = first_tile(u_base, u_cols, stride_u_l, first, length, d_mask, PREFETCH, STEPS)
    if HAS_Z:
        z_next = first_tile(z_base, z_cols, stride_z_l, first, length, d_mask, PREFETCH, STEPS)
    for t0 in range(first, tl.minimum(first + segment_steps, length), STEPS):
        delta_raw, delta_next = advance(delta_next, delta_base, delta_cols, stride_delta_l, t0, length, d_mask,
                                        PREFETCH, STEPS)
        u_raw, u_next = advance(u_next, u_base, u_cols, stride_u_l, t0, length, d_mask, PREFETCH, STEPS)
        if HAS_Z:
            if PREFETCH:  # (without it, z is loaded after the steps, where it is used)
                z_raw, z_next = advance(z_next, z_base, z_cols, stride_z_l, t0, length, d_mask, PREFETCH, STEPS)
        if SAVE_CHECKPOINTS:
            if t0 % checkpoint_steps == 0:
                slot = tl.cast(t0 // checkpoint_steps, tl.int64)
                tl.store(states_base + slot * stride_states_slot + state_rows * stride_states_n + d_offs[None, :], h,
                         mask=state_mask)
        delta = delta_tile(delta_raw, t0, length, d_mask, delta_bias, HAS_DELTA_BIAS, DELTA_SOFTPLUS, STEPS)
        u = u_raw.to(tl.float32)
        delta_u = delta * u
        y = tl.zeros((STEPS, BLOCK_D), dtype=tl.float32)
        for j in tl.static_range(STEPS):
            row = (tl.arange(0, STEPS) == j)[:, None]  # rows of a tile live in each thread: picks are copies
            log2_decay = tl.sum(tl.where(row, delta, 0.0), axis=0)[None, :] * A2
            if HAS_SEQ_IDX:
                log2_decay += tl.load(keep_base + t0 + j)
            B_j = tl.load(B_base + (t0 + j) * N_PAD + states)
            C_j = tl.load(C_base + (t0 + j) * N_PAD + states)
            h = tl.exp2(log2_decay) * h + tl.sum(tl.where(row, delta_u, 0.0), axis=0)[None, :] * B_j[:, None]
            y = tl.where(row, tl.sum(C_j[:, None] * h, axis=0)[None, :], y)
        if HAS_D:
            y += skip * u
        if HAS_Z:
            if not PREFETCH:
                z_raw = step_tile(z_base, z_cols, stride_z_l, t0, length, d_mask, STEPS)
            z = z_raw.to(tl.float32)
            y *= z * tl.sigmoid(z)
        store_step_tile(y_base, y_cols, stride_y_l, t0, length, d_mask, y, STEPS)

    if SAVE_FINAL:
        if first + segment_steps >= length:
            slot = tl.cast(final_slot, tl.int64)
            tl.store(states_base + slot * stride_states_slot + state_rows * stride_states_n + d_offs[None, :], h,
                     mask=state_mask)
