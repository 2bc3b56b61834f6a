"""``mambakit.load``: one call from a name (folder, hub id or built-in preset) to model + tokenizer."""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import PreTrainedTokenizerBase

from mambakit import checkpoint
from mambakit.config import MambaConfig
from mambakit.errors import UserError
from mambakit.model import MambaLM
from mambakit.tokenizer import DEFAULT_TOKENIZER, byte_tokenizer, has_tokenizer, load_tokenizer

PRESET_PREFIX = "mambakit:"
ASSETS = Path(__file__).parent / "assets"  # trained checkpoints that ship with the package
# Built-in presets: random weights from a fixed seed, byte-level tokenizer; no file, no network.
PRESETS = {
    "tiny-random": MambaConfig(model_type="mamba", d_model=64, n_layer=2, vocab_size=257, d_state=16),
    "tiny-random-mamba2": MambaConfig(model_type="mamba2", d_model=64, n_layer=2, vocab_size=257, d_state=16,
                                      headdim=16, ngroups=1, chunk_size=32),
}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


class LoadedModel(NamedTuple):
    """What ``load`` returns; unpacks as ``model, tokenizer, chat_template = mambakit.load(...)``."""

    model: MambaLM
    tokenizer: PreTrainedTokenizerBase
    chat_template: str | None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto'/None -> cuda when available, else cpu; anything else as torch understands it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UserError(f"device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device} asked for, but CUDA is not available here; use --device cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """'auto' -> bf16 on CUDA, fp32 elsewhere; None keeps the checkpoint's dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not supported; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_state_dtype(state_dtype: str | torch.dtype) -> torch.dtype:
    """The SSM-state dtype asked for by name (float32, bfloat16, float16) or as a torch dtype."""
    if isinstance(state_dtype, torch.dtype):
        return state_dtype
    if state_dtype not in DTYPES:
        raise UserError(f"state dtype {state_dtype!r} is not supported; use {', '.join(DTYPES)}")
    return DTYPES[state_dtype]


def load(name_or_path: str | os.PathLike, device: str | torch.device | None = "auto",
         dtype: str | torch.dtype | None = "auto", tokenizer: str | os.PathLike | None = None,
         state_dtype: str | torch.dtype = "float32") -> LoadedModel:
    """Load a Mamba-family model and its tokenizer.

    ``name_or_path``: a local checkpoint folder (HF or state-spaces layout, .bin or .safetensors, sharded or
    not), a hub id such as ``state-spaces/mamba-1.4b``, or a built-in preset ``mambakit:tiny-random``.
    ``tokenizer``: overrides the tokenizer (folder, tokenizer.json or hub id); by default the checkpoint's
    own, else GPT-NeoX-20B (the state-spaces models' tokenizer). ``state_dtype``: the dtype of the SSM
    states the model allocates for generation (``MambaLM.ssm_state_dtype``): float32 (default) or bfloat16,
    which halves a decode step's state traffic (what mamba_ssm does) at some accuracy over long outputs.
    """
    model, default_tokenizer = _load_model(name_or_path, device, dtype, state_dtype)
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    elif default_tokenizer is None:
        tok = load_tokenizer(DEFAULT_TOKENIZER)
    elif isinstance(default_tokenizer, Path):
        tok = load_tokenizer(default_tokenizer)
    else:
        tok = default_tokenizer
    _check_vocab(model, tok)
    model.eval()
    return LoadedModel(model, tok, getattr(tok, "chat_template", None))


def load_model(name_or_path: str | os.PathLike, device: str | torch.device | None = "auto",
               dtype: str | torch.dtype | None = "auto", state_dtype: str | torch.dtype = "float32") -> MambaLM:
    """The model alone (same names as ``load``), without touching any tokenizer."""
    return _load_model(name_or_path, device, dtype, state_dtype)[0].eval()


def _load_model(name_or_path, device, dtype, state_dtype):
    """(model, the tokenizer that comes with it: a tokenizer, a folder holding one, or None)."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    state_dtype = resolve_state_dtype(state_dtype)
    name = str(name_or_path)
    if name.startswith(PRESET_PREFIX):
        model, tokenizer = _load_preset(name[len(PRESET_PREFIX):], device, dtype)
    else:
        folder = checkpoint.resolve(name_or_path)
        model = checkpoint.load_model(folder, device=device, dtype=dtype)
        tokenizer = folder if has_tokenizer(folder) else None
    model.ssm_state_dtype = state_dtype
    return model, tokenizer


def available_presets() -> list[str]:
    """Preset names: trained checkpoints shipped in the package (mambakit/assets/NAME) and random ones."""
    shipped = [path.name for path in ASSETS.iterdir() if (path / "config.json").is_file()] if ASSETS.is_dir() else []
    return sorted(set(shipped) | set(PRESETS))


def _load_preset(preset: str, device, dtype):
    shipped = ASSETS / preset
    if (shipped / "config.json").is_file():
        return checkpoint.load_model(shipped, device=device, dtype=dtype), shipped
    if preset not in PRESETS:
        raise checkpoint.CheckpointError(
            f"unknown preset {PRESET_PREFIX}{preset}; built-in presets: "
            + ", ".join(PRESET_PREFIX + name for name in available_presets())
        )
    model = MambaLM.from_config(PRESETS[preset], device=device, dtype=dtype, seed=0)
    return model, byte_tokenizer()


def _check_vocab(model: MambaLM, tokenizer) -> None:
    if len(tokenizer) > model.config.padded_vocab_size:
        raise checkpoint.CheckpointError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
            f"{model.config.padded_vocab_size}; pass the tokenizer this model was trained with (--tokenizer)"
        )
