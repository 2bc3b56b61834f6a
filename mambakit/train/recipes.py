"""Recipes: a YAML file of training settings (shipped ones in ``recipes/``; copy one and edit it).

Top-level keys choose the model, data and batching; ``training`` is passed to ``transformers.TrainingArguments``
(any of its fields), over mambakit's defaults below; ``lora`` turns on LoRA. Command-line overrides are
``--set key=value`` with dotted keys (``training.learning_rate=1e-4``) and YAML values.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mambakit.errors import UserError

RECIPES_DIR = Path(__file__).parent / "recipes"

# Used where the recipe says nothing. 5e-5: the seed's lesson, 5e-4 wrecks a pretrained mamba-1.4b (README).
DEFAULT_TRAINING = {
    "learning_rate": 5e-5,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,  # a float < 1 is a fraction of the total steps
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "num_train_epochs": 3,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "gradient_checkpointing": False,
    "bf16": "auto",  # on where the GPU supports it: bf16 autocast over fp32 master weights
    "eval_strategy": "steps",
    "eval_steps": 200,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 200,
    "save_total_limit": 2,
    "report_to": "tensorboard",
    "seed": 42,
    "dataloader_num_workers": 0,
}


class RecipeError(UserError):
    """A recipe that cannot be read or has an unknown key."""


@dataclass
class Recipe:
    """Everything one ``finetune`` / ``pretrain`` run needs besides the output folder."""

    model: str | None = None  # finetune: checkpoint folder, hub id or preset
    model_config: dict | None = None  # pretrain: MambaConfig fields of the new model
    tokenizer: str | None = None  # finetune: override; pretrain: "bytes", "bpe-<vocab size>" or a tokenizer
    data: str | None = None
    eval_data: str | None = None
    eval_fraction: float = 0.05  # held out when the data has no eval split and eval_data is not given
    data_format: str = "auto"
    template: str = "auto"  # auto (the model's, else chatml), or a mambakit.chat.templates name / .jinja file
    train_on: str = "assistant"  # assistant tokens only, or all
    max_length: int = 1024
    packing: bool = True
    max_train_minutes: float | None = None  # stop (and save) once training has run this long
    save_dtype: str | None = None  # store the final model in this dtype (e.g. bfloat16); None keeps fp32
    sample_prompt: str | None = None  # generate from this prompt at the end, into train_report.json
    lora: dict | None = None  # r, alpha, dropout, target_modules ("auto"), merge (write the merged model too)
    training: dict = field(default_factory=dict)

    def training_arguments(self) -> dict:
        return {**DEFAULT_TRAINING, **self.training}


def shipped_recipes() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | None, overrides: dict | None = None) -> Recipe:
    """A shipped recipe by name, a YAML file, or the defaults (None); then ``overrides`` ({dotted key: value},
    e.g. from ``parse_overrides``) on top."""
    raw: dict = {}
    if name_or_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise RecipeError(f"no recipe {name_or_path!r}: give a YAML file or one of {', '.join(shipped_recipes())}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RecipeError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"recipe {path} must be a mapping of settings")
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        target = raw
        for parent in parents:
            if not isinstance(target.get(parent), dict):
                target[parent] = {}
            target = target[parent]
        target[leaf] = value
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RecipeError(f"unknown recipe key {unknown[0]!r}; known keys: {', '.join(sorted(known))} "
                          "(TrainingArguments go under training:)")
    if not isinstance(raw.get("training", {}), dict) or not isinstance(raw.get("lora") or {}, dict):
        raise RecipeError("recipe keys 'training' and 'lora' must be mappings")
    return Recipe(**raw)


def parse_overrides(items: list[str]) -> dict:
    """["training.learning_rate=1e-4", "packing=false"] -> {dotted key: YAML-typed value}."""
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {item!r} must look like key=value (e.g. training.learning_rate=1e-4)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        overrides[key] = value
    return overrides
