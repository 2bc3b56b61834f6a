"""``mambakit eval`` (lm-evaluation-harness tasks, the paper's table) and ``mambakit eval ppl FILE…``.

lm-eval's own CLI cannot find models registered outside it, so ``mambakit eval`` offers its usual options
(tasks, include path, few-shot, limit, batch size, output) and calls ``lm_eval.simple_evaluate`` with the
``mambakit`` model.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from mambakit.cli import DEFAULT_MODEL, UsageError, add_model_arguments, load_from_args
from mambakit.eval.paper import PAPER_TASKS, PUBLISHED, comparison_rows, known_checkpoint, markdown_table
from mambakit.eval.perplexity import (DEFAULT_BIN_SIZE, DEFAULT_TRAIN_LENGTH, overall_perplexity, text_losses,
                                      write_report)
from mambakit.eval.scoring import DEFAULT_BATCH_SIZE, DEFAULT_TOKENS_PER_FORWARD
from mambakit.eval.tasks import DATA_DIR_KEY, LOCAL_TASK_FILES, TASKS_DIR, local_twin


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="lm-evaluation-harness tasks (--tasks paper: the Mamba paper's table); "
                     "`mambakit eval ppl FILE…`: perplexity of long text",
        description="Run lm-evaluation-harness tasks with the mambakit model. `--tasks paper` runs the Mamba "
                    "paper's zero-shot set and prints the published numbers beside the measured ones.")
    add_model_arguments(parser, DEFAULT_MODEL)
    parser.add_argument("--tasks", default="paper",
                        help="comma-separated lm-eval task names, or 'paper' (" + ",".join(PAPER_TASKS) + ")")
    parser.add_argument("--data-dir", help="folder of local task files (lambada_openai_test.jsonl, piqa_valid.jsonl "
                                           "+ piqa_valid-labels.lst): lambada_openai and piqa then run offline "
                                           "from them; also enables the mambakit_* tasks")
    parser.add_argument("--include-path", action="append", default=[], help="extra folder of task YAMLs (repeatable)")
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
    parser.add_argument("--limit", type=float, default=None, help="only the first N documents per task "
                                                                  "(a fraction if < 1); for quick checks")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--bootstrap-iters", type=int, default=100000, help="for the standard errors (0 = none)")
    parser.add_argument("--compare-to", help="published model to put beside the results (e.g. "
                                             "state-spaces/mamba-1.4b for a fine-tune of it; default: --model "
                                             "when it is a known checkpoint)")
    parser.add_argument("--output", default="eval-results", help="folder for results.json and results.md")
    parser.set_defaults(func=cmd_eval)

    commands = parser.add_subparsers(metavar="ppl")
    ppl = commands.add_parser("ppl", help="perplexity of long text files, loss by token position (PNG)",
                              description="Exact perplexity of each file (the recurrent state carried over the "
                                          "whole text) and a plot of the loss by token position.")
    ppl.add_argument("files", nargs="+", help="text files")
    add_model_arguments(ppl, DEFAULT_MODEL)
    ppl.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens of each file")
    ppl.add_argument("--bin-size", type=int, default=DEFAULT_BIN_SIZE, help="token positions per point of the plot")
    ppl.add_argument("--train-length", type=int, default=DEFAULT_TRAIN_LENGTH,
                     help="marked on the plot (default 2048, the Mamba checkpoints' training length)")
    ppl.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    ppl.add_argument("--tokens-per-forward", type=int, default=DEFAULT_TOKENS_PER_FORWARD,
                     help="most tokens scored by one forward call (bounds the logits' memory)")
    ppl.add_argument("--output", default="eval-results/ppl", help="folder for perplexity.json and "
                                                                  "loss_by_position.png")
    ppl.set_defaults(func=cmd_ppl)


# ---- mambakit eval -------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    if importlib.util.find_spec("lm_eval") is None:
        raise UsageError("lm-evaluation-harness is not installed; pip install 'mambakit[eval]'")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable, make_table

    from mambakit.eval.harness import MambaKitLM

    data_dir = _data_dir(args.data_dir)
    tasks = _task_names(args.tasks, data_dir)
    compare_to = _compared_checkpoint(args.compare_to, args.model)
    for path in args.include_path:
        if not Path(path).is_dir():
            raise UsageError(f"--include-path {path} is not a folder of task YAMLs")
    manager = TaskManager(include_path=[str(TASKS_DIR), *args.include_path],
                          include_defaults=bool(args.include_path) or not set(tasks) <= set(LOCAL_TASK_FILES),
                          metadata={DATA_DIR_KEY: str(data_dir) if data_dir else None})
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        raise UsageError(f"unknown task(s) {', '.join(unknown)}; see `lm_eval ls tasks`, or add --include-path "
                         "with their YAMLs")
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit

    model = MambaKitLM(pretrained=args.model, tokenizer=args.tokenizer, dtype=args.dtype, device=args.device,
                       batch_size=args.batch_size)
    try:
        output = simple_evaluate(model=model, tasks=tasks, num_fewshot=args.num_fewshot, limit=limit,
                                 bootstrap_iters=args.bootstrap_iters, task_manager=manager, log_samples=False)
    except ConnectionError as exc:  # a task's dataset is not cached and the hub is out of reach
        raise UsageError(f"{exc}: run once online (datasets caches it), or evaluate local tasks with --data-dir "
                         "(lambada_openai, piqa)") from None
    rows = comparison_rows(output["results"], compare_to)
    tables = make_table(output) + ("\n" + markdown_table(rows, compare_to) if rows else "")
    print(tables)

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"model": args.model, "tasks": tasks, "limit": limit, "num_fewshot": args.num_fewshot,
              "results": output["results"], "n-shot": output.get("n-shot"), "versions": output.get("versions"),
              "paper": {"compared_to": compare_to, "rows": rows}}
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, default=handle_non_serializable))
    (out_dir / "results.md").write_text(f"# {args.model}\n\n{tables}\n")
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    return 0


def _compared_checkpoint(compare_to: str | None, model: str) -> str | None:
    """The published checkpoint to show beside the results: --compare-to's, else the model's if known."""
    if compare_to is None:
        return known_checkpoint(model)
    known = known_checkpoint(compare_to)
    if known is None:
        raise UsageError(f"--compare-to {compare_to}: no published numbers for it; known: {', '.join(PUBLISHED)}")
    return known


def _data_dir(value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise UsageError(f"--data-dir {value} is not a folder")
    return path


def _task_names(spec: str, data_dir: Path | None) -> list[str]:
    """'paper' or 'a,b' -> task names, each lm-eval task swapped for its local twin when data_dir has its files."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise UsageError("--tasks is empty; give task names or 'paper'")
    expanded = [task for name in names for task in (PAPER_TASKS if name == "paper" else (name,))]
    if data_dir is None and any(task in LOCAL_TASK_FILES for task in expanded):
        raise UsageError("the mambakit_* tasks read local files: pass --data-dir with the folder holding them")
    return list(dict.fromkeys(local_twin(task, data_dir) for task in expanded))


# ---- mambakit eval ppl ---------------------------------------------------------------------------
def cmd_ppl(args) -> int:
    from mambakit.generation import Generator

    texts = {}
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"{path} is not a file; give text files to score")
        texts[str(path)] = path.read_text(encoding="utf-8", errors="replace")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UsageError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    model, tokenizer, _ = load_from_args(args)
    losses = text_losses(Generator(model, tokenizer), texts, max_tokens=args.max_tokens, batch_size=args.batch_size,
                         tokens_per_forward=args.tokens_per_forward)
    for loss in losses:
        print(f"{loss.name}: {loss.tokens} tokens, perplexity {loss.perplexity:.3f}")
    print(f"all: {sum(loss.tokens for loss in losses)} tokens, perplexity {overall_perplexity(losses):.3f}")
    json_path, png_path = write_report(losses, Path(args.output), args.model, args.bin_size, args.train_length)
    print(f"wrote {json_path} and {png_path}")
    return 0

