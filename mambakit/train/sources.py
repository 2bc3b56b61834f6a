"""Where training rows come from: a hub dataset (through ``datasets``) or local jsonl / json / parquet / txt.

A row is a dict (one JSON object, one parquet record or one hub record) or, for .txt files, one string (the
whole file; raw text is cut into documents later). Unreadable rows are not dropped silently: they come back
as ``RowError`` values so the data report can count and show them.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from mambakit.errors import UserError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")
EVAL_SPLIT_NAMES = ("test", "validation", "valid", "eval")


class DataError(UserError):
    """Training data that cannot be found or used; the message says what and how to fix it."""


@dataclass
class RowError:
    """A row that could not even be read (e.g. a jsonl line that is not JSON)."""

    reason: str
    snippet: str


@dataclass
class Split:
    """Rows for training and, when the source has one, its own held-out rows (else None)."""

    train: list
    eval: list | None


def read_source(spec: str, seed: int = 0) -> Split:
    """Rows of ``spec``: a local file or folder, or a hub dataset id (``owner/name``, optionally ``:split``)."""
    path = Path(spec).expanduser()
    if path.exists():
        return Split(read_local(path), None)
    name, _, split = spec.partition(":")
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise DataError(f"no data at {spec}: give a local .jsonl/.json/.parquet/.txt file or folder, or a hub "
                        "dataset id like OpenAssistant/oasst_top1_2023-08-25")
    return _read_hub(name, split or None)


def read_local(path: Path) -> list:
    """All rows of a file, or of every supported file in a folder (sorted by name)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{path} holds no {'/'.join(LOCAL_SUFFIXES)} files")
        return [row for file in files for row in read_local(file)]
    if path.suffix not in LOCAL_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use {', '.join(LOCAL_SUFFIXES)}")
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8", errors="replace")]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON ({exc}); use one JSON object per line (.jsonl)") from None
        return rows
    return [_parse_json_line(line, number) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _parse_json_line(line: str, number: int):
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return RowError(f"not JSON ({exc.msg})", f"line {number}: {line[:120]}")


def _read_hub(name: str, split: str | None) -> Split:
    try:
        import datasets
    except ImportError:
        raise DataError("hub datasets need the `datasets` package: pip install 'mambakit[train]'") from None
    try:
        available = datasets.get_dataset_split_names(name)
    except Exception as exc:  # offline, unknown name, gated: datasets raises many types
        raise DataError(f"cannot open hub dataset {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                        "check the name and network, or pass a local file") from None
    train_split = split or ("train" if "train" in available else available[0])
    if train_split not in available:
        raise DataError(f"hub dataset {name!r} has no split {train_split!r}; it has {', '.join(available)}")
    eval_split = next((s for s in EVAL_SPLIT_NAMES if s in available and s != train_split), None)
    train = list(datasets.load_dataset(name, split=train_split))
    held_out = list(datasets.load_dataset(name, split=eval_split)) if eval_split else None
    return Split(train, held_out)


def hold_out(rows: list, fraction: float, seed: int) -> Split:
    """A seeded random ``fraction`` of ``rows`` (at least one when there are two or more) as the eval split."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"eval_fraction must be in [0, 1), got {fraction}")
    count = min(len(rows) - 1, max(1, round(len(rows) * fraction))) if fraction > 0 and len(rows) > 1 else 0
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return Split([r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)] or None)
