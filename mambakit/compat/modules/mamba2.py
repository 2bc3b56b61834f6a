"""mamba_ssm.modules.mamba2: ``Mamba2``, the Mamba-2 (SSD) block, as mambakit's Mamba-2 mixer.

Shapes: b batch, l length, d = d_inner = expand·d_model, h = d/headdim heads, p = headdim, g = ngroups,
n = d_state, c = d + 2·g·n conv channels. Parameters have mamba_ssm's names and shapes (in_proj, conv1d,
dt_bias, A_log, D, norm, out_proj), so its state dicts load as they are.
"""
from __future__ import annotations

import math

from torch import nn

from mambakit.compat.errors import CompatError
from mambakit.compat.modules.inference_cache import CachedMixer, seq_idx_from_cu_seqlens
from mambakit.config import MambaConfig
from mambakit.layers.mamba2 import Mamba2Mixer


class Mamba2(CachedMixer, Mamba2Mixer):
    """The Mamba-2 block: (b, l, d_model) -> (b, l, d_model), with mamba_ssm's constructor and methods.

    Supported: the gated RMSNorm after the gate (rmsnorm=True, norm_before_gate=False), D per head,
    d_ssm = d_inner, no tensor parallelism; other values raise CompatError. ``use_mem_eff_path`` and
    ``sequence_parallel`` are accepted and have no effect. A_log, D and dt_bias stay fp32.
    """

    def __init__(self, d_model, d_state=128, d_conv=4, conv_init=None, expand=2, headdim=64, d_ssm=None, ngroups=1,
                 A_init_range=(1, 16), D_has_hdim=False, rmsnorm=True, norm_before_gate=False, dt_min=0.001,
                 dt_max=0.1, dt_init_floor=1e-4, dt_limit=(0.0, math.inf), bias=False, conv_bias=True,
                 chunk_size=256, use_mem_eff_path=True, layer_idx=None, process_group=None, sequence_parallel=True,
                 device=None, dtype=None):
        for name, value, supported in (("d_ssm", d_ssm, d_ssm in (None, expand * d_model)),
                                       ("D_has_hdim", D_has_hdim, not D_has_hdim), ("rmsnorm", rmsnorm, rmsnorm),
                                       ("norm_before_gate", norm_before_gate, not norm_before_gate),
                                       ("process_group", process_group, process_group is None)):
            if not supported:
                raise CompatError(f"Mamba2({name}={value!r}) is not supported by mambakit")
        config = MambaConfig(model_type="mamba2", d_model=d_model, n_layer=1, vocab_size=1, d_state=d_state,
                             d_conv=d_conv, expand=expand, headdim=headdim, ngroups=ngroups, chunk_size=chunk_size,
                             dt_limit=(float(dt_limit[0]), float(dt_limit[1])), conv_bias=conv_bias, bias=bias)
        super().__init__(config)
        self.d_model, self.d_conv, self.expand, self.d_ssm = d_model, d_conv, expand, config.d_inner
        self.conv_init, self.layer_idx, self.activation = conv_init, layer_idx, "silu"
        self.rmsnorm, self.norm_before_gate, self.D_has_hdim = True, False, False
        self.use_mem_eff_path, self.sequence_parallel = use_mem_eff_path, sequence_parallel
        self.reset_parameters(dt_min, dt_max, dt_init_floor, A_init_range)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)  # nn.init runs without autograd
        self.A_log._no_weight_decay = self.D._no_weight_decay = self.dt_bias._no_weight_decay = True
        self.to(device=device, dtype=dtype)

    def forward(self, u, seqlen=None, seq_idx=None, cu_seqlens=None, inference_params=None):
        """u (b, l, d_model), or (b·l, d_model) with ``seqlen`` = l -> the same shape.

        seq_idx (b, l) int32 or cu_seqlens (s+1,) (with b = 1): packed sequences, the state restarts at
        each one. With ``inference_params``, the block runs through its cached state.
        """
        flat = seqlen is not None
        hidden_states = u.reshape(-1, seqlen, u.shape[-1]) if flat else u
        if cu_seqlens is not None and seq_idx is None:
            seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, hidden_states.shape[1])
        if inference_params is not None:
            out = self._cached_forward(hidden_states, inference_params, seq_idx=seq_idx)
        else:
            out = super().forward(hidden_states, seq_idx=seq_idx)
        return out.reshape(u.shape[0], -1) if flat else out
