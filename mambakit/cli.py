"""The ``mambakit`` command: a thin shell over the library (every command's logic lives in the package).

Errors a user can cause print one line (``mambakit: error: …``) and exit with status 2
(``MAMBAKIT_DEBUG=1`` shows the full traceback instead).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from mambakit.errors import UserError
from mambakit.loading import PRESET_PREFIX

DEFAULT_MODEL = PRESET_PREFIX + "small"  # trained on TinyStories + tiny-shakespeare; ships in mambakit/assets


class UsageError(UserError):
    """A bad command line."""


USER_ERRORS = (UserError, FileNotFoundError, IsADirectoryError, PermissionError)


def add_model_arguments(parser: argparse.ArgumentParser, default_model: str | None = DEFAULT_MODEL) -> None:
    parser.add_argument("--model", "-m", default=default_model, required=default_model is None,
                        help=f"checkpoint folder, hub id (e.g. state-spaces/mamba-1.4b) or preset "
                             f"(default: {default_model})")
    parser.add_argument("--tokenizer", help="tokenizer folder, tokenizer.json or hub id (default: the checkpoint's, "
                                            "else EleutherAI/gpt-neox-20b)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--state-dtype", default="float32",
                        help="SSM state dtype during generation: float32 (default) or bfloat16 (half the state "
                             "traffic per decode step, as mamba_ssm; rounding accumulates over long outputs)")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-new-tokens", type=int, default=128)
    group.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    group.add_argument("--top-k", type=int, default=0, help="0 = off")
    group.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling, in (0, 1] (default 0.9)")
    group.add_argument("--min-p", type=float, default=0.0, help="0 = off")
    group.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off (HF/CTRL semantics)")
    group.add_argument("--seed", type=int, default=None)
    group.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    group.add_argument("--ignore-eos", action="store_true", help="keep generating past the end-of-text token")


def sampling_params(args):
    from mambakit.generation import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          seed=args.seed, stop=args.stop, ignore_eos=args.ignore_eos)


def load_from_args(args):
    from mambakit.loading import load

    return load(args.model, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer,
                state_dtype=args.state_dtype)


# ---- commands ------------------------------------------------------------------------------------
def cmd_generate(args) -> int:
    from mambakit.generation import Generator

    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise UsageError(f"--prompt-file {path} does not exist")
        prompt = path.read_text()
    elif args.prompt is not None:
        prompt = args.prompt
    else:
        raise UsageError("give a prompt (mambakit generate \"Once upon a time\") or --prompt-file FILE")
    params = sampling_params(args)
    model, tokenizer, _ = load_from_args(args)
    generator = Generator(model, tokenizer)
    if not args.no_echo:
        sys.stdout.write(prompt)
    results = []
    for piece in generator.stream(prompt, params, results=results):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if args.stats:
        print(_stats_line(results[0]), file=sys.stderr)
    return 0


def _stats_line(result) -> str:
    from mambakit.doctor import triton_cache_dir

    stats = result.stats
    speed = stats["decode_tokens_per_second"]
    line = (f"[{result.prompt_tokens} prompt tokens, prefill + first token {stats['prefill_seconds'] * 1000:.0f} ms; "
            f"{len(result.token_ids)} new tokens, {f'{speed:.1f} tok/s' if speed else 'no decode steps'}")
    if stats["graph_setup_seconds"]:
        line += (f"; first-call kernel warm-up and CUDA graph capture {stats['graph_setup_seconds']:.2f} s "
                 f"(compiled kernels cached in {triton_cache_dir()})")
    return line + "]"


def cmd_convert(args) -> int:
    from mambakit.convert import convert

    report = convert(args.src, args.dst, layout=args.to, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.dst} ({args.to} layout); logits max |diff| vs source: {report['max_abs_diff']:.3g}")
    return 0


def cmd_doctor(args) -> int:
    from mambakit.doctor import report

    print(report())
    return 0


# Rooms that add their own subcommands: each module has ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = ("mambakit.bench.commands", "mambakit.train.commands", "mambakit.chat.commands",
                                   "mambakit.eval.commands", "mambakit.serve.commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mambakit", description="Mamba-family language models: run, convert, "
                                                                  "inspect.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="continue a prompt, streaming the text")
    add_model_arguments(gen)
    add_sampling_arguments(gen)
    gen.add_argument("prompt", nargs="?", help="the text to continue")
    gen.add_argument("--prompt-file", help="read the prompt from this file")
    gen.add_argument("--no-echo", action="store_true", help="print only the continuation, not the prompt")
    gen.add_argument("--stats", action="store_true",
                     help="print token counts, prefill time, tok/s and first-call setup time to stderr")
    gen.set_defaults(func=cmd_generate)

    conv = sub.add_parser("convert", help="rewrite a checkpoint in HF or state-spaces layout and check its logits")
    conv.add_argument("src", help="source checkpoint folder or hub id")
    conv.add_argument("dst", help="destination folder (must be empty or absent unless --overwrite)")
    conv.add_argument("--to", choices=("hf", "state-spaces"), required=True)
    conv.add_argument("--dtype", default=None, help="store in this dtype (default: keep the source's)")
    conv.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    conv.set_defaults(func=cmd_convert)

    doc = sub.add_parser("doctor", help="versions, devices and the backend each op will use")
    doc.set_defaults(func=cmd_doctor)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and run its command; user errors become one line on stderr and exit status 2."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        if os.environ.get("MAMBAKIT_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"mambakit: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmambakit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
