"""Triton selective scan (Mamba-1 S6), forward and backward: the autograd wrapper and launch geometry.

Same signature, shapes, dtype rules and results as ``mambakit.ops.reference.selective_scan``.

Two implementations, chosen by ``CONFIG["variant"]`` (read at every call, like the tile parameters, so
that benchmarks/scan_probe.py can sweep them without editing this file):
- "segmented" (default; selective_scan_forward.py and selective_scan_backward.py): each thread runs the
  recurrence of one channel (all n states in its registers), the sequence is cut into segments that run
  in parallel (a summary pass gives each segment its entering state), and u, delta, z, dy are read through
  their strides, so the transposed (b, l, d) views of the model are not copied.
- "chunked" (selective_scan_chunked.py): the first kernel, a scan over time per state; the baseline.

Tile parameters of the segmented kernels:
- block_d, num_warps: channels and warps of a forward program (block_d = 32 * num_warps puts one channel
  on each thread; smaller block_d spreads a channel's states over 32 * num_warps / block_d lanes).
- prefetch: the forward kernels and the backward's adjoint summary load the next input tile while
  computing the current one (latency hidden, more registers); maxnreg caps the forward kernels' registers
  (None: ptxas decides).
- warps_per_sm, min_segment: the forward cuts the sequence into segments of at least min_segment steps
  until batch * channel blocks * segments programs bring about warps_per_sm warps per SM (16: one wave
  at the ~18 one-warp programs an SM holds at ~110 registers).
- checkpoint: steps between the states the forward saves for the backward; the backward runs one program
  per checkpoint interval and channel block (backward_block_d channels, one warp).
- backward_sub: steps whose states a backward program holds in registers while it runs the adjoint back
  (a power of two >= 4); the state entering each sub-tile goes through a scratch buffer of
  b * l / backward_sub * n * d floats.
- backward_maxnreg: register cap of the backward kernel (None: ptxas decides; it takes all 255).
- backward_partials: dB and dC are summed over backward_block_d / backward_partials channels (shuffles
  across those lanes), then backward_partials sums per (state, step) are added atomically.
- backward_scratch_mb: the backward runs over groups of checkpoint intervals, from the end, each group's
  scratch within this budget.
Chunked parameters: chunk (steps per tile; 32 below 512 steps), chunk_num_warps.
"""
from __future__ import annotations

import functools

import torch
import triton

from mambakit.ops.kernels import selective_scan_chunked as chunked
from mambakit.ops.kernels.selective_scan_backward import _adjoint_summary_kernel, _segment_backward_kernel
from mambakit.ops.kernels.selective_scan_forward import (
    _segment_carry_kernel, _segment_output_kernel, _segment_summary_kernel,
)

CONFIG = {
    "variant": "segmented",
    "block_d": 32, "num_warps": 1, "prefetch": True, "maxnreg": None, "warps_per_sm": 16, "min_segment": 128,
    "checkpoint": 64, "backward_block_d": 32, "backward_sub": 4, "backward_maxnreg": None,
    "backward_scratch_mb": 256, "backward_partials": 4,
    "chunk": 64, "chunk_num_warps": 1,
}
# backward_partials 4: fwd+bwd 4.46 ms against 4.76 ms with 1 (H200, benchmarks/scan_probe.py, model layout,
# b=1 d=4096 l=10240 n=16 bf16; benchmarks/results/2026-11-29-h200-scan-probe.jsonl).
VARIANTS = ("segmented", "chunked")


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (4 elsewhere: the interpreter needs no parallelism)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _round_up(value: int, multiple: int) -> int:
    return triton.cdiv(value, multiple) * multiple


def _steps_per_tile(*tensors: torch.Tensor | None) -> int:
    """Steps per input tile: 16 bytes of the widest input dtype (one vector load when l is contiguous)."""
    return 16 // max(t.element_size() for t in tensors if t is not None)


def _block_d(wanted: int, channels: int, channels_per_group: int) -> int:
    """A power-of-two channel block of at most ``wanted`` that never straddles two groups of B and C."""
    block_d = min(triton.next_power_of_2(wanted), triton.next_power_of_2(channels))
    if channels_per_group != channels:
        while channels_per_group % block_d:
            block_d //= 2
    return block_d


def _checkpoint_geometry() -> tuple[int, int]:
    """(backward sub-tile steps, checkpoint spacing): the spacing is a multiple of the sub-tile and of 8
    (the forward's tiles, so that every checkpoint starts a forward tile)."""
    sub = max(4, triton.next_power_of_2(CONFIG["backward_sub"]))
    return sub, _round_up(CONFIG["checkpoint"], max(sub, 8))


