"""mamba_ssm.ops.triton.selective_state_update: one decoding step of the SSM, over mambakit's op.

The ``*_ref`` twin runs mambakit's plain-PyTorch reference whatever the device.
"""
from __future__ import annotations

from mambakit import ops


def _state_update(update, state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices):
    if state_batch_indices is None:
        return update(state, x, dt, A, B, C, D, z, dt_bias=dt_bias, dt_softplus=dt_softplus)
    rows = state[state_batch_indices]  # a copy: the op advances it, then it goes back to its slots
    out = update(rows, x, dt, A, B, C, D, z, dt_bias=dt_bias, dt_softplus=dt_softplus)
    state[state_batch_indices] = rows
    return out


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None):
    """Advance ``state`` in place by one token and return the output y = (C h + D x) * silu(z).

    Mamba-1 layout: state (b, d, n); x, dt, z: (b, d); A: (d, n); B, C: (b, n); D, dt_bias: (d,).
    Mamba-2 layout: state (b, h, p, n); x, dt, z: (b, h, p); A: (h, p, n); B, C: (b, g, n); D, dt_bias: (h, p).
    ``state_batch_indices`` (b,): the rows of a larger ``state`` (slots) that x's rows advance.
    Returns y like x.
    """
    return _state_update(ops.selective_state_update, state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                         state_batch_indices)


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                               state_batch_indices=None):
    """``selective_state_update`` through mambakit's plain-PyTorch reference."""
    return _state_update(ops.selective_state_update.reference, state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                         state_batch_indices)
