"""HF Trainer glue: a Trainer that knows MambaLM (loss, checkpoints) and the callbacks mambakit adds.

- Loss: ``MambaLM.forward(labels=…)`` returns the mean next-token loss over its batch's target tokens (no
  logits materialised). The trainer rescales it to token-sum / targets-in-the-whole-accumulated-batch, so a
  step's gradient is the mean over all its target tokens, whatever the packing, padding, accumulation or
  number of GPUs (the Trainer counts ``num_items_in_batch`` across micro-batches and devices).
- Evaluation loss: token-weighted over the whole eval set (not a mean of batch means).
- Checkpoints: ``MambaLM.save_pretrained`` (safetensors, tied head left out, config, tokenizer), read back
  through mambakit's checkpoint reader on ``--resume`` and for ``load_best_model_at_end``. LoRA runs save
  PEFT adapters (the Trainer's own path).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from mambakit import checkpoint
from mambakit.train.recipes import RecipeError

logger = logging.getLogger(__name__)
LOSS_CURVE = "loss_curve.png"
CHECKPOINTING_KEYS = ("gradient_checkpointing", "activation_checkpointing")


def wants_checkpointing(options: dict) -> bool:
    return any(bool(options.get(key)) for key in CHECKPOINTING_KEYS)


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


class MambaTrainer(Trainer):
    """transformers.Trainer for MambaLM (or a PEFT-wrapped MambaLM); batches hold input_ids, labels[, seq_idx].

    ``tokenizer`` is saved with every checkpoint. It is not handed to the Trainer as ``processing_class``: the
    Trainer would then treat ``model.config`` as a transformers PretrainedConfig, which MambaConfig is not.
    ``gradient_checkpointing``: recompute each block in the backward pass (MambaLM's own switch; the Trainer's
    ``activation_checkpointing`` argument passes keywords that only transformers models take).
    """

    def __init__(self, *args, tokenizer=None, gradient_checkpointing: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenizer = tokenizer
        if gradient_checkpointing:
            model = self.accelerator.unwrap_model(self.model)
            (model.get_base_model() if _is_peft(model) else model).gradient_checkpointing_enable()
        # Have the Trainer count the target tokens of every accumulated batch (labels[:, 1:] != -100, gathered
        # over devices) and pass that count to compute_loss, which normalises by it.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        self._eval_totals: torch.Tensor | None = None
        self._flops_per_token: int | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        targets = (inputs["labels"][:, 1:] != -100).sum()
        token_loss_sum = outputs.loss * targets
        if self._eval_totals is not None:
            self._eval_totals += torch.stack([token_loss_sum.detach().float(), targets.float()])
        loss = outputs.loss
        if model.training and num_items_in_batch is not None:
            loss = token_loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes  # DDP averages the gradients over processes
        return (loss, outputs) if return_outputs else loss

    def floating_point_ops(self, inputs) -> int:
        """6 x (parameters outside the embedding) per token, as the Trainer estimates for its own models."""
        if self._flops_per_token is None:
            model = self.accelerator.unwrap_model(self.model)
            unique = {id(p): p for p in model.parameters()}
            embedding = model.get_input_embeddings().weight.numel()
            self._flops_per_token = 6 * (sum(p.numel() for p in unique.values()) - embedding)
        return self._flops_per_token * inputs["input_ids"].numel()

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """The Trainer's loop, with ``<prefix>_loss`` replaced by the token-weighted mean over the whole set."""
        self._eval_totals = torch.zeros(2, device=self.args.device)
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
            totals = self.accelerator.reduce(self._eval_totals, reduction="sum")
        finally:
            self._eval_totals = None
        if totals[1] > 0:
            output.metrics[f"{metric_key_prefix}_loss"] = (totals[0] / totals[1]).item()
        return output

    # ---- checkpoints ---------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        output_dir = output_dir or self.args.output_dir
        if _is_peft(model):
            super()._save(output_dir, state_dict)  # the adapter (adapter_model.safetensors + adapter_config.json)
        elif self.args.should_save:
            if state_dict is not None:  # FSDP: the gathered full state dict, the live model is sharded
                model = checkpoint.build_model(model.config, dict(state_dict), device="cpu")
            model.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        if self.args.should_save and self.tokenizer is not None:
            self.tokenizer.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.accelerator.unwrap_model(model or self.model)
        if _is_peft(model):
            return super()._load_from_checkpoint(resume_from_checkpoint)
        self._load_weights(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if _is_peft(model):
            return super()._load_best_model()
        self._load_weights(self.state.best_model_checkpoint, model)

    def _load_weights(self, folder, model) -> None:
        """Copy the weights of a mambakit checkpoint folder into ``model`` (strict: every key, every shape);
        under FSDP each process keeps its shard of them."""
        state = checkpoint.to_mambakit_keys(checkpoint.read_state_dict(Path(folder)))
        if model.config.tie_embeddings:
            state["lm_head.weight"] = state["backbone.embedding.weight"]
        if self.is_fsdp_enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))
        else:
            model.load_state_dict(state, strict=True)


class TimeLimitCallback(TrainerCallback):
    """Stops training (saving a checkpoint) once it has run ``minutes``."""

    def __init__(self, minutes: float):
        self.seconds, self.start = minutes * 60.0, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.start > self.seconds:
            logger.warning("time limit of %.1f minutes reached at step %d: saving and stopping",
                           self.seconds / 60, state.global_step)
            control.should_training_stop = control.should_save = control.should_evaluate = True
        return control


class LossCurveCallback(TrainerCallback):
    """Writes OUT/loss_curve.png (training and evaluation loss against the step) when training ends."""

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_loss_curve(state.log_history, Path(args.output_dir) / LOSS_CURVE)


def plot_loss_curve(log_history: list[dict], path: Path) -> Path | None:
    """Train and eval loss from the Trainer's ``log_history``; None (with a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no %s (pip install 'mambakit[train]')", path.name)
        return None
    figure, axes = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
        if points:
            axes.plot(*zip(*points), marker="o" if key == "eval_loss" else None, label=label)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (nats per target token)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def training_arguments(output_dir: Path, options: dict, has_eval: bool) -> TrainingArguments:
    """TrainingArguments from the recipe's ``training`` mapping (over mambakit's defaults), less
    ``gradient_checkpointing`` (see MambaTrainer)."""
    options = {k: v for k, v in options.items() if k not in CHECKPOINTING_KEYS}
    if options.get("bf16") == "auto":
        options["bf16"] = (torch.cuda.is_available() and torch.cuda.is_bf16_supported()
                           and not options.get("use_cpu", False))
    if options.get("report_to") in ("tensorboard", ["tensorboard"]) and not _tensorboard_available():
        logger.warning("tensorboard is not installed: no TensorBoard logs (pip install 'mambakit[train]')")
        options["report_to"] = "none"
    if not has_eval:
        options["eval_strategy"] = "no"
        options.pop("load_best_model_at_end", None)
    options.setdefault("ddp_find_unused_parameters", False)
    try:
        return TrainingArguments(output_dir=str(output_dir), remove_unused_columns=False, **options)
    except TypeError as exc:
        raise RecipeError(f"training: {exc} (see transformers.TrainingArguments for the valid fields)") from None
    except ValueError as exc:
        raise RecipeError(f"training: {str(exc).splitlines()[0]}") from None


def _tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None
