"""Fused single-token decode kernels, part 1: GEMVs whose input vector is built inside the kernel.

At batch 1 a decode step is nothing but reading every weight once; inside a CUDA graph each kernel still
costs a few µs of launch and tail latency on top of its memory traffic, so a layer's step is fused into as
few kernels as its data dependencies allow (``decode_fused_ssm.py`` holds the recurrence kernels):

- ``norm_linear``: y = linear(rmsnorm(hidden + residual) * norm_weight), the in_proj of every layer (with
  the previous layer's residual add) and norm_f + lm_head;
- ``gated_norm_linear``: Mamba-2's out_proj(rmsnorm_per_group(y * silu(z)) * norm_weight);
- ``mamba1_conv_xproj``: Mamba-1's x_proj(silu(conv(x with conv_state))), conv_state left as it is.

Design of the norm GEMVs (one kernel, ``_input_gemv_kernel``, two input modes):
- A program owns ``BLOCK_N`` output rows and streams their weights in [BLOCK_N, BLOCK_K] tiles through a
  Triton-pipelined loop (``GEMV_STAGES`` tiles in flight, copied asynchronously into shared memory), which
  keeps enough bytes in flight per multiprocessor without holding them in registers. Each weight tile
  serves every batch row of the program's batch block (a static loop over up to ``MAX_BATCH_BLOCK`` rows),
  so the weights are read once for all of them.
- Every program builds the input vector it needs itself (a row is only d_model..d_inner values): the
  residual sum or the gate. RMSNorm needs the row's statistics before any product, but
  linear(x * rstd) = rstd * linear(x): the kernel
  accumulates the dot products and the sum of squares in the same pass and scales once per group at the
  group's end (K blocks never straddle groups), so normalisation costs no extra pass over the input.
- Programmatic dependent launch (sm_90+, ``MAMBAKIT_DECODE_PDL=0`` turns it off): a kernel may start
  while the previous one drains; its programs load what does not depend on the previous kernel (weights
  are never written during decoding), then wait for the previous kernel's writes (``gdc_wait``) before
  reading any activation, and only then let the next kernel launch. (The norm GEMVs wait before their
  pipelined loop: its prologue loads activations too.) Everything else is shape-driven: no host sync and
  no data-dependent allocation, so the kernels capture into CUDA graphs.

x_proj has few outputs (r + 2n = 160 at mamba-1.4b) over many inputs (d = 4096): programs that own output
rows would be a few dozen, each walking every channel (8.2 µs for 1.3 MB on the H200). So
``_conv_xproj_kernel`` splits the channels instead: a program owns XPROJ_BLOCK_C channels and XPROJ_BLOCK_N
outputs, computes its channels' conv once and stores fp32 partial dot products in a workspace; the last
program to finish (a per-device arrival counter, acquire-release) sums every batch row's partials into x_dbl
and resets the counter. Calls on one device must therefore not run concurrently on several streams.

Shapes: b batch; hidden, residual (b, d_model); y, z (b, d_inner); x (b, d) with conv_state (b, d, s),
s >= k-1, conv_weight (d, k); weight (n, K) row-major; outputs (b, n) in the weight's dtype.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

# Norm GEMVs: weight elements per tile (bf16: 8 KB), the widest K block, tiles in flight per program, and
# warps. H200, batch 1, 48 distinct weights in a graph (benchmarks/gemv_pipelining_probe.py): [16, 256]
# tiles, 3 stages, 4 warps: mamba-1.4b in_proj 10.6 µs (3.17 TB/s) and lm_head 50.1 µs (4.11 TB/s), against
# 16.3 and 70.2 µs for the earlier [8, 512] register-prefetch kernel at 8 warps. decode_probe.py --sweep gemv
# around these (2026-11-29-h200-decode-probe-pipelined-gemv.jsonl) found none faster for mamba-1.4b.
GEMV_TILE_ELEMENTS = 4096
GEMV_MAX_BLOCK_K = 256
GEMV_STAGES = 3
GEMV_NUM_WARPS = 4
# conv + x_proj: channels and outputs of a program (a [BLOCK_N, BLOCK_C] weight tile, 16 KB in bf16); the
# channel block grows past XPROJ_BLOCK_C only to keep the splits (the partials the last program sums) within
# XPROJ_MAX_SPLITS. H200, mamba-1.4b, batch 1 (benchmarks/decode_probe.py --sweep conv): 4.2 µs a launch
# at BLOCK_N 64, 5.0 at 32, 7.5 at 16; the row-owning GEMV it replaced took 8.2.
XPROJ_BLOCK_C = 128
XPROJ_BLOCK_N = 64
XPROJ_MAX_SPLITS = 64
XPROJ_NUM_WARPS = 4
# Programs per streaming multiprocessor the tile choice aims for (fewer rows per program until reached).
PROGRAMS_PER_SM = 2
# Batch rows one program serves from each weight tile; larger batches add programs along grid axis 1.
MAX_BATCH_BLOCK = 8
INTERPRETER_SMS = 1
PDL_ENV = "MAMBAKIT_DECODE_PDL"

INPUT_RESIDUAL_NORM = tl.constexpr(0)  # rmsnorm(hidden + residual) * norm_weight
INPUT_GATED_NORM = tl.constexpr(1)  # rmsnorm_per_group(y * silu(z)) * norm_weight

_arrival_counters: dict[torch.device, torch.Tensor] = {}


# ---- helpers shared with decode_fused_ssm.py ------------------------------------------------------------
@triton.jit
def and_flag(mask, flag):
    """mask & flag for a block mask and a scalar flag, as a select: the interpreter turns block & scalar
    of booleans into int32, which loads and stores then refuse as a mask."""
    return tl.where(mask, flag, False)


@triton.jit
def wait_for_previous_kernel(USE_PDL: tl.constexpr):
    """Under programmatic dependent launch: wait until the previous kernel's writes are visible, then let
    the next kernel launch (its programs prefetch their weights meanwhile). A no-op without PDL."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def softplus(x):
    """log(1 + exp(x)) as torch's softplus (identity above 20), accurate for very negative x as well."""
    e = tl.exp(tl.minimum(x, 20.0))
    return tl.where(x > 20.0, x, tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e)))


