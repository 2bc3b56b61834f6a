"""mamba_ssm.ops.triton.ssd_combined: ``mamba_chunk_scan_combined``, Mamba-2's SSD scan, over ``mambakit.ops.ssd_scan``.

Glossary: b batch, l length, h heads, p head dim, g groups sharing B and C, n state size.
"""
from __future__ import annotations

import math

from mambakit import ops
from mambakit.compat.errors import CompatError


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, math.inf),
                              return_final_states=False, return_varlen_states=False):
    """h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_tᵀ per head; y_t = h_t C_t + D x_t, times silu(z_t) when z is given.

    x: (b, l, h, p); dt: (b, l, h); A: (h,); B, C: (b, l, g, n); D: (h, p) or (h,); z: (b, l, h, p);
    dt_bias: (h,); Δ = clamp(softplus?(dt + dt_bias), *dt_limit); initial_states: (b, h, p, n);
    seq_idx: (b, l) int32, the state restarts where it changes (packed sequences); ``chunk_size`` only tiles
    the work. Returns out (b, l, h, p), and with ``return_final_states`` (out, final_states (b, h, p, n) fp32).
    ``cu_seqlens`` is only read by ``return_varlen_states``, which mambakit does not provide.
    """
    if return_varlen_states:
        raise CompatError("mamba_chunk_scan_combined(return_varlen_states=True) is not supported by mambakit; "
                          "run each sequence with return_final_states=True instead")
    return ops.ssd_scan(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                        dt_limit=dt_limit, initial_state=initial_states, seq_idx=seq_idx,
                        return_final_state=return_final_states)
