"""The Mamba paper's zero-shot evaluation, its published numbers, and a side-by-side table.

Published numbers: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023),
Table 3 (zero-shot, lm-evaluation-harness; accuracies in %, HellaSwag and ARC-Challenge length-normalised).
The paper's set also names OpenBookQA (run by the reference repository's evaluation command), which
Table 3 does not report: it is measured and shown without a published value.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from mambakit.eval.tasks import LOCAL_TWINS

PAPER_TASKS = ("lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande", "openbookqa")
PAPER_SOURCE = "Gu & Dao 2023 (Mamba), Table 3"


@dataclass(frozen=True)
class Column:
    """One number of the paper's table: an lm-eval task and metric, shown in % when ``percent``."""

    task: str
    metric: str
    label: str
    percent: bool = True


COLUMNS = (
    Column("lambada_openai", "perplexity", "LAMBADA ppl (lower is better)", percent=False),
    Column("lambada_openai", "acc", "LAMBADA acc"),
    Column("hellaswag", "acc_norm", "HellaSwag acc_norm"),
    Column("piqa", "acc", "PIQA acc"),
    Column("arc_easy", "acc", "ARC-E acc"),
    Column("arc_challenge", "acc_norm", "ARC-C acc_norm"),
    Column("winogrande", "acc", "WinoGrande acc"),
    Column("openbookqa", "acc_norm", "OpenBookQA acc_norm"),
)


def _row(lambada_ppl, lambada_acc, hellaswag, piqa, arc_easy, arc_challenge, winogrande) -> dict[str, float]:
    values = (lambada_ppl, lambada_acc, hellaswag, piqa, arc_easy, arc_challenge, winogrande)
    return {f"{column.task}/{column.metric}": value for column, value in zip(COLUMNS, values)}


PUBLISHED: dict[str, dict[str, float]] = {
    "state-spaces/mamba-130m": _row(16.07, 44.3, 35.3, 64.5, 48.0, 24.3, 51.9),
    "state-spaces/mamba-370m": _row(8.14, 55.6, 46.5, 69.5, 55.1, 28.0, 55.3),
    "state-spaces/mamba-790m": _row(6.02, 62.7, 55.1, 72.1, 61.2, 29.5, 56.1),
    "state-spaces/mamba-1.4b": _row(5.04, 64.9, 59.1, 74.2, 65.5, 32.8, 61.5),
    "state-spaces/mamba-2.8b": _row(4.23, 69.2, 66.1, 75.2, 69.7, 36.3, 63.5),
}


def known_checkpoint(name: str) -> str | None:
    """The PUBLISHED key for a model name: a hub id, its ``-hf`` twin or a folder named after it; else None."""
    stem = PurePosixPath(str(name).rstrip("/").replace("\\", "/")).name.lower().removesuffix("-hf")
    for key in PUBLISHED:
        if PurePosixPath(key).name == stem:
            return key
    return None


def measured_value(results: dict, column: Column) -> float | None:
    """The column's value in lm-eval's ``results`` dict (a local twin task counts as its original), in %."""
    for task, metrics in results.items():
        if task == column.task or LOCAL_TWINS.get(column.task) == task:
            value = metrics.get(f"{column.metric},none")
            if isinstance(value, (int, float)):
                return value * 100 if column.percent else value
    return None


def comparison_rows(results: dict, published_key: str | None) -> list[dict]:
    """[{label, measured, published, task, metric}] for every column measured or published."""
    published = PUBLISHED.get(published_key, {}) if published_key else {}
    rows = []
    for column in COLUMNS:
        measured = measured_value(results, column)
        paper = published.get(f"{column.task}/{column.metric}")
        if measured is not None or paper is not None:
            rows.append({"label": column.label, "task": column.task, "metric": column.metric,
                         "measured": measured, "published": paper})
    return rows


def markdown_table(rows: list[dict], published_key: str | None) -> str:
    """The rows as a markdown table: measured, and (with a published key) the paper's value and the gap."""
    def number(value):
        return "—" if value is None else f"{value:.2f}"

    if published_key:
        lines = [f"| metric | measured | paper ({published_key}) | measured − paper |", "|---|---:|---:|---:|"]
        for row in rows:
            gap = None if row["measured"] is None or row["published"] is None else row["measured"] - row["published"]
            lines.append(f"| {row['label']} | {number(row['measured'])} | {number(row['published'])} | "
                         f"{'—' if gap is None else f'{gap:+.2f}'} |")
        lines.append(f"\nPaper numbers: {PAPER_SOURCE}.")
    else:
        lines = ["| metric | measured |", "|---|---:|"]
        lines += [f"| {row['label']} | {number(row['measured'])} |" for row in rows]
    return "\n".join(lines)
