"""Rows of the task YAMLs in this folder, read from files in ``eval_data_dir`` (a ``datasets.DatasetDict``).

lm-eval calls these as ``custom_dataset`` with the task metadata as keyword arguments, so they take the
folder as ``eval_data_dir`` and ignore everything else it passes.
"""
from __future__ import annotations

import json
from pathlib import Path

import datasets

from mambakit.errors import UserError
from mambakit.eval.tasks import DATA_DIR_KEY, LAMBADA_FILE, PIQA_FILE, PIQA_LABELS_FILE


class LocalDataError(UserError):
    """A local evaluation file that is missing or malformed."""


def lambada_openai(eval_data_dir: str | None = None, **_) -> datasets.DatasetDict:
    """LAMBADA (OpenAI) test passages: {"text"} rows -> split "test"."""
    path = _data_file(eval_data_dir, LAMBADA_FILE)
    rows = _read_jsonl(path, required=("text",))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"text": row["text"]} for row in rows])})


def piqa(eval_data_dir: str | None = None, **_) -> datasets.DatasetDict:
    """PIQA validation: {"goal", "sol1", "sol2"} rows plus one 0/1 label a line -> split "validation"."""
    path = _data_file(eval_data_dir, PIQA_FILE)
    rows = _read_jsonl(path, required=("goal", "sol1", "sol2"))
    labels_path = _data_file(eval_data_dir, PIQA_LABELS_FILE)
    labels = labels_path.read_text().split()
    if len(labels) != len(rows) or any(label not in ("0", "1") for label in labels):
        raise LocalDataError(f"{labels_path} must hold one label (0 or 1) per row of {path} ({len(rows)} rows), "
                             f"found {len(labels)} entries")
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(
        [{"goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"], "label": int(label)}
         for row, label in zip(rows, labels)])})


def _data_file(data_dir: str | None, name: str) -> Path:
    if not data_dir:
        raise LocalDataError(f"local task data needs a folder holding {name}: pass --data-dir DIR to mambakit eval "
                             f"(or metadata {{'{DATA_DIR_KEY}': DIR}} to lm-eval's TaskManager)")
    path = Path(data_dir).expanduser() / name
    if not path.is_file():
        raise LocalDataError(f"{path} does not exist; --data-dir must be the folder holding {name}")
    return path


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LocalDataError(f"{path}:{number} is not valid JSON ({exc.msg})") from None
            missing = [key for key in required if not isinstance(row, dict) or not isinstance(row.get(key), str)]
            if missing:
                raise LocalDataError(f"{path}:{number} lacks the text field(s) {', '.join(missing)}")
            rows.append(row)
    return rows