def _log_keep(seq_idx: torch.Tensor, padded_length: int) -> torch.Tensor:
    """(b, padded_length) fp32: -inf where a new packed sequence starts (the state resets), else 0."""
    batch, length = seq_idx.shape
    log_keep = torch.zeros(batch, padded_length, dtype=torch.float32, device=seq_idx.device)
    log_keep[:, 1:length].masked_fill_(seq_idx[:, 1:] != seq_idx[:, :-1], float("-inf"))
    return log_keep


def _step_major_projection(P: torch.Tensor, padded_length: int, state_pad: int) -> torch.Tensor:
    """B or C, (b, n, l) or (b, g, n, l), as a contiguous fp32 (b, g, padded_length, state_pad), zero padded:
    the n values of a step are one 16-byte aligned row."""
    grouped = P.unsqueeze(1) if P.dim() == 3 else P
    batch, groups, state_size, length = grouped.shape
    padded = grouped.new_zeros(batch, groups, padded_length, state_pad, dtype=torch.float32)
    padded[:, :, :length, :state_size] = grouped.transpose(2, 3)
    return padded


def _strides(t: torch.Tensor | None) -> tuple[int, ...]:
    return (0, 0, 0) if t is None else t.stride()


def _carry(summary: torch.Tensor, start: torch.Tensor | None, state_size: int, reverse: bool, chained: int,
           last: torch.Tensor | None = None):
    """Run ``start`` (b, d, n) through the segments' (decay, term) in ``summary`` (b, segments, 2, n_pad, d):
    the state entering each segment, or with ``reverse`` the adjoint reaching the end of each segment.
    The first ``chained`` summaries (in that order) are read; ``last`` (b, n_pad, d) receives the value
    after them. Returns the (b, segments, n_pad, d) fp32 result and its strides in the kernels'
    (b, segment, d, n) order."""
    batch, num_segments, _, state_pad, channels = summary.shape
    carried = summary.new_empty(batch, num_segments, state_pad, channels)
    block = min(1024, triton.next_power_of_2(state_pad * channels))
    _segment_carry_kernel[(triton.cdiv(state_pad * channels, block), batch)](
        summary, summary if start is None else start, carried, carried if last is None else last, channels,
        state_size, num_segments, chained, summary.stride(0), summary.stride(1), summary.stride(2), *_strides(start),
        carried.stride(0), carried.stride(1), HAS_START=start is not None, REVERSE=reverse,
        STORE_LAST=last is not None, N_PAD=state_pad, BLOCK=block, UNROLL=8, num_warps=4,
    )
    return carried, (carried.stride(0), carried.stride(1), carried.stride(3), carried.stride(2))


def _per_segment(start: torch.Tensor | None) -> tuple[int, int, int, int]:
    """Strides (b, segment, d, n) that read a (b, d, n) tensor as the value of the only segment."""
    return (0, 0, 0, 0) if start is None else (start.stride(0), 0, start.stride(1), start.stride(2))


