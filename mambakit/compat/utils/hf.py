"""mamba_ssm.utils.hf: read a checkpoint's config and weights, from a local folder or the hub.

Both checkpoint layouts are read (state-spaces: config.json + pytorch_model.bin; HF transformers: safetensors,
possibly sharded) and given back in mamba_ssm's terms: the state-spaces config fields and parameter names.
"""
from __future__ import annotations

import torch

from mambakit import checkpoint


def load_config_hf(model_name) -> dict:
    """The checkpoint's config as state-spaces config.json fields (``MambaConfig(**load_config_hf(name))``)."""
    return checkpoint.read_config(checkpoint.resolve(model_name)).to_state_spaces()


def load_state_dict_hf(model_name, device=None, dtype=None) -> dict[str, torch.Tensor]:
    """The weights under mamba_ssm's names (``backbone.embedding.…``, ``lm_head.weight`` even when tied),
    cast to ``dtype`` (floating tensors) and moved to ``device`` when given."""
    folder = checkpoint.resolve(model_name)
    state_dict = checkpoint.to_mambakit_keys(checkpoint.read_state_dict(folder))
    if "lm_head.weight" not in state_dict and checkpoint.read_config(folder).tie_embeddings:
        state_dict["lm_head.weight"] = state_dict["backbone.embedding.weight"]
    return {name: tensor.to(device=device, dtype=dtype if dtype is not None and tensor.is_floating_point() else None)
            for name, tensor in state_dict.items()}
