"""mamba_ssm.ops.selective_scan_interface: ``selective_scan_fn`` and ``mamba_inner_fn`` over mambakit's ops.

Glossary (as in ``mambakit.ops.reference``): b batch, l length, d channels (d_inner), n state size (d_state),
g groups sharing B and C, k conv width, r dt rank. The ``*_ref`` twins run mambakit's plain-PyTorch
reference whatever the device (mamba_ssm's test oracles of the same names).
"""
from __future__ import annotations

import torch.nn.functional as F

from mambakit import ops
from mambakit.compat.errors import CompatError


def _variable(BC, batch: int, length: int, name: str):
    """B or C as the scan takes it: (b, n, l) / (b, g, n, l) pass; a constant (d, n) becomes (b, d, n, l)."""
    if BC.is_complex():
        raise CompatError(f"complex {name} is not supported by mambakit (real-valued Mamba only)")
    if BC.dim() == 2:
        return BC[None, :, :, None].expand(batch, -1, -1, length)
    return BC


def _selective_scan(scan, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    if A.is_complex():
        raise CompatError("complex A is not supported by mambakit (real-valued Mamba only)")
    batch, _, length = u.shape
    return scan(u, delta, A, _variable(B, batch, length, "B"), _variable(C, batch, length, "C"), D, z,
                delta_bias=delta_bias, delta_softplus=delta_softplus, return_final_state=return_last_state)


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """The selective scan: h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t ; out_t = (C_t h_t + D u_t) * silu(z_t).

    u, delta: (b, d, l); A: (d, n); B, C: (b, n, l), (b, g, n, l) or a constant (d, n); D: (d,); z: (b, d, l);
    delta_bias: (d,) (added to delta, before softplus when ``delta_softplus``).
    Returns out (b, d, l) in u's dtype; with ``return_last_state``, (out, last_state (b, d, n) fp32).
    """
    return _selective_scan(ops.selective_scan, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                           return_last_state)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """``selective_scan_fn`` through mambakit's plain-PyTorch reference."""
    return _selective_scan(ops.selective_scan.reference, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                           return_last_state)


def _mamba_inner(conv, scan, rms_norm, xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                 out_proj_weight, out_proj_bias, A, B, C, D, delta_bias, B_proj_bias, C_proj_bias, delta_softplus,
                 b_rms_weight, c_rms_weight, dt_rms_weight, b_c_dt_rms_eps):
    batch, _, length = xz.shape
    rank, d_state = delta_proj_weight.shape[1], A.shape[-1]
    x, z = xz.chunk(2, dim=1)  # (b, d, l) each
    x = conv(x, conv1d_weight.reshape(conv1d_weight.shape[0], -1), conv1d_bias, "silu")
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)  # (b, l, r + 2n)
    delta = F.linear(x_dbl[..., :rank], delta_proj_weight)  # (b, l, d)
    if dt_rms_weight is not None:
        delta = rms_norm(delta, dt_rms_weight, b_c_dt_rms_eps)[0]
    projected = {"B": (B, B_proj_bias, b_rms_weight, x_dbl[..., rank:rank + d_state]),
                 "C": (C, C_proj_bias, c_rms_weight, x_dbl[..., -d_state:])}
    for name, (given, bias, rms_weight, from_x) in projected.items():
        if given is None:  # input-dependent: (b, l, n) -> (b, n, l)
            given = from_x if bias is None else from_x + bias.to(from_x.dtype)
            if rms_weight is not None:
                given = rms_norm(given, rms_weight, b_c_dt_rms_eps)[0]
            given = given.transpose(1, 2)
        projected[name] = given
    y = _selective_scan(scan, x, delta.transpose(1, 2), A, projected["B"], projected["C"], D, z, delta_bias,
                        delta_softplus, False)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                   out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                   delta_softplus=True, checkpoint_lvl=1, b_rms_weight=None, c_rms_weight=None,
                   dt_rms_weight=None, b_c_dt_rms_eps=1e-6):
    """A whole Mamba-1 mixer after in_proj: conv -> SiLU -> x_proj -> dt_proj -> selective scan -> out_proj.

    xz: (b, 2d, l) (in_proj's output, channels first); conv1d_weight: (d, 1, k); conv1d_bias: (d,);
    x_proj_weight: (r + 2n, d); delta_proj_weight: (d, r); out_proj_weight: (d_model, d); A: (d, n);
    B, C: None (taken from x_proj, plus ``B_proj_bias`` / ``C_proj_bias`` (n,)) or given as for
    ``selective_scan_fn``; D, delta_bias: (d,); ``*_rms_weight``: weighted RMSNorm of B, C (n,) and Δ (d,)
    before the scan. Returns (b, l, d_model). ``checkpoint_lvl`` (a CUDA-memory option) is accepted and
    has no effect: autograd keeps what the ops need.
    """
    return _mamba_inner(ops.causal_conv1d, ops.selective_scan, ops.rms_norm, xz, conv1d_weight, conv1d_bias,
                        x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, A, B, C, D, delta_bias,
                        B_proj_bias, C_proj_bias, delta_softplus, b_rms_weight, c_rms_weight, dt_rms_weight,
                        b_c_dt_rms_eps)


def mamba_inner_ref(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                    out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                    delta_softplus=True, b_rms_weight=None, c_rms_weight=None, dt_rms_weight=None,
                    b_c_dt_rms_eps=1e-6):
    """``mamba_inner_fn`` through mambakit's plain-PyTorch reference ops."""
    return _mamba_inner(ops.causal_conv1d.reference, ops.selective_scan.reference, ops.rms_norm.reference, xz,
                        conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias,
                        A, B, C, D, delta_bias, B_proj_bias, C_proj_bias, delta_softplus, b_rms_weight, c_rms_weight,
                        dt_rms_weight, b_c_dt_rms_eps)