@triton.jit
def conv_taps(weight_ptr, bias_ptr, chans, chan_mask, stride_w_c, stride_w_k, state_len,
              WIDTH: tl.constexpr, BLOCK_S: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The conv weights of a block of channels, fp32: (taps met by the state columns [C, BLOCK_S], zero for
    columns older than the kernel; tap of the new input [C]; bias [C], zero without one)."""
    cols = tl.arange(0, BLOCK_S)
    tap = cols - (state_len - (WIDTH - 1))
    tap_mask = chan_mask[:, None] & ((tap >= 0) & (cols < state_len))[None, :]
    state_taps = tl.load(weight_ptr + chans[:, None] * stride_w_c + tap[None, :] * stride_w_k, mask=tap_mask,
                         other=0.0).to(tl.float32)
    input_tap = tl.load(weight_ptr + chans * stride_w_c + (WIDTH - 1) * stride_w_k, mask=chan_mask,
                        other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + chans, mask=chan_mask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros_like(input_tap)
    return state_taps, input_tap, bias


@triton.jit
def conv_silu(state_row_ptr, x_row_ptr, chans, chan_mask, state_taps, input_tap, bias,
              stride_state_c, stride_state_s, state_len, BLOCK_S: tl.constexpr):
    """silu(conv) of one batch row's channels ``chans`` over the window (conv_state row, x), fp32 [C],
    and x [C] as stored (the input the state roll appends)."""
    cols = tl.arange(0, BLOCK_S)
    window = tl.load(state_row_ptr + chans[:, None] * stride_state_c + cols[None, :] * stride_state_s,
                     mask=chan_mask[:, None] & (cols < state_len)[None, :], other=0.0).to(tl.float32)
    x = tl.load(x_row_ptr + chans, mask=chan_mask, other=0.0)
    out = tl.sum(window * state_taps, axis=1) + x.to(tl.float32) * input_tap + bias
    return out * tl.sigmoid(out), x


@triton.jit
def roll_conv_state(state_row_ptr, x, chans, chan_mask, stride_state_c, stride_state_s, state_len,
                    BLOCK_S: tl.constexpr):
    """conv_state[row, chans] <- (state[1:], x): drop the oldest input, append the new one (in place)."""
    cols = tl.arange(0, BLOCK_S)
    ptrs = state_row_ptr + chans[:, None] * stride_state_c + cols[None, :] * stride_state_s
    shifted = tl.load(ptrs + stride_state_s, mask=chan_mask[:, None] & (cols + 1 < state_len)[None, :], other=0.0)
    rolled = tl.where((cols == state_len - 1)[None, :], x.to(shifted.dtype)[:, None], shifted)
    tl.debug_barrier()  # every thread has read the old state before any overwrites it
    tl.store(ptrs, rolled, mask=chan_mask[:, None] & (cols < state_len)[None, :])


# ---- the input-building GEMV --------------------------------------------------------------------------
@triton.jit
def _gemv_input(x_row_ptr, residual_row_ptr, gate_row_ptr, residual_out_row_ptr, cols, col_mask, store_residual,
                MODE: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """One batch row's input values at ``cols`` (fp32, before normalisation); in the residual mode also
    stores hidden + residual there when ``store_residual``."""
    values = tl.load(x_row_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    if MODE == INPUT_RESIDUAL_NORM:
        if HAS_RESIDUAL:
            values += tl.load(residual_row_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        tl.store(residual_out_row_ptr + cols, values.to(residual_out_row_ptr.dtype.element_ty),
                 mask=and_flag(col_mask, store_residual))
    else:
        gate = tl.load(gate_row_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        values = values * gate * tl.sigmoid(gate)
    return values


@triton.jit
def _input_gemv_kernel(
    weight_ptr, bias_ptr, out_ptr, x_ptr, residual_ptr, gate_ptr, norm_weight_ptr, residual_out_ptr,
    batch, N, group_size, groups, eps,
    stride_w_n, stride_out_b, stride_x_b, stride_residual_b, stride_gate_b, stride_residual_out_b,
    MODE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    BATCH_BLOCK: tl.constexpr, BATCH_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr, USE_PDL: tl.constexpr,
):
    """Grid (cdiv(N, BLOCK_N), cdiv(batch, BATCH_BLOCK)): out[rows of the batch block, BLOCK_N rows] =
    weight @ input (+ bias). The K axis is ``groups`` groups of ``group_size``, each scaled by its
    rsqrt(mean square + eps) when its last K block is done."""
    pid_n = tl.program_id(0)
    batch_start = tl.program_id(1) * BATCH_BLOCK
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    weight_rows = weight_ptr + rows.to(tl.int64)[:, None] * stride_w_n
    offs = tl.arange(0, BLOCK_K)
    blocks_per_group = tl.cdiv(group_size, BLOCK_K)
    total_blocks = groups * blocks_per_group
    wait_for_previous_kernel(USE_PDL)

    batch_ids = tl.arange(0, BATCH_PAD)
    acc = tl.zeros((BATCH_PAD, BLOCK_N), dtype=tl.float32)
    group_acc = tl.zeros((BATCH_PAD, BLOCK_N), dtype=tl.float32)
    sum_squares = tl.zeros((BATCH_PAD,), dtype=tl.float32)
    for block in tl.range(0, total_blocks, num_stages=STAGES):
        group = block // blocks_per_group
        in_group = (block - group * blocks_per_group) * BLOCK_K + offs
        col_mask = in_group < group_size
        cols = group * group_size + in_group
        tile = tl.load(weight_rows + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0.0,
                       eviction_policy="evict_first").to(tl.float32)
        norm_weight = tl.load(norm_weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        for r in tl.static_range(BATCH_BLOCK):
            row = batch_start + r
            values = _gemv_input(
                x_ptr + row * stride_x_b, residual_ptr + row * stride_residual_b, gate_ptr + row * stride_gate_b,
                residual_out_ptr + row * stride_residual_out_b, cols, and_flag(col_mask, row < batch), pid_n == 0,
                MODE, HAS_RESIDUAL)
            sum_squares = tl.where(batch_ids == r, sum_squares + tl.sum(values * values, axis=0), sum_squares)
            partial = tl.sum(tile * (values * norm_weight)[None, :], axis=1)
            group_acc = tl.where((batch_ids == r)[:, None], group_acc + partial[None, :], group_acc)
        group_done = block - group * blocks_per_group == blocks_per_group - 1
        rstd = tl.rsqrt(sum_squares / group_size + eps)
        acc = tl.where(group_done, acc + group_acc * rstd[:, None], acc)
        group_acc = tl.where(group_done, 0.0, group_acc)
        sum_squares = tl.where(group_done, 0.0, sum_squares)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)[None, :]
    out_rows = batch_start + batch_ids
    tl.store(out_ptr + out_rows[:, None] * stride_out_b + rows[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(out_rows < batch)[:, None] & row_mask[None, :])


@triton.jit
def _conv_xproj_kernel(
    x_ptr, conv_state_ptr, conv_weight_ptr, conv_bias_ptr, weight_ptr, partials_ptr, out_ptr, arrivals_ptr,
    batch, channels, N, state_len,
    stride_x_b, stride_state_b, stride_state_c, stride_state_s, stride_conv_w_c, stride_conv_w_k, stride_w_n,
    stride_partials_b, stride_partials_split, stride_out_b,
    CONV_WIDTH: tl.constexpr, BLOCK_S: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLITS_PAD: tl.constexpr, USE_PDL: tl.constexpr,
):
    """Grid (splits = cdiv(d, BLOCK_C), cdiv(N, BLOCK_N), b): partials[row, split, BLOCK_N outputs] = the
    split's weight columns @ silu(conv) of its channels; the last program sums partials over the splits into
    out (b, N)."""
    split = tl.program_id(0)
    outputs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    output_mask = outputs < N
    row = tl.program_id(2).to(tl.int64)
    chans = split * BLOCK_C + tl.arange(0, BLOCK_C)
    chan_mask = chans < channels
    weights = tl.load(weight_ptr + outputs[:, None] * stride_w_n + chans[None, :],
                      mask=output_mask[:, None] & chan_mask[None, :], other=0.0, eviction_policy="evict_first")
    state_taps, input_tap, bias = conv_taps(conv_weight_ptr, conv_bias_ptr, chans, chan_mask, stride_conv_w_c,
                                            stride_conv_w_k, state_len, CONV_WIDTH, BLOCK_S, HAS_CONV_BIAS)
    wait_for_previous_kernel(USE_PDL)

    values, _ = conv_silu(conv_state_ptr + row * stride_state_b, x_ptr + row * stride_x_b, chans, chan_mask,
                          state_taps, input_tap, bias, stride_state_c, stride_state_s, state_len, BLOCK_S)
    partial = tl.sum(weights.to(tl.float32) * values[None, :], axis=1)
    tl.store(partials_ptr + row * stride_partials_b + split * stride_partials_split + outputs, partial,
             mask=output_mask)

    tl.debug_barrier()  # this program's partials are stored before it counts itself out
    arrived = tl.atomic_add(arrivals_ptr, 1, sem="acq_rel")
    if arrived == tl.num_programs(0) * tl.num_programs(1) * tl.num_programs(2) - 1:
        splits = tl.arange(0, SPLITS_PAD)
        split_mask = splits < tl.num_programs(0)
        columns = tl.arange(0, BLOCK_N)
        for sum_row in range(batch):
            for start in range(0, N, BLOCK_N):
                cols = start + columns
                tile = tl.load(partials_ptr + sum_row * stride_partials_b + splits[:, None] * stride_partials_split
                               + cols[None, :], mask=split_mask[:, None] & (cols < N)[None, :], other=0.0)
                tl.store(out_ptr + sum_row * stride_out_b + cols, tl.sum(tile, axis=0).to(out_ptr.dtype.element_ty),
                         mask=cols < N)
        tl.atomic_xchg(arrivals_ptr, 0, sem="release")


# ---- launch helpers (also used by decode_fused_ssm.py) -----------------------------------------------------
@functools.lru_cache(maxsize=None)
def _cuda_properties(index: int) -> tuple[int, tuple[int, int]]:
    props = torch.cuda.get_device_properties(index)
    return props.multi_processor_count, (props.major, props.minor)


def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a handful for the interpreter on CPU tensors)."""
    if device.type != "cuda":
        return INTERPRETER_SMS
    return _cuda_properties(device.index if device.index is not None else torch.cuda.current_device())[0]


def pdl_launch(device: torch.device) -> tuple[bool, dict]:
    """(USE_PDL, launch options): programmatic dependent launch on sm_90+ CUDA devices unless
    ``MAMBAKIT_DECODE_PDL=0``."""
    if device.type != "cuda" or os.environ.get(PDL_ENV, "1") == "0" or not hasattr(tl.extra.cuda, "gdc_wait"):
        return False, {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    if _cuda_properties(index)[1] < (9, 0):
        return False, {}
    return True, {"launch_pdl": True}


def unit_stride_rows(t: torch.Tensor) -> torch.Tensor:
    """t (rows, c) with unit stride along c; rows may stay strided (e.g. slices of a projection output)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def arrival_counter(device: torch.device) -> torch.Tensor:
    """The device's int32 arrival counter, zero between calls (allocated on first use: warm up before a
    CUDA-graph capture, as ``generation/cuda_graph.py`` does)."""
    if device not in _arrival_counters:
        _arrival_counters[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return _arrival_counters[device]


def _gemv_tiles(n: int, group_size: int, batch_blocks: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K): a tile of GEMV_TILE_ELEMENTS weights; fewer rows and longer K blocks per program
    until the grid gives PROGRAMS_PER_SM programs per multiprocessor."""
    k_span = triton.next_power_of_2(group_size)
    block_k = min(k_span, GEMV_MAX_BLOCK_K)
    block_n = max(1, min(triton.next_power_of_2(n), GEMV_TILE_ELEMENTS // block_k))
    wanted = PROGRAMS_PER_SM * multiprocessors(device)
    while block_n > 1 and triton.cdiv(n, block_n) * batch_blocks < wanted:
        block_n //= 2
        block_k = min(k_span, block_k * 2)
    return block_n, block_k


def _launch_gemv(mode, weight, bias, x, *, residual=None, gate=None, norm_weight=None, residual_out=None,
                 group_size=None, eps=0.0, allow_pdl=True):
    """out (b, n) = weight @ input(x, ...) (+ bias) through ``_input_gemv_kernel`` in ``mode``; with
    ``allow_pdl`` False it is launched as an ordinary kernel (see ``gated_norm_linear``)."""
    batch, width = x.shape
    n = weight.shape[0]
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    group_size = group_size or width
    if width % group_size:
        raise ValueError(f"group_size {group_size} does not divide the input width {width}")
    out = torch.empty(batch, n, device=x.device, dtype=weight.dtype)
    batch_block = min(batch, MAX_BATCH_BLOCK)
    batch_blocks = triton.cdiv(batch, batch_block)
    block_n, block_k = _gemv_tiles(n, group_size, batch_blocks, x.device)
    use_pdl, launch_options = pdl_launch(x.device) if allow_pdl else (False, {})
    _input_gemv_kernel[(triton.cdiv(n, block_n), batch_blocks)](
        weight, bias if bias is not None else weight, out, x,
        residual if residual is not None else x, gate if gate is not None else x, norm_weight,
        residual_out if residual_out is not None else out,
        batch, n, group_size, width // group_size, eps,
        weight.stride(0), out.stride(0), x.stride(0),
        residual.stride(0) if residual is not None else 0, gate.stride(0) if gate is not None else 0,
        residual_out.stride(0) if residual_out is not None else 0,
        MODE=mode, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, BATCH_BLOCK=batch_block,
        BATCH_PAD=triton.next_power_of_2(batch_block), BLOCK_N=block_n, BLOCK_K=block_k, STAGES=GEMV_STAGES,
        USE_PDL=use_pdl, num_warps=GEMV_NUM_WARPS, **launch_options,
    )
    return out


# ---- the ops ----------------------------------------------------------------------------------------------
def norm_linear(hidden, residual, norm_weight, eps, weight, bias=None, residual_in_fp32=True):
    """Residual add + RMSNorm + projection of one token (see ``reference.norm_linear``).

    hidden, residual: (b, d_model) (residual None for the first layer); norm_weight: (d_model,);
    weight: (n, d_model); bias: (n,). Returns (y (b, n) in weight's dtype, residual_out (b, d_model) =
    hidden + residual, fp32 when ``residual_in_fp32``).
    """
    hidden = unit_stride_rows(hidden)
    residual = unit_stride_rows(residual) if residual is not None else None
    residual_out = torch.empty(hidden.shape, device=hidden.device,
                               dtype=torch.float32 if residual_in_fp32 else hidden.dtype)
    y = _launch_gemv(INPUT_RESIDUAL_NORM, weight, bias, hidden, residual=residual, norm_weight=norm_weight,
                     residual_out=residual_out, eps=eps)
    return y, residual_out


def gated_norm_linear(y, z, norm_weight, eps, group_size, weight, bias=None):
    """Mamba-2's output: linear(rmsnorm_per_group(y * silu(z)) * norm_weight, weight, bias) for one token.

    y, z: (b, d_inner); norm_weight: (d_inner,); group_size divides d_inner; weight: (d_model, d_inner);
    bias: (d_model,). Returns (b, d_model) in weight's dtype.
    """
    # Without programmatic dependent launch: on the H200 (decode_probe.py, mamba2-1.3b, batch 1) this kernel
    # took 10.6 µs a launch with it and 8.4 without, and the whole graphed step 1667 µs with it and 1373 µs
    # with none at all, while Mamba-1's step (whose out_proj is not a norm GEMV) gains from it (1262 / 1378).
    return _launch_gemv(INPUT_GATED_NORM, weight, bias, unit_stride_rows(y), gate=unit_stride_rows(z),
                        norm_weight=norm_weight, group_size=group_size, eps=eps, allow_pdl=False)


def mamba1_conv_xproj(x, conv_state, conv_weight, conv_bias, x_proj_weight):
    """Mamba-1's x_proj(silu(conv(x with conv_state))) for one token; conv_state is not modified.

    x: (b, d); conv_state: (b, d, s), s >= k-1; conv_weight: (d, k); conv_bias: (d,) or None;
    x_proj_weight: (r + 2n, d). Returns x_dbl (b, r + 2n) in the weight's dtype.
    """
    batch, channels = x.shape
    n = x_proj_weight.shape[0]
    width, state_len = conv_weight.shape[-1], conv_state.shape[-1]
    if state_len < width - 1:
        raise ValueError(f"conv_state holds {state_len} steps; a width-{width} conv needs at least {width - 1}")
    x, x_proj_weight = unit_stride_rows(x), unit_stride_rows(x_proj_weight)
    block_c = max(min(XPROJ_BLOCK_C, triton.next_power_of_2(channels)),
                  triton.next_power_of_2(triton.cdiv(channels, XPROJ_MAX_SPLITS)))
    splits = triton.cdiv(channels, block_c)
    block_n = min(XPROJ_BLOCK_N, triton.next_power_of_2(n))
    partials = torch.empty(batch, splits, n, device=x.device, dtype=torch.float32)
    out = torch.empty(batch, n, device=x.device, dtype=x_proj_weight.dtype)
    use_pdl, launch_options = pdl_launch(x.device)
    _conv_xproj_kernel[(splits, triton.cdiv(n, block_n), batch)](
        x, conv_state, conv_weight, conv_bias if conv_bias is not None else conv_weight, x_proj_weight, partials,
        out, arrival_counter(x.device), batch, channels, n, state_len,
        x.stride(0), *conv_state.stride(), *conv_weight.stride(), x_proj_weight.stride(0),
        partials.stride(0), partials.stride(1), out.stride(0),
        CONV_WIDTH=width, BLOCK_S=triton.next_power_of_2(max(state_len, 1)), HAS_CONV_BIAS=conv_bias is not None,
        BLOCK_C=block_c, BLOCK_N=block_n, SPLITS_PAD=triton.next_power_of_2(splits), USE_PDL=use_pdl,
        num_warps=XPROJ_NUM_WARPS, **launch_options,
    )
    return out
