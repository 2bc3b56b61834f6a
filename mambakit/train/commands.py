"""``mambakit finetune``, ``mambakit pretrain`` and ``mambakit merge-lora`` (thin: the work is in the library)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

# flag -> recipe key; None values (flag not given) leave the recipe as it is
FLAG_KEYS = {
    "model": "model", "data": "data", "eval_data": "eval_data", "tokenizer": "tokenizer",
    "data_format": "data_format", "template": "template", "train_on": "train_on", "max_length": "max_length",
    "packing": "packing", "max_train_minutes": "max_train_minutes", "learning_rate": "training.learning_rate",
    "epochs": "training.num_train_epochs", "max_steps": "training.max_steps",
    "batch_size": "training.per_device_train_batch_size", "grad_accum": "training.gradient_accumulation_steps",
    "gradient_checkpointing": "training.gradient_checkpointing", "cpu": "training.use_cpu",
    "seed": "training.seed",
}


def register(subparsers) -> None:
    tune = subparsers.add_parser("finetune", help="fine-tune a model on chat, instruction or text data (full or "
                                                  "LoRA)")
    tune.add_argument("--model", "-m", help="checkpoint folder, hub id or preset to start from")
    tune.add_argument("--recipe", help="shipped recipe name (oasst-full, oasst-lora, …) or a YAML file")
    _add_run_arguments(tune)
    tune.add_argument("--template", help="chat template: auto (the model's, else chatml), chatml, zephyr, plain, urial, "
                                          "tokenizer, FILE.jinja")
    tune.add_argument("--train-on", choices=("assistant", "all"), help="loss on assistant tokens only (default) "
                                                                     "or on all tokens")
    tune.add_argument("--lora", action="store_true", help="train LoRA adapters (the recipe's lora settings, "
                                                          "else r=16, alpha=32)")
    tune.set_defaults(func=cmd_finetune)

    pre = subparsers.add_parser("pretrain", help="train a new model from its config on raw text")
    pre.add_argument("--recipe", default="pretrain-small", help="shipped recipe or YAML file (default pretrain-small)")
    _add_run_arguments(pre)
    pre.set_defaults(func=cmd_pretrain)

    merge = subparsers.add_parser("merge-lora", help="fold a LoRA adapter into its base model's weights")
    merge.add_argument("adapter", help="adapter folder (OUT/adapter of a LoRA finetune, or a checkpoint-N)")
    merge.add_argument("--output", "-o", required=True, help="folder for the merged model")
    merge.add_argument("--model", "-m", help="base model (default: the one recorded in the adapter)")
    merge.add_argument("--tokenizer", help="tokenizer to save with it (default: the adapter's, else the base's)")
    merge.add_argument("--dtype", default="float32", help="dtype to store the merged weights in (default float32)")
    merge.set_defaults(func=cmd_merge_lora)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", "-d", help="training data: .jsonl/.json/.parquet/.txt file or folder, or hub "
                                             "dataset id (owner/name[:split])")
    parser.add_argument("--output", "-o", required=True, help="output folder (model, checkpoints, logs, plots)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    group = parser.add_argument_group("overrides of the recipe")
    group.add_argument("--eval-data", help="held-out data (default: the dataset's test split, else a held-out "
                                           "fraction of --data)")
    group.add_argument("--tokenizer", help="tokenizer (finetune: override; pretrain: bytes, bpe-N or a tokenizer)")
    group.add_argument("--data-format", choices=("auto", "chatml", "messages", "alpaca", "prompt_completion",
                                                 "text"))
    group.add_argument("--max-length", type=int, help="tokens per example (longer chats are cut; default 1024)")
    group.add_argument("--no-packing", dest="packing", action="store_const", const=False,
                       help="padded batches grouped by length instead of padding-free packing")
    group.add_argument("--learning-rate", "--lr", type=float)
    group.add_argument("--epochs", type=float)
    group.add_argument("--max-steps", type=int)
    group.add_argument("--batch-size", type=int, help="rows (packed) or examples per device per micro-batch")
    group.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    group.add_argument("--gradient-checkpointing", action="store_const", const=True,
                       help="recompute each block in the backward pass (less memory)")
    group.add_argument("--max-train-minutes", type=float, help="stop and save after this long")
    group.add_argument("--seed", type=int)
    group.add_argument("--cpu", action="store_const", const=True, help="train on the CPU even if a GPU is there")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any recipe key, dotted for nesting (e.g. training.warmup_steps=100); repeatable")


def _recipe(args, default_lora: bool = False):
    from mambakit.train.recipes import load_recipe, parse_overrides

    overrides = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items()
                 if getattr(args, flag, None) is not None}
    overrides.update(parse_overrides(args.set))
    recipe = load_recipe(args.recipe, overrides)
    if default_lora and recipe.lora is None:
        recipe.lora = {}
    return recipe


def _show_logs() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mambakit: %(message)s"))
    train_logger = logging.getLogger("mambakit.train")
    train_logger.addHandler(handler)
    train_logger.setLevel(logging.INFO)


def _print_report(report: dict) -> None:
    if int(os.environ.get("RANK", "0")) == 0:  # one report under torchrun / accelerate launch
        print(json.dumps(report, indent=2, ensure_ascii=False))


def cmd_finetune(args) -> int:
    from mambakit.train.run import finetune

    _show_logs()
    _print_report(finetune(_recipe(args, default_lora=args.lora), args.output, resume=args.resume))
    return 0


def cmd_pretrain(args) -> int:
    from mambakit.train.run import pretrain

    _show_logs()
    _print_report(pretrain(_recipe(args), args.output, resume=args.resume))
    return 0


def cmd_merge_lora(args) -> int:
    from mambakit.train.lora import merge_lora

    folder = merge_lora(args.adapter, args.output, base=args.model, tokenizer=args.tokenizer, dtype=args.dtype)
    print(f"wrote the merged model to {folder}")
    return 0
