"""mamba_ssm.modules.mamba_simple: ``Mamba``, the Mamba-1 block, as mambakit's Mamba-1 mixer.

Shapes: b batch, l length, d_model block width, d = d_inner = expand·d_model, n = d_state, k = d_conv.
Parameters have mamba_ssm's names and shapes (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj),
so its state dicts load as they are.
"""
from __future__ import annotations

import torch

from mambakit.compat.errors import CompatError
from mambakit.compat.modules.inference_cache import CachedMixer
from mambakit.config import MambaConfig
from mambakit.layers.mamba1 import Mamba1Mixer


class Mamba(CachedMixer, Mamba1Mixer):
    """The Mamba-1 block: (b, l, d_model) -> (b, l, d_model), with mamba_ssm's constructor and methods.

    ``use_fast_path`` is accepted and has no effect (mambakit picks its Triton kernels on CUDA and the
    PyTorch reference elsewhere). A_log and D stay fp32 whatever dtype the module is cast to.
    """

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1,
                 dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False, use_fast_path=True,
                 layer_idx=None, device=None, dtype=None):
        if dt_init not in ("random", "constant"):
            raise CompatError(f"Mamba(dt_init={dt_init!r}): use 'random' or 'constant'")
        config = MambaConfig(model_type="mamba", d_model=d_model, n_layer=1, vocab_size=1, d_state=d_state,
                             d_conv=d_conv, expand=expand, dt_rank=dt_rank, conv_bias=conv_bias, bias=bias)
        super().__init__(config)
        self.d_model, self.d_conv, self.expand, self.d_inner = d_model, d_conv, expand, config.d_inner
        self.use_fast_path, self.layer_idx, self.activation = use_fast_path, layer_idx, "silu"
        self.reset_parameters(dt_min, dt_max, dt_init_floor)
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(self.dt_rank ** -0.5 * dt_scale)
            else:  # uniform in ±dt_rank^-0.5 from reset_parameters, scaled
                self.dt_proj.weight.mul_(dt_scale)
        self.dt_proj.bias._no_reinit = True  # mamba_ssm's markers, read by its init and optimizer recipes
        self.A_log._no_weight_decay = self.D._no_weight_decay = True
        self.to(device=device, dtype=dtype)

    def forward(self, hidden_states, inference_params=None):
        """hidden_states (b, l, d_model) -> (b, l, d_model); with ``inference_params``, through its cached state."""
        if inference_params is not None:
            return self._cached_forward(hidden_states, inference_params)
        return super().forward(hidden_states)
