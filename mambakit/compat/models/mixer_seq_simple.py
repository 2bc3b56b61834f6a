"""mamba_ssm.models.mixer_seq_simple: ``MambaLMHeadModel``, a language model with mamba_ssm's interface.

It is a ``mambakit.MambaLM`` (same modules and parameter names as mamba_ssm's: ``backbone.embedding``,
``backbone.layers.{i}.norm`` / ``.mixer``, ``backbone.norm_f``, ``lm_head``) whose ``forward`` takes mamba_ssm's
arguments and returns its namedtuple, plus ``generate`` (see ``mambakit.compat.utils.generation``).
``model.config`` is mambakit's MambaConfig; it also answers mamba_ssm's fields (``ssm_cfg``, ``rms_norm``, …).
Called with mambakit's keywords (``labels``, ``attention_mask``, ``state``, ``logits_to_keep``, …), ``forward`` is
``MambaLM.forward``, so mambakit's Generator, trainer and evaluation take a MambaLMHeadModel as it is.
"""
from __future__ import annotations

import dataclasses
from collections import namedtuple

import torch

from mambakit import config as core
from mambakit.compat.errors import CompatError
from mambakit.compat.models.config_mamba import MambaConfig
from mambakit.compat.modules.inference_cache import (CacheAsState, allocate_layer_cache, layer_cache,
                                                     restart_if_prefill, seq_idx_from_cu_seqlens)
from mambakit.compat.utils.generation import GenerationMixin
from mambakit.loading import load_model
from mambakit.model import MambaLM

CausalLMOutput = namedtuple("CausalLMOutput", ["logits"])
_CORE_ONLY_ARGUMENTS = ("labels", "attention_mask", "state", "return_state", "logits_to_keep", "return_logits")
_STATE_SPACES_ONLY = ("d_intermediate", "ssm_cfg", "attn_layer_idx", "attn_cfg", "rms_norm", "fused_add_norm")


class ModelConfig(core.MambaConfig):
    """mambakit's MambaConfig that also answers the mamba_ssm MambaConfig fields it has no field for."""

    def __getattr__(self, name):
        if name in _STATE_SPACES_ONLY:
            return self.to_state_spaces()[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _model_config(config) -> ModelConfig:
    if isinstance(config, MambaConfig):
        config = config.to_mambakit()
    return ModelConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(core.MambaConfig)})


class MambaLMHeadModel(MambaLM, GenerationMixin):
    """mamba_ssm's language model: ``MambaLMHeadModel(config)`` (random init) or ``.from_pretrained(name)``."""

    def __init__(self, config, initializer_cfg=None, device=None, dtype=None):
        """config: mamba_ssm's MambaConfig (or mambakit's). initializer_cfg: {"initializer_range": std of the
        embedding (0.02)}; ssm_cfg's dt_min / dt_max / dt_init_floor (and Mamba-2's A_init_range) shape the
        mixers' initialisation as in mamba_ssm."""
        super().__init__(_model_config(config))
        initializer_cfg = dict(initializer_cfg or {})
        if not initializer_cfg.pop("rescale_prenorm_residual", True) or initializer_cfg.keys() - {"initializer_range"}:
            raise CompatError(f"initializer_cfg {initializer_cfg}: mambakit supports initializer_range only (and the "
                              "GPT-2 style rescale of out_proj, rescale_prenorm_residual=True)")
        self.reset_parameters(**initializer_cfg)
        ssm_cfg = config.ssm_cfg if isinstance(config, MambaConfig) else {}
        mixer_init = {k: v for k, v in ssm_cfg.items() if k in ("dt_min", "dt_max", "dt_init_floor", "A_init_range")}
        if mixer_init:
            for block in self.backbone.layers:
                block.mixer.reset_parameters(**mixer_init)
        self.to(device=device, dtype=dtype)

    def tie_weights(self):
        if self.config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """{layer index: (conv_state (b, c, d_conv), ssm_state)}, zero, as mamba_ssm's (``max_seqlen`` unused)."""
        return {i: allocate_layer_cache(block.mixer, batch_size, dtype) for i, block in enumerate(self.backbone.layers)}

    def forward(self, input_ids, position_ids=None, inference_params=None, num_last_tokens=0, **mixer_kwargs):
        """input_ids (b, l) -> CausalLMOutput(logits (b, l', padded vocab)); l' = num_last_tokens if > 0, else l.

        position_ids is accepted and unused (as in mamba_ssm). inference_params: the per-layer states in its
        ``key_value_memory_dict`` (see ``mambakit.compat.modules.inference_cache``). mixer_kwargs: seq_idx
        (b, l) or cu_seqlens (s+1,) for packed sequences; or mambakit's keywords (then: MambaLM.forward).
        """
        seq_idx, cu_seqlens = mixer_kwargs.pop("seq_idx", None), mixer_kwargs.pop("cu_seqlens", None)
        if cu_seqlens is not None and seq_idx is None:
            seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, input_ids.shape[1])
        core_kwargs = {name: mixer_kwargs.pop(name) for name in _CORE_ONLY_ARGUMENTS if name in mixer_kwargs}
        if mixer_kwargs:
            raise CompatError(f"MambaLMHeadModel.forward: unsupported argument(s) {', '.join(mixer_kwargs)}")
        if core_kwargs:  # mambakit's own tools (Generator, trainer, eval) call it with mambakit's keywords
            if inference_params is not None or num_last_tokens:
                raise CompatError("MambaLMHeadModel.forward takes mamba_ssm's arguments or mambakit's, not both")
            return MambaLM.forward(self, input_ids, seq_idx=seq_idx, **core_kwargs)
        if inference_params is None:
            logits = MambaLM.forward(self, input_ids, seq_idx=seq_idx, logits_to_keep=num_last_tokens).logits
            return CausalLMOutput(logits=logits)
        batch = input_ids.shape[0]
        caches = {i: layer_cache(inference_params, i, block.mixer, batch) for i, block in enumerate(self.backbone.layers)}
        if inference_params.seqlen_offset > 0 and input_ids.shape[1] == 1:
            return CausalLMOutput(logits=MambaLM.step(self, input_ids[:, 0], CacheAsState(caches, True))[:, None])
        restart_if_prefill(inference_params, caches.values())
        logits = MambaLM.forward(self, input_ids, state=CacheAsState(caches, False), seq_idx=seq_idx,
                                 logits_to_keep=num_last_tokens).logits
        return CausalLMOutput(logits=logits)

    @classmethod
    def from_pretrained(cls, pretrained_model_name, device=None, dtype=None, **kwargs):
        """A checkpoint folder or hub id, either layout (state-spaces or HF), on ``device`` (default cpu) in
        ``dtype`` (default torch's default dtype, as mamba_ssm). A_log, D and dt_bias stay fp32."""
        loaded = load_model(pretrained_model_name, device=device or "cpu", dtype=dtype or torch.get_default_dtype())
        with torch.device("meta"):
            model = cls(loaded.config, **kwargs)
        model.load_state_dict(loaded.state_dict(), assign=True)  # the loaded tensors themselves, no copy
        model.tie_weights()
        return model

    def save_pretrained(self, save_directory):
        """config.json and pytorch_model.bin in the state-spaces layout, as mamba_ssm writes them."""
        return MambaLM.save_pretrained(self, save_directory, layout="state-spaces")
