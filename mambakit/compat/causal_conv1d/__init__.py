"""The ``causal_conv1d`` package's API (``causal_conv1d_fn``, ``causal_conv1d_update``) over mambakit's ops.

Glossary: b batch, d channels, l length, k conv width, s conv-state width (>= k-1). The ``*_ref`` twins
run mambakit's plain-PyTorch reference whatever the device.
"""
from __future__ import annotations

import torch

from mambakit import ops
from mambakit.compat.errors import CompatError


def _conv(conv, x, weight, bias, seq_idx, initial_states, return_final_states, final_states_out, activation):
    if not return_final_states:
        return conv(x, weight, bias, activation, initial_state=initial_states, seq_idx=seq_idx)
    out, final = conv(x, weight, bias, activation, initial_state=initial_states, seq_idx=seq_idx,
                      return_final_state=True)
    if final_states_out is not None:
        final = final_states_out.copy_(final)
    return out, final


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """Depthwise causal conv over time, then SiLU when ``activation`` is "silu" / "swish".

    x: (b, d, l); weight: (d, k); bias: (d,); seq_idx: (b, l) int32 packed-sequence ids; initial_states:
    (b, d, k-1), the inputs before x. Returns out (b, d, l) in x's dtype; with ``return_final_states``,
    (out, final_states (b, d, k-1)), written into ``final_states_out`` when given.
    """
    return _conv(ops.causal_conv1d, x, weight, bias, seq_idx, initial_states, return_final_states, final_states_out,
                 activation)


def causal_conv1d_ref(x, weight, bias=None, initial_states=None, return_final_states=False, final_states_out=None,
                      activation=None):
    """``causal_conv1d_fn`` through mambakit's plain-PyTorch reference."""
    return _conv(ops.causal_conv1d.reference, x, weight, bias, None, initial_states, return_final_states,
                 final_states_out, activation)


def _update(update, x, conv_state, weight, bias, activation, cache_seqlens, conv_state_indices):
    if cache_seqlens is not None:
        raise CompatError("causal_conv1d_update(cache_seqlens=...) (a circular conv state) is not supported by "
                          "mambakit; keep the state in order (cache_seqlens=None)")
    state = conv_state if conv_state_indices is None else conv_state[conv_state_indices]
    if x.dim() == 2:
        out = update(x, state, weight, bias, activation)
    else:  # (b, d, l): l tokens, one after the other
        out = torch.stack([update(x[..., t], state, weight, bias, activation) for t in range(x.shape[-1])], dim=-1)
    if conv_state_indices is not None:
        conv_state[conv_state_indices] = state
    return out


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None):
    """Decoding steps of the causal conv; ``conv_state`` (b, d, s), the latest inputs oldest first, rolls in place.

    x: (b, d) or (b, d, l) (l tokens in a row); weight: (d, k); bias: (d,); conv_state_indices (b,): the rows
    of a larger ``conv_state`` (slots) that x's rows advance. Returns out like x.
    """
    return _update(ops.causal_conv1d_update, x, conv_state, weight, bias, activation, cache_seqlens,
                   conv_state_indices)


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                             conv_state_indices=None):
    """``causal_conv1d_update`` through mambakit's plain-PyTorch reference."""
    return _update(ops.causal_conv1d_update.reference, x, conv_state, weight, bias, activation, cache_seqlens,
                   conv_state_indices)
