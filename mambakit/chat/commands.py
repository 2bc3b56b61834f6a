"""The ``mambakit chat`` and ``mambakit summarize`` commands (thin: the logic is in this package)."""
from __future__ import annotations

import argparse
import sys

from mambakit.chat.templates import BUILTIN

CHAT_MAX_NEW_TOKENS = 512


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    from mambakit.cli import add_model_arguments, add_sampling_arguments

    add_model_arguments(parser)
    add_sampling_arguments(parser)
    parser.set_defaults(max_new_tokens=CHAT_MAX_NEW_TOKENS)
    parser.add_argument("--template", "-t", default=None,
                        help=f"chat template: {', '.join(BUILTIN)}, tokenizer (the checkpoint's own) or a .jinja "
                             "file (default: the checkpoint's own when it has one, else plain)")
    parser.add_argument("--system", "-s", default=None, help="system message (default: the template's)")
    parser.add_argument("--prefix-cache", metavar="DIR", default=None,
                        help="keep the state after fixed prefixes (system prompt, document) in DIR and reuse it")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="prefill chunk in tokens (memory stays flat in the prompt length)")


def make_session(args):
    """A ChatSession from parsed ``chat``/``summarize`` arguments."""
    from mambakit.chat.prefix_cache import PrefixCache
    from mambakit.chat.session import ChatSession
    from mambakit.chat.templates import get_template
    from mambakit.cli import UsageError, load_from_args, sampling_params
    from mambakit.generation import Generator

    if args.chunk_size is not None and args.chunk_size < 1:
        raise UsageError(f"--chunk-size must be a positive number of tokens, got {args.chunk_size}")
    params = sampling_params(args)
    model, tokenizer, tokenizer_template = load_from_args(args)
    template = get_template(args.template, tokenizer_template)
    generator = Generator(model, tokenizer)
    if args.chunk_size:
        generator.prefill_chunk_size = args.chunk_size
    cache = PrefixCache(args.prefix_cache) if args.prefix_cache else None
    return ChatSession(generator, template, params, system=args.system, prefix_cache=cache)


def cmd_chat(args) -> int:
    from mambakit.chat.repl import Repl

    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    return Repl(make_session(args)).run()


def cmd_summarize(args) -> int:
    from mambakit.chat.summarize import read_document, summarize

    document = read_document(args.file)
    session = make_session(args)
    report, pieces = summarize(session, document, args.question)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    turn = session.last_turn
    speed = f"{turn.tokens_per_second:.1f} tok/s" if turn.tokens_per_second else "- tok/s"
    print(f"\n[document {report.document_tokens} tokens, prompt {report.context_tokens + turn.prompt_tokens} "
          f"tokens, prefill {report.prefill_seconds:.2f} s, peak memory {report.peak_memory_bytes / 2**30:.2f} GiB "
          f"({report.peak_memory_kind}); reply {turn.reply_tokens} tokens, {speed}]", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    chat = subparsers.add_parser("chat", help="chat in the terminal; the state is carried from turn to turn")
    add_chat_arguments(chat)
    chat.set_defaults(func=cmd_chat)

    summ = subparsers.add_parser("summarize", help="summarize a long document, or answer a question about it")
    add_chat_arguments(summ)
    summ.add_argument("file", help="text file to read")
    summ.add_argument("--question", "-q", default=None, help="ask this instead of asking for a summary")
    summ.set_defaults(func=cmd_summarize)
