"""LoRA through PEFT on the mixers' projections, and folding adapters back into the weights.

Targets: in_proj, x_proj, dt_proj, out_proj for Mamba-1 / Falcon-Mamba; in_proj, out_proj for Mamba-2.
Every mambakit kernel calls these through their nn.Linear modules, so the adapters are never bypassed
(tests/test_train_lora.py checks it). PEFT itself refuses out_proj on any model whose ``config.model_type``
is a Mamba: transformers' CUDA fast path reads ``out_proj.weight`` directly and would skip the adapter. That
does not hold here, so the config is hidden from PEFT while it injects the adapters.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from mambakit.errors import UserError
from mambakit.model import MambaLM

MAMBA1_TARGETS = ["in_proj", "x_proj", "dt_proj", "out_proj"]
MAMBA2_TARGETS = ["in_proj", "out_proj"]
DEFAULT_LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "auto", "merge": True}
ADAPTER_CONFIG = "adapter_config.json"


class LoraError(UserError):
    """Bad LoRA settings or an adapter folder that cannot be used."""


def target_modules(model: MambaLM) -> list[str]:
    return MAMBA2_TARGETS if model.config.is_mamba2 else MAMBA1_TARGETS


def lora_options(options: dict | None) -> dict:
    """The recipe's ``lora`` mapping over DEFAULT_LORA (unknown keys rejected)."""
    unknown = sorted(set(options or {}) - set(DEFAULT_LORA))
    if unknown:
        raise LoraError(f"unknown lora option {unknown[0]!r}; known: {', '.join(DEFAULT_LORA)}")
    return {**DEFAULT_LORA, **(options or {})}


@contextlib.contextmanager
def _config_hidden_from_peft(model: MambaLM):
    config = model.__dict__.pop("config")
    try:
        yield
    finally:
        model.config = config


def _require_peft():
    try:
        import peft
    except ImportError:
        raise LoraError("LoRA needs the `peft` package: pip install 'mambakit[train]'") from None
    return peft


def apply_lora(model: MambaLM, options: dict | None = None, base_name: str | None = None):
    """``model`` wrapped in a PeftModel whose only trainable parameters are the LoRA adapters."""
    peft = _require_peft()
    options = lora_options(options)
    targets = target_modules(model) if options["target_modules"] == "auto" else list(options["target_modules"])
    config = peft.LoraConfig(r=int(options["r"]), lora_alpha=float(options["alpha"]),
                             lora_dropout=float(options["dropout"]), target_modules=targets, bias="none")
    model.name_or_path = base_name  # PEFT records it in adapter_config.json (merge-lora finds the base there)
    with _config_hidden_from_peft(model):
        return peft.get_peft_model(model, config)


def load_adapter(model: MambaLM, adapter_folder: str | Path, trainable: bool = False):
    """``model`` with the adapter saved in ``adapter_folder``."""
    peft = _require_peft()
    with _config_hidden_from_peft(model):
        return peft.PeftModel.from_pretrained(model, str(adapter_folder), is_trainable=trainable)


def merged(peft_model) -> MambaLM:
    """The base model with the adapters folded into its weights (W + B·A·alpha/r)."""
    return peft_model.merge_and_unload()


def adapter_base(adapter_folder: str | Path) -> str | None:
    """The base model recorded in an adapter folder (None when it was not recorded)."""
    path = Path(adapter_folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise LoraError(f"{adapter_folder} holds no {ADAPTER_CONFIG}: pass the adapter folder that finetune wrote "
                        "(OUT/adapter or a checkpoint-N folder of a LoRA run)")
    return json.loads(path.read_text()).get("base_model_name_or_path")


def merge_lora(adapter_folder: str | Path, output: str | Path, base: str | None = None, tokenizer=None,
               dtype: str = "float32") -> Path:
    """Fold the adapter in ``adapter_folder`` into its base model and save the result to ``output``."""
    from mambakit.loading import load

    base = base or adapter_base(adapter_folder)
    if not base:
        raise LoraError(f"the adapter in {adapter_folder} does not name its base model; pass --model")
    has_tokenizer = (Path(adapter_folder) / "tokenizer_config.json").is_file()
    model, tok, _ = load(base, device="cpu", dtype=dtype,
                         tokenizer=tokenizer or (str(adapter_folder) if has_tokenizer else None))
    model = merged(load_adapter(model, adapter_folder))
    return model.save_pretrained(output, tok)
