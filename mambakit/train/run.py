"""One training run, start to end: data -> examples -> batches -> Trainer -> the output folder.

OUT holds, when it ends: config.json + model.safetensors + tokenizer (loads with ``mambakit.load(OUT)`` and
``mambakit chat --model OUT``), checkpoint-N/ folders (``--resume`` continues from the last), runs/
(TensorBoard), loss_curve.png, data_report.json (rows used and skipped, with examples) and
train_report.json (losses, sizes, throughput). A LoRA run also writes OUT/adapter/ (the PEFT adapter).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from mambakit.errors import UserError
from mambakit.loading import resolve_dtype
from mambakit.tokenizer import EOS_TOKEN, load_tokenizer
from mambakit.train import lora as lora_module
from mambakit.train.data import Conversation, DataReport, detect_format, to_examples
from mambakit.train.packing import batch_items, fill
from mambakit.train.pretrain import new_model, new_tokenizer
from mambakit.train.recipes import Recipe
from mambakit.train.rendering import ExampleEncoder, resolve_template
from mambakit.train.sources import DataError, hold_out, read_source
from mambakit.train.trainer import (LossCurveCallback, MambaTrainer, TimeLimitCallback, training_arguments,
                                    wants_checkpointing)

logger = logging.getLogger("mambakit.train")
DATA_REPORT, TRAIN_REPORT, ADAPTER_DIR = "data_report.json", "train_report.json", "adapter"


class OutputError(UserError):
    """An output folder that would be overwritten, or has nothing to resume."""


@dataclass
class Examples:
    """Examples read from the data (not yet tokenized); ``eval`` None when the data brought no eval split."""

    train: list
    eval: list | None
    data_format: str
    reports: dict[str, DataReport]


def read_examples(recipe: Recipe, end_of_text: str) -> Examples:
    """The recipe's data and eval data as examples, malformed rows reported and skipped."""
    if not recipe.data:
        raise DataError("no training data: pass --data (a file, folder or hub dataset id)")
    split = read_source(recipe.data)
    eval_rows = read_source(recipe.eval_data).train if recipe.eval_data else split.eval
    data_format = detect_format(split.train) if recipe.data_format == "auto" else recipe.data_format
    reports = {"train": DataReport()}
    train = to_examples(split.train, data_format, reports["train"], end_of_text)
    held_out = None
    if eval_rows is not None:
        reports["eval"] = DataReport()
        held_out = to_examples(eval_rows, data_format, reports["eval"], end_of_text)
    if not train:
        raise DataError(f"no usable training rows in {recipe.data}: {reports['train'].summary()}")
    return Examples(train, held_out, data_format, reports)


def encode(examples: Examples, tokenizer, recipe: Recipe, seed: int):
    """(train, eval) lists of Encoded; eval is held out of train when the data has none."""
    template = resolve_template(recipe.template, tokenizer)
    encoder = ExampleEncoder(tokenizer, template, recipe.max_length, recipe.train_on)
    if any(isinstance(example, Conversation) for example in examples.train):
        tokenizer.chat_template = template.source  # saved with the model: chat renders as training did
    train = encoder.encode(examples.train, examples.reports["train"])
    if examples.eval is not None:
        return train, encoder.encode(examples.eval, examples.reports["eval"])
    split = hold_out(train, recipe.eval_fraction, seed)
    return split.train, split.eval


def finetune(recipe: Recipe, output: str | Path, resume: bool = False, callbacks: tuple = ()) -> dict:
    """Fine-tune ``recipe.model`` on ``recipe.data`` (full or LoRA); returns the train report.

    ``callbacks``: extra transformers TrainerCallbacks (e.g. for logging elsewhere)."""
    from mambakit.loading import load

    if not recipe.model:
        raise UserError("no model to fine-tune: pass --model (a folder, hub id or preset)")
    resume_from = _check_output(Path(output), resume)
    model, tokenizer, _ = load(recipe.model, device="cpu", dtype=torch.float32, tokenizer=recipe.tokenizer)
    examples = read_examples(recipe, tokenizer.eos_token or EOS_TOKEN)
    return _train(model, tokenizer, examples, recipe, Path(output), resume_from, callbacks)


def pretrain(recipe: Recipe, output: str | Path, resume: bool = False, callbacks: tuple = ()) -> dict:
    """Train a new model (``recipe.model_config``) from scratch on raw text; returns the train report."""
    output = Path(output)
    resume_from = _check_output(output, resume)
    examples = read_examples(recipe, EOS_TOKEN)
    if resume_from is not None:
        tokenizer = load_tokenizer(resume_from)  # the tokenizer the run started with
    else:
        texts = [getattr(e, "text", "") for e in examples.train]
        tokenizer = new_tokenizer(recipe.tokenizer, texts)
    seed = recipe.training_arguments()["seed"]
    model = new_model(recipe.model_config, tokenizer, seed)
    return _train(model, tokenizer, examples, recipe, output, resume_from, callbacks)


