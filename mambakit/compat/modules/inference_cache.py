"""mamba_ssm's inference cache on mambakit's mixers, shared by ``Mamba``, ``Mamba2`` and ``MambaLMHeadModel``.

mamba_ssm keeps one (conv_state, ssm_state) per layer in ``InferenceParams.key_value_memory_dict[layer_idx]``:
conv_state (b, c, k) holds the last k conv inputs (c channels, k = d_conv); ssm_state is (b, d, n) for
Mamba-1, (b, h, p, n) for Mamba-2. mambakit's mixers continue from the last k-1 inputs, which are
``conv_state[..., 1:]`` (column 0 is what the next step rolls out; it is never read, and a prefill here
leaves it zero). SSM states are fp32 whatever the model dtype (mamba_ssm: the model dtype).

Forward with ``inference_params``: at ``seqlen_offset == 0`` the states restart from zero (a prefill); later,
one token goes through ``step`` and several through the parallel forward from the cached state.
"""
from __future__ import annotations

import torch

from mambakit.compat.errors import CompatError


def allocate_layer_cache(mixer, batch_size: int, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero (conv_state (b, c, k) in ``dtype`` or the conv weight's, ssm_state fp32) for one mambakit mixer."""
    (channels, history), ssm_shape = mixer.state_shapes()
    weight = mixer.conv1d.weight
    conv_state = torch.zeros(batch_size, channels, history + 1, device=weight.device, dtype=dtype or weight.dtype)
    ssm_state = torch.zeros(batch_size, *ssm_shape, device=weight.device, dtype=torch.float32)
    return conv_state, ssm_state


def layer_cache(inference_params, layer_idx, mixer, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached states of layer ``layer_idx``, allocated (zero) on first use as mamba_ssm does."""
    if layer_idx is None:
        raise CompatError("a Mamba block needs layer_idx=... to keep its state in inference_params")
    cache = inference_params.key_value_memory_dict
    if layer_idx not in cache:
        cache[layer_idx] = allocate_layer_cache(mixer, batch_size)
    return cache[layer_idx]


def conv_history(conv_state: torch.Tensor) -> torch.Tensor:
    """The last k-1 conv inputs (a view of conv_state (b, c, k)), which mambakit's parallel forward continues from."""
    return conv_state[..., 1:]


class CacheAsState:
    """mamba_ssm layer caches {i: (conv (b, c, k), ssm)} seen as mambakit's state (``layer(i)``).

    ``for_step``: the whole conv_state (the decode step rolls it, as mamba_ssm's does); otherwise its last
    k-1 columns, the history the parallel forward continues from and writes back.
    """

    def __init__(self, caches: dict, for_step: bool):
        self.caches, self.for_step = caches, for_step

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        conv_state, ssm_state = self.caches[index]
        return (conv_state if self.for_step else conv_history(conv_state)), ssm_state


def restart_if_prefill(inference_params, caches) -> None:
    """At ``seqlen_offset == 0`` the states restart from zero (mamba_ssm overwrites them with the prefill's)."""
    if inference_params.seqlen_offset == 0:
        for conv_state, ssm_state in caches:
            conv_state.zero_()
            ssm_state.zero_()


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """cu_seqlens (s+1,) cumulative lengths of s packed sequences -> seq_idx (1, length) int32."""
    positions = torch.arange(length, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].to(positions.dtype), positions, right=True).to(torch.int32)[None]


class CachedMixer:
    """Mixin for a mambakit mixer: mamba_ssm's ``step``, ``allocate_inference_cache`` and cached forward.

    The mixer class after it in the MRO provides ``forward(hidden, state=…, seq_idx=…)`` and
    ``step(hidden (b, d_model), conv_state, ssm_state)``.
    """

    layer_idx: int | None = None

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """Zero (conv_state (b, c, d_conv), ssm_state) for ``batch_size`` rows (``max_seqlen`` is not needed)."""
        return allocate_layer_cache(self, batch_size, dtype)

    def step(self, hidden_states, conv_state, ssm_state):
        """One token: hidden_states (b, 1, d_model) -> (out (b, 1, d_model), conv_state, ssm_state), states in place."""
        if hidden_states.dim() != 3 or hidden_states.shape[1] != 1:
            raise CompatError(f"step decodes one token at a time: hidden_states must be (batch, 1, d_model), got "
                              f"{tuple(hidden_states.shape)}")
        out = super().step(hidden_states[:, 0], conv_state, ssm_state)
        return out.unsqueeze(1), conv_state, ssm_state

    def _cached_forward(self, hidden_states, inference_params, seq_idx=None):
        """hidden_states (b, l, d_model) -> (b, l, d_model), through and into this layer's cached states."""
        conv_state, ssm_state = layer_cache(inference_params, self.layer_idx, self, hidden_states.shape[0])
        if inference_params.seqlen_offset > 0 and hidden_states.shape[1] == 1:
            return self.step(hidden_states, conv_state, ssm_state)[0]
        restart_if_prefill(inference_params, [(conv_state, ssm_state)])
        return super().forward(hidden_states, state=(conv_history(conv_state), ssm_state), seq_idx=seq_idx)