def _segmented_forward(u, delta, A32, B, C, D32, z, bias32, seq_idx, initial_state, delta_softplus: bool,
                       save_checkpoints: bool, save_final: bool):
    """Returns y, the final state (b, d, n) fp32 or None, the tensors the backward needs and the
    (sub-tile, checkpoint spacing) geometry they were made for."""
    batch, channels, length = u.shape
    state_size = A32.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    state_pad = triton.next_power_of_2(state_size)
    steps = _steps_per_tile(u, delta, z)
    block_d = _block_d(CONFIG["block_d"], channels, channels // groups)
    num_warps = max(1, min(CONFIG["num_warps"], block_d // 32))
    sub, spacing = _checkpoint_geometry()
    programs = batch * triton.cdiv(channels, block_d)
    wanted_segments = max(1, CONFIG["warps_per_sm"] * _sm_count(u.device) // (programs * num_warps))
    segment_steps = _round_up(max(CONFIG["min_segment"], triton.cdiv(length, wanted_segments)), spacing)
    num_segments = triton.cdiv(length, segment_steps)
    padded_length = num_segments * segment_steps

    B32, C32 = _step_major_projection(B, padded_length, state_pad), _step_major_projection(C, padded_length, state_pad)
    log_keep = None if seq_idx is None else _log_keep(seq_idx, padded_length)
    num_checkpoints = triton.cdiv(length, spacing)
    slots = num_checkpoints + 1 if save_checkpoints else 1
    states = u.new_empty(batch, slots, state_size, channels, dtype=torch.float32)
    final_slot = slots - 1
    y = torch.empty_like(u)
    placeholder = A32  # passed for absent optional inputs; the kernels never read it
    keep_arg = placeholder if log_keep is None else log_keep
    common = dict(HAS_DELTA_BIAS=bias32 is not None, DELTA_SOFTPLUS=delta_softplus, HAS_SEQ_IDX=seq_idx is not None,
                  BLOCK_D=block_d, N_PAD=state_pad, STEPS=steps, PREFETCH=CONFIG["prefetch"], num_warps=num_warps,
                  maxnreg=CONFIG["maxnreg"])
    blocks = triton.cdiv(channels, block_d)
    entering, entering_strides = initial_state, _per_segment(initial_state)
    if num_segments > 1:
        summary = u.new_empty(batch, num_segments, 2, state_pad, channels, dtype=torch.float32)
        _segment_summary_kernel[(blocks, num_segments - 1, batch)](
            u, delta, A32, B32, placeholder if bias32 is None else bias32, keep_arg, summary,
            length, channels, state_size, channels // groups, segment_steps, 0,
            *u.stride(), *delta.stride(), *A32.stride(), B32.stride(0), B32.stride(1),
            0 if log_keep is None else log_keep.stride(0), summary.stride(0), summary.stride(1), summary.stride(2),
            **common,
        )
        entering, entering_strides = _carry(summary, initial_state, state_size, reverse=False,
                                            chained=num_segments - 1)
    _segment_output_kernel[(blocks, num_segments, batch)](
        u, delta, A32, B32, C32, placeholder if D32 is None else D32, u if z is None else z,
        placeholder if bias32 is None else bias32, keep_arg, placeholder if entering is None else entering, y, states,
        length, channels, state_size, channels // groups, segment_steps, spacing, final_slot, 0,
        *u.stride(), *delta.stride(), *_strides(z), *y.stride(), *A32.stride(), B32.stride(0), B32.stride(1),
        0 if log_keep is None else log_keep.stride(0), *entering_strides,
        states.stride(0), states.stride(1), states.stride(2),
        HAS_D=D32 is not None, HAS_Z=z is not None, HAS_ENTERING_STATE=entering is not None,
        SAVE_CHECKPOINTS=save_checkpoints, SAVE_FINAL=save_final, **common,
    )
    final_state = states[:, final_slot].transpose(1, 2) if save_final else None
    return y, final_state, (u, delta, z, B32, C32, log_keep, states), (sub, spacing)


def _segmented_backward(saved, geometry, A32, D32, bias32, dy, dfinal_state, has_initial_state: bool,
                        delta_softplus: bool):
    """Gradients from ``_segmented_forward``'s saved tensors: du, ddelta, dz (like u, delta, z) and fp32
    dA (d, n), dB, dC (b, g, n, l), dD, ddelta_bias (d,), initial-state gradient (b, n, d).

    The checkpoint intervals (segments) run in groups from the end of the sequence, each group's
    sub-tile scratch within CONFIG["backward_scratch_mb"]: adjoint summaries of the group's segments,
    the carry of the adjoint from the group's end through them (its value past the group's first segment
    starts the previous group), then the backward of the group's segments."""
    u, delta, z, B32, C32, log_keep, states = saved
    batch, channels, length = u.shape
    state_size = A32.shape[1]
    groups, state_pad = B32.shape[1], B32.shape[3]
    sub, spacing = geometry
    steps = min(_steps_per_tile(u, delta, z, dy), sub)
    block_d = _block_d(CONFIG["backward_block_d"], channels, channels // groups)
    num_segments = triton.cdiv(length, spacing)
    segment_bytes = batch * (spacing // sub) * state_pad * channels * 4
    group_segments = max(1, min(num_segments, CONFIG["backward_scratch_mb"] * 2**20 // segment_bytes))

    scratch = u.new_empty(batch, group_segments * spacing // sub, state_pad, channels, dtype=torch.float32)
    summary = u.new_empty(batch, group_segments, 2, state_pad, channels, dtype=torch.float32)
    # the adjoint passed from a group to the one before it (two buffers: one is read while the other is written)
    group_ends = u.new_empty(2, batch, state_pad, channels, dtype=torch.float32)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = None if z is None else torch.empty_like(z)
    dA = u.new_zeros(state_size, channels, dtype=torch.float32)
    dD = u.new_zeros(channels, dtype=torch.float32)
    dbias = torch.zeros_like(dD)
    dB32, dC32 = torch.zeros_like(B32), torch.zeros_like(C32)
    dinitial = u.new_empty(batch, state_pad, channels, dtype=torch.float32) if has_initial_state else None
    placeholder = A32
    keep_arg = placeholder if log_keep is None else log_keep
    keep_stride = 0 if log_keep is None else log_keep.stride(0)
    z_arg = u if z is None else z
    bias_arg = placeholder if bias32 is None else bias32
    common = dict(HAS_Z=z is not None, HAS_DELTA_BIAS=bias32 is not None, DELTA_SOFTPLUS=delta_softplus,
                  HAS_SEQ_IDX=log_keep is not None, BLOCK_D=block_d, N_PAD=state_pad, STEPS=steps, SUB=sub,
                  num_warps=1)
    partials = min(CONFIG["backward_partials"], block_d)
    start = dfinal_state
    for index, first in enumerate(reversed(range(0, num_segments, group_segments))):
        count = min(group_segments, num_segments - first)
        grid = (triton.cdiv(channels, block_d), count, batch)
        _adjoint_summary_kernel[grid](
            u, delta, A32, B32, C32, z_arg, bias_arg, keep_arg, dy, states, summary, scratch,
            length, channels, state_size, channels // groups, spacing, first, 0,
            *u.stride(), *delta.stride(), *_strides(z), *dy.stride(), *A32.stride(), B32.stride(0), B32.stride(1),
            keep_stride, states.stride(0), states.stride(1), states.stride(2),
            summary.stride(0), summary.stride(1), summary.stride(2), scratch.stride(0), scratch.stride(1),
            PREFETCH=CONFIG["prefetch"], **common,
        )
        end_adjoint, end_strides = _carry(summary[:, :count], start, state_size, reverse=True, chained=count,
                                          last=group_ends[index % 2] if first > 0 else None)
        _segment_backward_kernel[grid](  # reads the scratch
            u, delta, A32, B32, C32, placeholder if D32 is None else D32, z_arg, bias_arg, keep_arg, dy,
            end_adjoint, scratch, du, ddelta, du if dz is None else dz, dA, dB32, dC32, dD, dbias,
            placeholder if dinitial is None else dinitial,
            length, channels, state_size, channels // groups, spacing, first, 0,
            *u.stride(), *delta.stride(), *_strides(z), *dy.stride(), *du.stride(), *ddelta.stride(), *_strides(dz),
            *A32.stride(), B32.stride(0), B32.stride(1), keep_stride, *end_strides, scratch.stride(0),
            scratch.stride(1),
            HAS_D=D32 is not None, HAS_END_ADJOINT=True, HAS_INITIAL_STATE=has_initial_state, PARTIALS=partials,
            maxnreg=CONFIG["backward_maxnreg"], **common,
        )
        start = group_ends[index % 2].transpose(1, 2)  # (b, d, n) view of the previous group's end adjoint

    def projection_grad(dP32):
        return dP32[:, :, :length, :state_size].transpose(2, 3)

    return (du, ddelta, dz, dA.t(), projection_grad(dB32), projection_grad(dC32), dD, dbias,
            None if dinitial is None else dinitial[:, :state_size])


def forward_keeping_no_inputs(u, delta, A, B, C, D, z, seq_idx, delta_softplus: bool):
    """The segmented forward for a caller that keeps neither u nor delta for the backward but recomputes them
    (Mamba-1's training step, layers/mamba1_recompute.py). Shapes as in ``selective_scan`` (no delta bias, no
    initial or final state). Returns y and the residuals ``backward_with_inputs`` takes: a tuple of tensors
    (for ``ctx.save_for_backward``) and the sub-tile geometry."""
    A32, D32 = A.float(), D.float().contiguous()
    y, _, saved, geometry = _segmented_forward(u, delta, A32, B, C, D32, z, None, seq_idx, None, delta_softplus,
                                               save_checkpoints=True, save_final=False)
    return y, ((A32, D32, *saved[2:]), geometry)


def backward_with_inputs(tensors, geometry, u, delta, dy, delta_softplus: bool):
    """Gradients of ``forward_keeping_no_inputs`` given its residuals and the recomputed u and delta:
    du, ddelta, dz (their layouts), dA (d, n), dB, dC (b, g, n, l), dD (d,), all but the first three fp32."""
    A32, D32, *rest = tensors
    du, ddelta, dz, dA, dB, dC, dD, _, _ = _segmented_backward((u, delta, *rest), geometry, A32, D32, None, dy, None,
                                                              False, delta_softplus)
    return du, ddelta, dz, dA, dB, dC, dD


def _chunked_config(channels: int, channels_per_group: int, length: int) -> tuple[int, int, int]:
    chunk = CONFIG["chunk"] if length >= 512 else 32
    return chunked.tile_config(channels, channels_per_group, chunk, CONFIG["chunk_num_warps"])


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, delta_softplus, return_final_state,
                grad_enabled):
        batch, channels, length = u.shape
        groups = 1 if B.dim() == 3 else B.shape[1]
        if channels % groups:
            raise ValueError(f"{channels} channels cannot be split into {groups} groups")
        variant = CONFIG["variant"]
        if variant not in VARIANTS:
            raise ValueError(f"selective_scan CONFIG['variant']={variant!r} is not one of {VARIANTS}")
        A32 = A.float()
        D32 = None if D is None else D.float().contiguous()
        bias32 = None if delta_bias is None else delta_bias.float().contiguous()
        needs_backward = grad_enabled and any(ctx.needs_input_grad[:9])
        if variant == "segmented":
            y, final_state, saved, ctx.geometry = _segmented_forward(
                u, delta, A32, B, C, D32, z, bias32, seq_idx, initial_state, bool(delta_softplus),
                save_checkpoints=needs_backward, save_final=return_final_state)
        else:
            config = _chunked_config(channels, channels // groups, length)
            y, final_state, saved = chunked.chunked_forward(
                u, delta, A32, B, C, D32, z, bias32,
                lambda padded_length: None if seq_idx is None else _log_keep(seq_idx, padded_length),
                initial_state, bool(delta_softplus), needs_backward, config)
            ctx.geometry = config
        if needs_backward:
            ctx.save_for_backward(A32, D32, bias32, *saved)
            ctx.variant = variant
            ctx.delta_softplus = bool(delta_softplus)
            ctx.input_meta = (B.dim(), B.dtype, C.dtype, A.dtype, None if D is None else D.dtype,
                              None if delta_bias is None else delta_bias.dtype,
                              None if initial_state is None else initial_state.dtype)
        if not return_final_state:
            return y
        return y, final_state.contiguous()

    @staticmethod
    def backward(ctx, dy, dfinal_state=None):
        A32, D32, bias32, *saved = ctx.saved_tensors
        B_dim, B_dtype, C_dtype, A_dtype, D_dtype, bias_dtype, initial_dtype = ctx.input_meta
        u = saved[0]
        dy = torch.zeros_like(u) if dy is None else dy
        if ctx.variant == "segmented":
            grads = _segmented_backward(saved, ctx.geometry, A32, D32, bias32, dy, dfinal_state,
                                        initial_dtype is not None, ctx.delta_softplus)
        else:
            grads = chunked.chunked_backward(saved, A32, D32, bias32, dy, dfinal_state, ctx.delta_softplus,
                                             ctx.geometry)
        du, ddelta, dz, dA, dB, dC, dD, dbias, dinitial = grads

        def projection_grad(dP, dtype):
            return (dP.squeeze(1) if B_dim == 3 else dP).to(dtype)

        return (du, ddelta, dA.to(A_dtype), projection_grad(dB, B_dtype), projection_grad(dC, C_dtype),
                None if D_dtype is None else dD.to(D_dtype), dz,
                None if bias_dtype is None else dbias.to(bias_dtype),
                None if initial_dtype is None else dinitial.transpose(1, 2).to(initial_dtype, copy=True),
                None, None, None, None)


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, seq_idx=None, return_final_state=False,
):
    """Mamba-1 selective scan (S6) in Triton; differentiable in every tensor argument but seq_idx.

    u, delta: (b, d, l) fp32/fp16/bf16, any strides; A: (d, n); B, C: (b, n, l) or (b, g, n, l); D: (d,);
    z: (b, d, l) gate; delta_bias: (d,); initial_state: (b, d, n); seq_idx: (b, l) int32.
    Returns y (b, d, l) in u's dtype, y = (C h + D u) * silu(z), and with ``return_final_state`` also the
    final state (b, d, n) fp32 (gradients may flow into it too).
    """
    return _SelectiveScanFn.apply(
        u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, delta_softplus, return_final_state,
        torch.is_grad_enabled(),
    )