def _checkpoint_to_resume(output: Path) -> str:
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(output)) if output.is_dir() else None
    if last is None:
        raise OutputError(f"--resume: no checkpoint-N folder in {output} to continue from; run without --resume")
    return last


def _check_output(output: Path, resume: bool) -> str | None:
    """The checkpoint to resume from (None for a fresh run); refuses to overwrite an earlier run."""
    if resume:
        return _checkpoint_to_resume(output)
    if output.is_dir() and any(output.glob("checkpoint-*")) or (output / "config.json").is_file():
        raise OutputError(f"{output} already holds a training run; pass --resume to continue it, or choose "
                          "another --output")
    return None


def _train(model, tokenizer, examples: Examples, recipe: Recipe, output: Path, resume_from: str | None,
           extra_callbacks) -> dict:
    options = recipe.training_arguments()
    train, held_out = encode(examples, tokenizer, recipe, options["seed"])
    if not recipe.packing:
        options.setdefault("train_sampling_strategy", "group_by_length")
    args = training_arguments(output, options, has_eval=bool(held_out))
    if recipe.lora is not None:
        model = lora_module.apply_lora(model, recipe.lora, base_name=recipe.model)
    train_items, collator = batch_items(train, recipe.packing, recipe.max_length, tokenizer.pad_token_id)
    eval_items = batch_items(held_out, recipe.packing, recipe.max_length, tokenizer.pad_token_id)[0] if held_out \
        else None
    callbacks = [LossCurveCallback(), *extra_callbacks]
    if recipe.max_train_minutes:
        callbacks.append(TimeLimitCallback(recipe.max_train_minutes))
    trainer = MambaTrainer(model=model, args=args, train_dataset=train_items, eval_dataset=eval_items,
                           data_collator=collator, tokenizer=tokenizer, callbacks=callbacks,
                           gradient_checkpointing=wants_checkpointing(options))
    if trainer.is_world_process_zero():
        output.mkdir(parents=True, exist_ok=True)
        reports = {name: report.to_dict() for name, report in examples.reports.items()}
        (output / DATA_REPORT).write_text(json.dumps(reports, indent=2, ensure_ascii=False) + "\n")
        for name, report in examples.reports.items():
            logger.info("%s data (%s): %s", name, examples.data_format, report.summary())
    result = trainer.train(resume_from_checkpoint=resume_from)
    metrics = trainer.evaluate() if eval_items else {}
    report = {
        "parameters": _count(model, trainable=False), "trainable_parameters": _count(model, trainable=True),
        "train_examples": len(train), "eval_examples": len(held_out or []), "train_rows": len(train_items),
        "packed_row_fill": fill(train_items, recipe.max_length) if recipe.packing else None,
        "train_target_tokens": sum(sum(label != -100 for label in e.labels) for e in train),
        "steps": trainer.state.global_step, "train_loss": result.training_loss,
        "eval_loss": metrics.get("eval_loss"), "train_runtime_s": result.metrics.get("train_runtime"),
    }
    final = _save_final(trainer, tokenizer, recipe, output)
    if trainer.is_world_process_zero():
        _write_report(output, report)
        if recipe.sample_prompt:
            report["sample"] = {"prompt": recipe.sample_prompt,
                                "completion": _sample(final, tokenizer, recipe.sample_prompt)}
            _write_report(output, report)
    return report


def _write_report(output: Path, report: dict) -> None:
    (output / TRAIN_REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def _save_final(trainer: MambaTrainer, tokenizer, recipe: Recipe, output: Path):
    """Write the trained model to OUT (LoRA: the adapter to OUT/adapter, and the merged model to OUT)."""
    if recipe.lora is None:
        if recipe.save_dtype:
            trainer.accelerator.unwrap_model(trainer.model).to(resolve_dtype(recipe.save_dtype, None))
        trainer.save_model(str(output))
        return trainer.accelerator.unwrap_model(trainer.model)
    trainer.save_model(str(output / ADAPTER_DIR))
    if not lora_module.lora_options(recipe.lora)["merge"]:
        return trainer.accelerator.unwrap_model(trainer.model)
    merged = lora_module.merged(trainer.accelerator.unwrap_model(trainer.model))
    if recipe.save_dtype:
        merged.to(resolve_dtype(recipe.save_dtype, None))
    if trainer.is_world_process_zero():
        merged.save_pretrained(output, tokenizer)
    return merged


def _sample(model, tokenizer, prompt: str) -> str:
    from mambakit.generation import Generator, SamplingParams

    model.eval()
    params = SamplingParams(max_new_tokens=200, temperature=0.8, top_p=0.95, seed=0)
    return Generator(model, tokenizer).generate(prompt, params)[0].text


def _count(model, trainable: bool) -> int:
    unique = {id(p): p for p in model.parameters() if p.requires_grad or not trainable}
    return sum(p.numel() for p in unique.values())
