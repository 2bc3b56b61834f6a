"""Segmented backward of the Mamba-1 selective scan, in the per-thread layout of the segmented forward.

The forward saved the state entering every segment of SEGMENT steps (its checkpoints). With g_t the
gradient reaching h_t (the adjoint), g_t = dout_t C_t + a_{t+1} g_{t+1} with a_t = exp(delta_t A) and
dout = dy * silu(z); every input gradient is a sum of g_t, h_t and the step's inputs:
dC_t = sum_d dout_t h_t, dB_t = sum_d g_t delta_t u_t (both over the program's channels, then added
atomically), d(delta u)_t = sum_n g_t B_t, and g_t a_t h_{t-1} = g_t (h_t - delta_t u_t B_t), which
gives dA (summed over t) and the decay's share of ddelta (summed over n).

Two kernels, one program per (channel block, segment, batch row):
- ``_adjoint_summary_kernel`` walks its segment forwards from the checkpoint: it recomputes h and stores
  the state entering every SUB-step sub-tile in a scratch buffer (b, l_pad / SUB, N_PAD, d), and it sums
  the segment's own adjoint reaching the state before the segment, G = sum_t (prod_{k<=t} a_k) dout_t C_t,
  together with the segment's total decay P = prod_t a_t (b, segments, 2, N_PAD, d).
- ``_segment_carry_kernel`` (selective_scan_forward.py) runs the final state's gradient back through the
  segments' (P, G): the adjoint reaching the end of every segment.
- ``_segment_backward_kernel`` starts from the adjoint at the end of its segment and walks the sub-tiles
  backwards: it
  recomputes the sub-tile's h from the scratch into a (SUB, N_PAD, BLOCK_D) register tile and runs the
  adjoint recurrence back over the sub-tile, forming every gradient. The adjoint leaving segment 0 is the
  initial state's gradient. dA, dD and ddelta_bias are summed per program and added atomically.
"""
from __future__ import annotations

import triton
import triton.language as tl

from mambakit.ops.kernels.selective_scan_forward import (
    LOG2E, advance, delta_tile, first_tile, program_geometry, state_tile, step_tile, store_step_tile,
)

LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def partial_sums(values, PARTIALS: tl.constexpr):
    """(N_PAD, BLOCK_D) -> (N_PAD, PARTIALS): sums over BLOCK_D / PARTIALS consecutive channels. With the
    channels across the lanes, fewer lanes to reduce over means fewer shuffles (and PARTIALS atomic adds)."""
    n_pad: tl.constexpr = values.shape[0]
    block_d: tl.constexpr = values.shape[1]
    return tl.sum(tl.reshape(values, (n_pad, PARTIALS, block_d // PARTIALS)), axis=2)


@triton.jit
def output_grad_tile(dy_raw, z_raw, HAS_Z: tl.constexpr):
    """(dy, z, dout) fp32 tiles from ``step_tile``s of dy and z: dout = dy * silu(z), the gradient of
    C h + D u (z is dy's tile without HAS_Z)."""
    dy = dy_raw.to(tl.float32)
    z = dy
    dout = dy
    if HAS_Z:
        z = z_raw.to(tl.float32)
        dout = dy * z * tl.sigmoid(z)
    return dy, z, dout


@triton.jit(do_not_specialize=["zero"])  # a runtime 0: see program_geometry
def _adjoint_summary_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, z_ptr, delta_bias_ptr, log_keep_ptr, dy_ptr, states_ptr,
    summary_ptr, scratch_ptr,
    length, channels, state_size, channels_per_group, segment_steps, first_segment, zero,
    stride_u_b, stride_u_d, stride_u_l, stride_delta_b, stride_delta_d, stride_delta_l,
    stride_z_b, stride_z_d, stride_z_l, stride_dy_b, stride_dy_d, stride_dy_l,
    stride_A_d, stride_A_n, stride_bc_b, stride_bc_g, stride_keep_b,
    stride_states_b, stride_states_slot, stride_states_n, stride_summary_b, stride_summary_seg, stride_summary_part,
    stride_scratch_b, stride_scratch_sub,
    HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr, HAS_SEQ_IDX: tl.constexpr,
    BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, STEPS: tl.constexpr, SUB: tl.constexpr, PREFETCH: tl.constexpr,
):
    """Grid (cdiv(d, BLOCK_D), group segments, b): segments first_segment + i of a group of them.
    u, delta, z, dy: (b, d, l) any strides; A: (d, n); B, C: (b, g, l_pad, N_PAD) fp32; log_keep:
    (b, l_pad); states: (b, slots, n, d) fp32 checkpoints (slot s enters segment s); summary:
    (b, group segments, 2, N_PAD, d) fp32 receives P (part 0) and G (part 1); scratch:
    (b, group steps / SUB, N_PAD, d) fp32 receives the state entering every sub-tile of the group."""
    d_offs, d_mask, d_index, state_rows, state_mask, group = program_geometry(
        channels, state_size, channels_per_group, zero, BLOCK_D, N_PAD)
    segment = first_segment + tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    A2 = tl.load(A_ptr + d_offs[None, :] * stride_A_d + state_rows * stride_A_n, mask=state_mask, other=0.0) * LOG2E
    u_base, u_cols = u_ptr + batch * stride_u_b, d_index * stride_u_d
    delta_base, delta_cols = delta_ptr + batch * stride_delta_b, d_index * stride_delta_d
    z_base, z_cols = z_ptr + batch * stride_z_b, d_index * stride_z_d
    dy_base, dy_cols = dy_ptr + batch * stride_dy_b, d_index * stride_dy_d
    B_base = B_ptr + batch * stride_bc_b + group * stride_bc_g
    C_base = C_ptr + batch * stride_bc_b + group * stride_bc_g
    keep_base = log_keep_ptr + batch * stride_keep_b
    scratch = scratch_ptr + batch * stride_scratch_b + state_rows * channels + d_offs[None, :]
    delta_bias = 0.0
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + d_offs, mask=d_mask, other=0.0)
    states = tl.arange(0, N_PAD)

    checkpoint = states_ptr + batch * stride_states_b + tl.cast(segment, tl.int64) * stride_states_slot
    h = state_tile(checkpoint, stride_states_n, d_offs, state_rows, state_mask)
    decay_product = tl.full((N_PAD, BLOCK_D), 1.0, dtype=tl.float32)
    adjoint = tl.zeros((N_PAD, BLOCK_D), dtype=tl.float32)
    first = segment * segment_steps
    group_start = first_segment * segment_steps
    delta_next = first_tile(delta_base, delta_cols, stride_delta_l, first, length, d_mask, PREFETCH, STEPS)
    u_next = first_tile(u_base, u_cols, stride_u_l, first, length, d_mask, PREFETCH, STEPS)
    dy_next = first_tile(dy_base, dy_cols, stride_dy_l, first, length, d_mask, PREFETCH, STEPS)
    if HAS_Z:
        z_next = first_tile(z_base, z_cols, stride_z_l, first, length, d_mask, PREFETCH, STEPS)
    for t0 in range(first, tl.minimum(first + segment_steps, length), STEPS):
        delta_raw, delta_next = advance(delta_next, delta_base, delta_cols, stride_delta_l, t0, length, d_mask,
                                        PREFETCH, STEPS)
        u_raw, u_next = advance(u_next, u_base, u_cols, stride_u_l, t0, length, d_mask, PREFETCH, STEPS)
        dy_raw, dy_next = advance(dy_next, dy_base, dy_cols, stride_dy_l, t0, length, d_mask, PREFETCH, STEPS)
        z_raw = dy_raw
        if HAS_Z:
            z_raw, z_next = advance(z_next, z_base, z_cols, stride_z_l, t0, length, d_mask, PREFETCH, STEPS)
        if t0 % SUB == 0:
            tl.store(scratch + tl.cast((t0 - group_start) // SUB, tl.int64) * stride_scratch_sub, h, mask=state_mask)
        delta = delta_tile(delta_raw, t0, length, d_mask, delta_bias, HAS_DELTA_BIAS, DELTA_SOFTPLUS, STEPS)
        delta_u = delta * u_raw.to(tl.float32)
        _, _, dout = output_grad_tile(dy_raw, z_raw, HAS_Z)
        for j in tl.static_range(STEPS):
            row = (tl.arange(0, STEPS) == j)[:, None]  # rows of a tile live in each thread: picks are copies
            log2_decay = tl.sum(tl.where(row, delta, 0.0), axis=0)[None, :] * A2
            if HAS_SEQ_IDX:
                log2_decay += tl.load(keep_base + t0 + j)
            decay = tl.exp2(log2_decay)
            B_j = tl.load(B_base + (t0 + j) * N_PAD + states)
            C_j = tl.load(C_base + (t0 + j) * N_PAD + states)
            h = decay * h + tl.sum(tl.where(row, delta_u, 0.0), axis=0)[None, :] * B_j[:, None]
            decay_product *= decay
            adjoint += decay_product * (tl.sum(tl.where(row, dout, 0.0), axis=0)[None, :] * C_j[:, None])

    out = summary_ptr + batch * stride_summary_b + tl.program_id(1) * stride_summary_seg
    out += state_rows * channels + d_offs[None, :]
    tl.store(out, decay_product, mask=state_mask)
    tl.store(out + stride_summary_part, adjoint, mask=state_mask)


@triton.jit(do_not_specialize=["zero"])  # a runtime 0: see program_geometry
def _segment_backward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, log_keep_ptr, dy_ptr, end_adjoint_ptr,
    scratch_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, ddelta_bias_ptr, initial_grad_ptr,
    length, channels, state_size, channels_per_group, segment_steps, first_segment, zero,
    stride_u_b, stride_u_d, stride_u_l, stride_delta_b, stride_delta_d, stride_delta_l,
    stride_z_b, stride_z_d, stride_z_l, stride_dy_b, stride_dy_d, stride_dy_l,
    stride_du_b, stride_du_d, stride_du_l, stride_ddelta_b, stride_ddelta_d, stride_ddelta_l,
    stride_dz_b, stride_dz_d, stride_dz_l,
    stride_A_d, stride_A_n, stride_bc_b, stride_bc_g, stride_keep_b,
    stride_end_b, stride_end_seg, stride_end_d, stride_end_n, stride_scratch_b, stride_scratch_sub,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    HAS_SEQ_IDX: tl.constexpr, HAS_END_ADJOINT: tl.constexpr, HAS_INITIAL_STATE: tl.constexpr,
    BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, STEPS: tl.constexpr, SUB: tl.constexpr, PARTIALS: tl.constexpr,
):
    """Grid (cdiv(d, BLOCK_D), group segments, b). Inputs as in ``_adjoint_summary_kernel`` (whose scratch it
    reads), plus D (d,), end_adjoint: (b, group segments, d, n) through strides, the gradient reaching the
    state at the end of each segment (zero without HAS_END_ADJOINT). Writes du, ddelta, dz: (b, d, l) any
    strides; adds into dA (n, d), dD, ddelta_bias (d,) and dB, dC (b, g, l_pad, N_PAD), all fp32 and
    zeroed by the caller; writes the initial state's gradient (b, N_PAD, d) fp32."""
    d_offs, d_mask, d_index, state_rows, state_mask, group = program_geometry(
        channels, state_size, channels_per_group, zero, BLOCK_D, N_PAD)
    segment = first_segment + tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    A2 = tl.load(A_ptr + d_offs[None, :] * stride_A_d + state_rows * stride_A_n, mask=state_mask, other=0.0) * LOG2E
    u_base, u_cols = u_ptr + batch * stride_u_b, d_index * stride_u_d
    delta_base, delta_cols = delta_ptr + batch * stride_delta_b, d_index * stride_delta_d
    z_base, z_cols = z_ptr + batch * stride_z_b, d_index * stride_z_d
    dy_base, dy_cols = dy_ptr + batch * stride_dy_b, d_index * stride_dy_d
    du_base, du_cols = du_ptr + batch * stride_du_b, d_index * stride_du_d
    ddelta_base, ddelta_cols = ddelta_ptr + batch * stride_ddelta_b, d_index * stride_ddelta_d
    dz_base, dz_cols = dz_ptr + batch * stride_dz_b, d_index * stride_dz_d
    B_base = B_ptr + batch * stride_bc_b + group * stride_bc_g
    C_base = C_ptr + batch * stride_bc_b + group * stride_bc_g
    dB_base = dB_ptr + batch * stride_bc_b + group * stride_bc_g
    dC_base = dC_ptr + batch * stride_bc_b + group * stride_bc_g
    keep_base = log_keep_ptr + batch * stride_keep_b
    scratch = scratch_ptr + batch * stride_scratch_b + state_rows * channels + d_offs[None, :]
    delta_bias = 0.0
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + d_offs, mask=d_mask, other=0.0)
    skip = 0.0
    if HAS_D:
        skip = tl.load(D_ptr + d_offs, mask=d_mask, other=0.0)
    states = tl.arange(0, N_PAD)
    partial_offs = states[:, None] + tl.zeros((1, PARTIALS), dtype=tl.int32)  # PARTIALS sums per state

    carried = tl.zeros((N_PAD, BLOCK_D), dtype=tl.float32)  # a_{t+1} g_{t+1}: the adjoint passed back to h_t
    if HAS_END_ADJOINT:
        end_adjoint = end_adjoint_ptr + batch * stride_end_b + tl.program_id(1) * stride_end_seg
        carried = state_tile(end_adjoint, stride_end_n, d_index * stride_end_d, state_rows, state_mask)

    dA = tl.zeros((N_PAD, BLOCK_D), dtype=tl.float32)
    dD = tl.zeros((BLOCK_D,), dtype=tl.float32)
    ddelta_bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    first = segment * segment_steps
    num_subtiles = tl.cdiv(tl.minimum(segment_steps, length - first), SUB)
    for i in range(num_subtiles):
        t_sub = first + (num_subtiles - 1 - i) * SUB
        # recompute h over the sub-tile from the state entering it; keep delta and u
        sub_tile = tl.cast((t_sub - first_segment * segment_steps) // SUB, tl.int64)
        h = tl.load(scratch + sub_tile * stride_scratch_sub, mask=state_mask, other=0.0)
        h_tile = tl.zeros((SUB, N_PAD, BLOCK_D), dtype=tl.float32)
        delta_sub = tl.zeros((SUB, BLOCK_D), dtype=tl.float32)
        u_sub = tl.zeros((SUB, BLOCK_D), dtype=tl.float32)
        for p in tl.static_range(SUB // STEPS):
            t0 = t_sub + p * STEPS
            delta = delta_tile(step_tile(delta_base, delta_cols, stride_delta_l, t0, length, d_mask, STEPS), t0,
                               length, d_mask, delta_bias, HAS_DELTA_BIAS, DELTA_SOFTPLUS, STEPS)
            u = step_tile(u_base, u_cols, stride_u_l, t0, length, d_mask, STEPS).to(tl.float32)
            for j in tl.static_range(STEPS):
                row = (tl.arange(0, STEPS) == j)[:, None]  # picks and puts of in-thread rows are copies
                sub_row = (tl.arange(0, SUB) == p * STEPS + j)[:, None]
                delta_j = tl.sum(tl.where(row, delta, 0.0), axis=0)
                u_j = tl.sum(tl.where(row, u, 0.0), axis=0)
                log2_decay = delta_j[None, :] * A2
                if HAS_SEQ_IDX:
                    log2_decay += tl.load(keep_base + t0 + j)
                B_j = tl.load(B_base + (t0 + j) * N_PAD + states)
                h = tl.exp2(log2_decay) * h + (delta_j * u_j)[None, :] * B_j[:, None]
                h_tile = tl.where(sub_row[:, :, None], h[None, :, :], h_tile)
                delta_sub = tl.where(sub_row, delta_j[None, :], delta_sub)
                u_sub = tl.where(sub_row, u_j[None, :], u_sub)

        # run the adjoint back over the sub-tile
        for q in tl.static_range(SUB // STEPS):
            p = SUB // STEPS - 1 - q
            t0 = t_sub + p * STEPS
            dy_raw = step_tile(dy_base, dy_cols, stride_dy_l, t0, length, d_mask, STEPS)
            z_raw = dy_raw
            if HAS_Z:
                z_raw = step_tile(z_base, z_cols, stride_z_l, t0, length, d_mask, STEPS)
            _, _, dout = output_grad_tile(dy_raw, z_raw, HAS_Z)
            u = tl.zeros((STEPS, BLOCK_D), dtype=tl.float32)
            du = tl.zeros((STEPS, BLOCK_D), dtype=tl.float32)
            ddelta = tl.zeros((STEPS, BLOCK_D), dtype=tl.float32)  # before softplus'
            out = tl.zeros((STEPS, BLOCK_D), dtype=tl.float32)  # C h, for dz
            for jj in tl.static_range(STEPS):
                j = STEPS - 1 - jj
                row = (tl.arange(0, STEPS) == j)[:, None]  # picks and puts of in-thread rows are copies
                sub_row = (tl.arange(0, SUB) == p * STEPS + j)[:, None]
                delta_j = tl.sum(tl.where(sub_row, delta_sub, 0.0), axis=0)
                u_j = tl.sum(tl.where(sub_row, u_sub, 0.0), axis=0)
                h_j = tl.sum(tl.where(sub_row[:, :, None], h_tile, 0.0), axis=0)
                dout_j = tl.sum(tl.where(row, dout, 0.0), axis=0)
                B_j = tl.load(B_base + (t0 + j) * N_PAD + states)[:, None]
                C_j = tl.load(C_base + (t0 + j) * N_PAD + states)[:, None]
                g = dout_j[None, :] * C_j + carried
                g_delta_u = g * (delta_j * u_j)[None, :]
                tl.atomic_add(dC_base + (t0 + j) * N_PAD + partial_offs, partial_sums(dout_j[None, :] * h_j, PARTIALS),
                              sem="relaxed")
                tl.atomic_add(dB_base + (t0 + j) * N_PAD + partial_offs, partial_sums(g_delta_u, PARTIALS),
                              sem="relaxed")
                through_decay = g * h_j - g_delta_u * B_j  # g_t a_t h_{t-1}
                dA += through_decay * delta_j[None, :]
                ddelta_u_j = tl.sum(g * B_j, axis=0)
                du = tl.where(row, (ddelta_u_j * delta_j + skip * dout_j)[None, :], du)
                ddelta_j = ddelta_u_j * u_j + tl.sum(through_decay * A2, axis=0) * LN2
                ddelta = tl.where(row, ddelta_j[None, :], ddelta)
                u = tl.where(row, u_j[None, :], u)
                if HAS_Z:
                    out = tl.where(row, tl.sum(C_j * h_j, axis=0)[None, :], out)
                log2_decay = delta_j[None, :] * A2
                if HAS_SEQ_IDX:
                    log2_decay += tl.load(keep_base + t0 + j)
                carried = tl.exp2(log2_decay) * g

            if DELTA_SOFTPLUS:
                raw = step_tile(delta_base, delta_cols, stride_delta_l, t0, length, d_mask, STEPS).to(tl.float32)
                if HAS_DELTA_BIAS:
                    raw += delta_bias[None, :]
                ddelta *= tl.sigmoid(raw)
            valid = (t0 + tl.arange(0, STEPS) < length)[:, None] & d_mask[None, :]
            ddelta = tl.where(valid, ddelta, 0.0)
            store_step_tile(du_base, du_cols, stride_du_l, t0, length, d_mask, du, STEPS)
            store_step_tile(ddelta_base, ddelta_cols, stride_ddelta_l, t0, length, d_mask, ddelta, STEPS)
            if HAS_DELTA_BIAS:
                ddelta_bias += tl.sum(ddelta, axis=0)
            if HAS_D:
                dD += tl.sum(dout * u, axis=0)
            if HAS_Z:  # dy and z again (L1 hits) rather than kept in registers through the steps
                dy = step_tile(dy_base, dy_cols, stride_dy_l, t0, length, d_mask, STEPS).to(tl.float32)
                z = step_tile(z_base, z_cols, stride_z_l, t0, length, d_mask, STEPS).to(tl.float32)
                z_sigmoid = tl.sigmoid(z)
                dz = dy * (out + skip[None, :] * u) * z_sigmoid * (1.0 + z * (1.0 - z_sigmoid))
                store_step_tile(dz_base, dz_cols, stride_dz_l, t0, length, d_mask, dz, STEPS)

    if HAS_INITIAL_STATE:
        if segment == 0:
            tl.store(initial_grad_ptr + batch * N_PAD * channels + state_rows * channels + d_offs[None, :], carried,
                     mask=state_mask)
    tl.atomic_add(dA_ptr + state_rows * channels + d_offs[None, :], dA, mask=state_mask, sem="relaxed")
    if HAS_D:
        tl.atomic_add(dD_ptr + d_offs, dD, mask=d_mask, sem="relaxed")
    if HAS_DELTA_BIAS:
        tl.atomic_add(ddelta_bias_ptr + d_offs, ddelta_bias, mask=d_mask, sem="relaxed")
