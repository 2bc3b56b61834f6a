"""lm-eval task YAMLs over local files (no hub needed), and which of lm-eval's tasks each one mirrors.

The YAMLs in this folder read their rows through ``local_data.py`` from the folder lm-eval passes as task
metadata ``eval_data_dir`` (``mambakit eval --data-dir DIR``). Each mirrors an lm-eval task exactly
(prompt, target, metrics) except for where the rows come from.
"""
from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
DATA_DIR_KEY = "eval_data_dir"

LAMBADA_FILE = "lambada_openai_test.jsonl"
PIQA_FILE = "piqa_valid.jsonl"
PIQA_LABELS_FILE = "piqa_valid-labels.lst"

# local task -> the files it reads from eval_data_dir
LOCAL_TASK_FILES: dict[str, tuple[str, ...]] = {
    "mambakit_lambada_openai": (LAMBADA_FILE,),
    "mambakit_lambada_rolling": (LAMBADA_FILE,),
    "mambakit_piqa": (PIQA_FILE, PIQA_LABELS_FILE),
}
# lm-eval task -> its local twin (same prompts and metrics, rows from eval_data_dir)
LOCAL_TWINS: dict[str, str] = {"lambada_openai": "mambakit_lambada_openai", "piqa": "mambakit_piqa"}


def local_twin(task: str, data_dir: Path | None) -> str:
    """``task``'s local twin when ``data_dir`` holds the twin's files, else ``task`` itself."""
    twin = LOCAL_TWINS.get(task)
    if twin is None or data_dir is None:
        return task
    return twin if all((data_dir / name).is_file() for name in LOCAL_TASK_FILES[twin]) else task


def mirrored_task(task: str) -> str:
    """The lm-eval task a local task mirrors (``mambakit_piqa`` -> ``piqa``); other names unchanged."""
    return {twin: original for original, twin in LOCAL_TWINS.items()}.get(task, task)
