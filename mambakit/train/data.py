"""Training rows -> examples: format detection, validation and the malformed-row report.

Formats (``data_format``):

- ``chatml``: ``{"text": "<|im_start|>user\\n…<|im_end|>\\n<|im_start|>assistant\\n…<|im_end|>\\n"}``, the layout
  of OpenAssistant/oasst_top1_2023-08-25; parsed back into messages so any template can render it;
- ``messages``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "…"}, …]}``;
- ``alpaca``: ``{"instruction", "input" (optional), "output"}`` -> one user turn and one assistant turn;
- ``prompt_completion``: ``{"prompt", "completion"}``: plain text, the loss on the completion;
- ``text``: raw text (a .txt file, or rows with only ``text``) for pretraining: documents split at the
  end-of-text marker (TinyStories' ``<|endoftext|>`` lines), all tokens trained.

Rows that do not fit the format are counted and skipped, never trained on (``DataReport``).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

from mambakit.train.sources import DataError, RowError

FORMATS = ("auto", "chatml", "messages", "alpaca", "prompt_completion", "text")
ROLES = ("system", "user", "assistant")
CHATML_TURN = re.compile(r"<\|im_start\|>([a-z]+)\n(.*?)<\|im_end\|>\n?", re.DOTALL)
REPORT_EXAMPLES = 5


@dataclass
class Conversation:
    """A chat: messages [{"role", "content"}], rendered through a chat template; ``row``: where it was read."""

    messages: list[dict]
    row: int = -1


@dataclass
class Completion:
    """Plain text: the prompt is context, the completion (and end-of-text) the target."""

    prompt: str
    completion: str
    row: int = -1


@dataclass
class Document:
    """Raw text, every token a target."""

    text: str
    row: int = -1


@dataclass
class DataReport:
    """Rows read, used and skipped (with the reasons and the first few skipped rows)."""

    rows: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)

    def skip(self, index: int, reason: str, snippet: str) -> None:
        """Count a skipped row; ``reason``'s part before " (" groups the counts."""
        self.reasons[reason.split(" (")[0]] += 1
        if len(self.examples) < REPORT_EXAMPLES:
            self.examples.append({"row": index, "reason": reason, "row_start": snippet[:160]})

    @property
    def skipped(self) -> int:
        return sum(self.reasons.values())

    @property
    def used(self) -> int:
        return self.rows - self.skipped

    def summary(self) -> str:
        line = f"{self.rows} rows, {self.used} used, {self.skipped} skipped"
        if self.skipped:
            line += " (" + "; ".join(f"{count} × {reason}" for reason, count in self.reasons.most_common()) + ")"
            line += "".join(f"\n  row {e['row']}: {e['reason']}: {e['row_start']}" for e in self.examples)
        return line

    def to_dict(self) -> dict:
        return {"rows": self.rows, "used": self.used, "skipped": self.skipped, "reasons": dict(self.reasons),
                "first_skipped": self.examples}


def detect_format(rows: list) -> str:
    """The format of the first readable row (see the module docstring)."""
    for row in rows:
        if isinstance(row, str):
            return "text"
        if not isinstance(row, dict):
            continue
        if "messages" in row:
            return "messages"
        if "instruction" in row and "output" in row:
            return "alpaca"
        if "prompt" in row and "completion" in row:
            return "prompt_completion"
        if isinstance(row.get("text"), str):
            return "chatml" if "<|im_start|>" in row["text"] else "text"
        raise DataError(f"cannot tell the data format from the fields {sorted(row)[:8]}; expected text, messages, "
                        "instruction/output or prompt/completion (or pass --data-format)")
    raise DataError("the data holds no readable rows")


def to_examples(rows: list, data_format: str, report: DataReport, end_of_text: str) -> list:
    """Rows -> Conversation / Completion / Document examples; bad rows go to ``report``."""
    if data_format not in FORMATS:
        raise DataError(f"data format {data_format!r} is unknown; use one of {', '.join(FORMATS)}")
    if data_format == "auto":
        data_format = detect_format(rows)
    convert = _CONVERTERS[data_format]
    examples = []
    for index, row in enumerate(rows):
        report.rows += 1
        try:
            if isinstance(row, RowError):
                raise _Malformed(row.reason)
            produced = convert(row, end_of_text)
        except _Malformed as exc:
            snippet = row.snippet if isinstance(row, RowError) else json.dumps(row, ensure_ascii=False, default=str)
            report.skip(index, str(exc), snippet)
            continue
        for example in produced:
            example.row = index
        examples.extend(produced)
    return examples


class _Malformed(Exception):
    pass


def _field(row, name: str, optional: bool = False) -> str:
    if not isinstance(row, dict):
        raise _Malformed(f"not a JSON object ({type(row).__name__})")
    value = row.get(name)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise _Malformed(f"field {name!r} missing or not a string")
    if not value.strip() and not optional:
        raise _Malformed(f"field {name!r} is empty")
    return value


def _check_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise _Malformed("messages is not a non-empty list")
    checked = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise _Malformed("a message lacks a string 'content'")
        if message.get("role") not in ROLES:
            raise _Malformed(f"unknown role {str(message.get('role'))[:20]!r} (use system, user, assistant)")
        checked.append({"role": message["role"], "content": message["content"]})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in checked):
        raise _Malformed("no assistant turn")
    return checked


def _from_chatml(row, end_of_text) -> list:
    text = _field(row, "text")
    messages, position = [], 0
    for match in CHATML_TURN.finditer(text):
        if text[position:match.start()].strip():
            break
        messages.append({"role": match.group(1), "content": match.group(2)})
        position = match.end()
    if not messages or text[position:].strip():
        raise _Malformed("text is not a sequence of <|im_start|>role\\n…<|im_end|> turns")
    return [Conversation(_check_messages(messages))]


def _from_messages(row, end_of_text) -> list:
    if not isinstance(row, dict):
        raise _Malformed(f"not a JSON object ({type(row).__name__})")
    return [Conversation(_check_messages(row.get("messages")))]


def _from_alpaca(row, end_of_text) -> list:
    instruction, context, output = _field(row, "instruction"), _field(row, "input", True), _field(row, "output")
    user = instruction + ("\n\n" + context if context.strip() else "")
    return [Conversation([{"role": "user", "content": user}, {"role": "assistant", "content": output}])]


def _from_prompt_completion(row, end_of_text) -> list:
    return [Completion(_field(row, "prompt"), _field(row, "completion"))]


def _from_text(row, end_of_text) -> list:
    text = row if isinstance(row, str) else _field(row, "text")
    documents = [Document(part.strip("\n")) for part in text.split(end_of_text) if part.strip()]
    if not documents:
        raise _Malformed("text is empty")
    return documents


_CONVERTERS = {"chatml": _from_chatml, "messages": _from_messages, "alpaca": _from_alpaca,
               "prompt_completion": _from_prompt_completion, "text": _from_text}
