"""Mamba-2 SSD (state-space dual) chunked scan in Triton, forward and backward.

Same signature and results as ``mambakit.ops.reference.ssd_scan``. The sequence is cut into chunks of
q positions. Per batch row, head and chunk, with ℓ_t the cumulative sum of dt·A from the chunk start:

- intra-chunk output: y_t = Σ_{s<=t} (C_t·B_s) exp(ℓ_t - ℓ_s) dt_s x_s, i.e. (C Bᵀ ∘ decay mask)(dt x),
  two matrix products on tensor cores per tile of positions;
- chunk state: the state the chunk's own inputs leave at its end, Σ_s exp(ℓ_last - ℓ_s) dt_s x_s ⊗ B_s;
- state passing: a cheap sequential pass over chunks, entering[k+1] = exp(ℓ_last,k) entering[k] + own[k],
  starting from the initial state;
- inter-chunk output: y_t += exp(ℓ_t) C_t · entering stateᵀ; then y += D x and y *= silu(z).

Packed sequences (seq_idx) are handled with segment ids: a pair of positions, or a position and a
state, interact only within one segment. The kernels are in ``ssd_forward.py`` and ``ssd_backward.py``;
the backward is Triton throughout except for small torch sums of per-program partials (dA, dD,
dt_bias, and dB / dC over head subsets), and it also supports a gradient on the final state.
"""
from __future__ import annotations

import math

import torch

from mambakit.ops.kernels.ssd_backward import ssd_backward
from mambakit.ops.kernels.ssd_common import ScanGeometry, segment_ids
from mambakit.ops.kernels.ssd_forward import ForwardResult, ssd_forward


class _SSDScanFunction(torch.autograd.Function):
    """Autograd wrapper: the forward keeps dt, the log-decay and every chunk's entering state (fp32,
    (b, c + 1, h, p, n): about x's size in bytes at q = 256, n = 128) so the backward recomputes nothing
    but matrix-product tiles."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, chunk_size, dt_softplus, dt_limit):
        ctx.set_materialize_grads(False)
        ctx.input_dtypes = [t.dtype if t is not None else None for t in (x, dt, A, B, C, D, z, dt_bias, initial_state)]
        geo = ScanGeometry.of(x, B, chunk_size)
        seg = segment_ids(seq_idx)
        if initial_state is not None:
            initial_state = initial_state.float().contiguous()
        result = ssd_forward(
            x, dt, A.contiguous(), B, C, geo, D=None if D is None else D.contiguous(), z=z,
            dt_bias=None if dt_bias is None else dt_bias.contiguous(), dt_softplus=dt_softplus,
            dt_limit=dt_limit, initial_state=initial_state, seg=seg, store_ungated=any(ctx.needs_input_grad),
        )
        ctx.geo, ctx.dt_softplus, ctx.dt_limit = geo, dt_softplus, dt_limit
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, seg, *result)
        return result.y, result.states[:, -1].clone()

    @staticmethod
    def backward(ctx, dout, final_state_grad):
        x, dt, A, B, C, D, z, dt_bias, seg, *result = ctx.saved_tensors
        saved = ForwardResult(*result)
        if dout is None:
            dout = torch.zeros_like(saved.y)
        if final_state_grad is not None:
            final_state_grad = final_state_grad.float().contiguous()
        grads = ssd_backward(
            dout, final_state_grad, saved, x, dt, A.contiguous(), B, C, ctx.geo,
            D=None if D is None else D.contiguous(), z=z,
            dt_bias=None if dt_bias is None else dt_bias.contiguous(), dt_softplus=ctx.dt_softplus,
            dt_limit=ctx.dt_limit, seg=seg,
        )
        values = (grads.dx, grads.ddt, grads.dA, grads.dB, grads.dC, grads.dD, grads.dz, grads.ddt_bias,
                  grads.dinitial_state)
        out = [value.to(dtype) if needed else None
               for value, dtype, needed in zip(values, ctx.input_dtypes, ctx.needs_input_grad)]
        return (*out, None, None, None, None)


def ssd_scan(
    x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
    dt_limit=(0.0, math.inf), initial_state=None, seq_idx=None, return_final_state=False,
):
    """Mamba-2 SSD scan (Triton): scalar decay per head.

    x: (b, l, h, p); dt: (b, l, h); A: (h,); B, C: (b, l, g, n) with g dividing h; D: (h,) or (h, p);
    z: (b, l, h, p); dt_bias: (h,); initial_state: (b, h, p, n); seq_idx: (b, l) int.
    ``chunk_size`` tiles the work and does not change the result; the kernels round it up to a power of
    two >= 16 (a checkpoint's chunk_size of 8, say, runs with 16-step chunks).
    Returns y (b, l, h, p) in x's dtype and, with ``return_final_state``, the state (b, h, p, n) fp32.
    Differentiable in every tensor input and in the returned final state.
    """
    _check_inputs(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx)
    lo, hi = (float(v) for v in dt_limit)
    limit = None if (lo, hi) == (0.0, math.inf) else (lo, hi)
    y, final_state = _SSDScanFunction.apply(
        x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, max(16, 1 << (int(chunk_size) - 1).bit_length()),
        dt_softplus, limit,
    )
    return (y, final_state) if return_final_state else y


def _check_inputs(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx):
    batch, length, heads, head_dim = x.shape
    groups, state_dim = B.shape[2], B.shape[3]
    expected = {
        "dt": (dt, (batch, length, heads)), "A": (A, (heads,)), "B": (B, (batch, length, groups, state_dim)),
        "C": (C, (batch, length, groups, state_dim)), "z": (z, tuple(x.shape)), "dt_bias": (dt_bias, (heads,)),
        "initial_state": (initial_state, (batch, heads, head_dim, state_dim)), "seq_idx": (seq_idx, (batch, length)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"ssd_scan: {name} has shape {tuple(tensor.shape)}, expected {shape}")
    if D is not None and tuple(D.shape) not in ((heads,), (heads, head_dim)):
        raise ValueError(f"ssd_scan: D has shape {tuple(D.shape)}, expected ({heads},) or ({heads}, {head_dim})")
    if heads % groups:
        raise ValueError(f"ssd_scan: {heads} heads cannot be split into {groups} groups")
