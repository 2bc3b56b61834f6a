"""Tiny random checkpoints made by HF transformers (the reference), saved in HF and state-spaces layouts.

No hub is reachable here, so equivalence with transformers' own Mamba classes on the same random
weights is the proof that real checkpoints load and run.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
import transformers

VOCAB = 264  # a multiple of 8, so the state-spaces layout needs no extra padding rows

KINDS = {
    "mamba": (transformers.MambaConfig, transformers.MambaForCausalLM,
              dict(hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4)),
    "falcon_mamba": (transformers.FalconMambaConfig, transformers.FalconMambaForCausalLM,
                     dict(hidden_size=32, state_size=8, num_hidden_layers=2, tie_word_embeddings=False,
                          mixer_rms_eps=1e-6)),
    "mamba2": (transformers.Mamba2Config, transformers.Mamba2ForCausalLM,
               dict(hidden_size=32, state_size=16, num_hidden_layers=2, num_heads=8, head_dim=8, n_groups=1,
                    chunk_size=8, tie_word_embeddings=False)),
    "mamba2_groups": (transformers.Mamba2Config, transformers.Mamba2ForCausalLM,
                      dict(hidden_size=32, state_size=16, num_hidden_layers=2, num_heads=8, head_dim=8, n_groups=4,
                           chunk_size=8, tie_word_embeddings=False)),
}


def hf_groups_gated_norm() -> bool:
    """Whether this transformers normalises Mamba-2's gated RMSNorm per group, as mamba_ssm (and
    mambakit) do. Older releases (e.g. 5.17, on the GPU machine) normalise over all groups at once,
    which is only the same model when n_groups == 1 (transformers PR #40861)."""
    from transformers.models.mamba2.modeling_mamba2 import MambaRMSNormGated

    return "group_size" in inspect.signature(MambaRMSNormGated.__init__).parameters


def skip_unless_comparable(kind: str) -> None:
    import pytest

    if kind == "mamba2_groups" and not hf_groups_gated_norm():
        pytest.skip(f"transformers {transformers.__version__} normalises Mamba-2 n_groups > 1 over all groups")


def hf_model(kind: str, seed: int = 0):
    """A random HF model of ``kind`` (fp32, eval mode), with non-trivial A_log/D/dt so the tests bite."""
    config_cls, model_cls, kwargs = KINDS[kind]
    torch.manual_seed(seed)
    model = model_cls(config_cls(vocab_size=VOCAB, pad_token_id=0, bos_token_id=0, eos_token_id=0, **kwargs))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("D", "dt_bias", "norm.weight", "norm_f.weight")):
                param.add_(0.3 * torch.randn_like(param))
    return model.eval()


def save_hf(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def save_state_spaces(model, folder: Path) -> Path:
    """Rewrite an HF model as mamba_ssm writes its checkpoints: its config.json and pytorch_model.bin."""
    cfg = model.config
    folder.mkdir(parents=True, exist_ok=True)
    if cfg.model_type == "mamba2":
        ssm_cfg = dict(layer="Mamba2", d_state=cfg.state_size, d_conv=cfg.conv_kernel, expand=cfg.expand,
                       headdim=cfg.head_dim, ngroups=cfg.n_groups, chunk_size=cfg.chunk_size)
    else:
        ssm_cfg = dict(layer="Mamba1", d_state=cfg.state_size, d_conv=cfg.conv_kernel, expand=cfg.expand)
        if cfg.model_type == "falcon_mamba":
            ssm_cfg["mixer_rms_eps"] = cfg.mixer_rms_eps
    config = dict(d_model=cfg.hidden_size, d_intermediate=0, n_layer=cfg.num_hidden_layers,
                  vocab_size=cfg.vocab_size, ssm_cfg=ssm_cfg, attn_layer_idx=[], attn_cfg={}, rms_norm=True,
                  residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8,
                  tie_embeddings=bool(cfg.tie_word_embeddings))
    (folder / "config.json").write_text(json.dumps(config))
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone()
             for k, v in model.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")
    return folder
