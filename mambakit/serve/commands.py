"""The ``mambakit serve`` command: load a model and run the OpenAI-compatible server with uvicorn."""
from __future__ import annotations

import argparse

from mambakit.chat.templates import BUILTIN


def cmd_serve(args) -> int:
    import uvicorn

    from mambakit.chat.templates import get_template
    from mambakit.cli import UsageError, load_from_args
    from mambakit.generation import Generator
    from mambakit.serve import Engine, ServeConfig, build_app

    for name in ("max_batch", "max_prompt_tokens", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_queue < 0:
        raise UsageError(f"--max-queue must be 0 or more, got {args.max_queue}")
    model, tokenizer, tokenizer_template = load_from_args(args)
    template = get_template(args.template, tokenizer_template)
    generator = Generator(model, tokenizer)
    config = ServeConfig(model_name=args.served_model_name or str(args.model), template=template,
                         max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.max_new_tokens)
    app = build_app(Engine(generator, max_batch=args.max_batch, max_queue=args.max_queue), config)
    print(f"serving {config.model_name!r} (template {template.name!r}, {args.max_batch} slots) on "
          f"http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def register(subparsers) -> None:
    from mambakit.cli import add_model_arguments

    serve = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/completions, "
                                                "/v1/chat/completions, /v1/models)",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--template", "-t", default=None,
                       help=f"chat template for /v1/chat/completions: {', '.join(BUILTIN)}, tokenizer or a "
                            ".jinja file (default: the checkpoint's own, else plain)")
    serve.add_argument("--served-model-name", default=None, help="the model id clients use (default: --model)")
    serve.add_argument("--max-batch", type=int, default=64, help="state slots: sequences decoded together")
    serve.add_argument("--max-queue", type=int, default=256, help="requests that may wait for a slot (then 429)")
    serve.add_argument("--max-prompt-tokens", type=int, default=32768, help="longest prompt accepted")
    serve.add_argument("--max-new-tokens", type=int, default=4096, help="largest max_tokens a request may ask")
    serve.add_argument("--log-level", default="warning", help="uvicorn log level (info logs every request)")
    serve.set_defaults(func=cmd_serve)
