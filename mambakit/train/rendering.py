"""Examples -> token ids and labels: chat templates, truncation or chunking, and the loss mask.

The loss mask is made on characters, then carried to tokens through the tokenizer's offsets, so it does not
depend on how the tokenizer splits text at turn boundaries: a token is a target when its first character is
target text. For a chat, the target text of assistant turn i is what the template adds for that turn after
the generation prompt, found by rendering incrementally:

    render(messages[:i], add_generation_prompt=True)  ->  the prompt before the turn
    render(messages[:i + 1])                          ->  ... + the turn's content and closing tags

so with ChatML an assistant turn trains ``content<|im_end|>\\n`` (the model learns to stop), and any Jinja
template whose renderings grow by appending works the same way.

Labels: -100 where there is no target; the first token of every example is never a target (it has no
left context, and when examples are packed it must not be predicted from the previous example).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mambakit.chat.templates import ChatTemplate, get_template
from mambakit.train.data import Completion, DataReport, Document
from mambakit.train.sources import DataError

IGNORE_INDEX = -100
TRAIN_ON = ("assistant", "all")


def resolve_template(name: str, tokenizer) -> ChatTemplate:
    """``auto``: the tokenizer's own chat template, else ChatML (OpenAssistant's layout); otherwise any name
    ``mambakit.chat.templates.get_template`` knows (chatml, zephyr, plain, urial, tokenizer, FILE.jinja)."""
    own = getattr(tokenizer, "chat_template", None)
    if name == "auto":
        name = "tokenizer" if own else "chatml"
    return get_template(name, own)


@dataclass
class Encoded:
    """One training example: input_ids and labels, both (l,) lists of int."""

    input_ids: list[int]
    labels: list[int]


class ExampleEncoder:
    """Renders and tokenizes examples: chats and completions are cut at ``max_length`` tokens (as the seed),
    documents are split into ``max_length`` pieces (every token is worth training on)."""

    def __init__(self, tokenizer, template: ChatTemplate, max_length: int, train_on: str = "assistant"):
        if train_on not in TRAIN_ON:
            raise DataError(f"train_on {train_on!r} is unknown; use assistant (assistant tokens only) or all")
        if max_length < 2:
            raise DataError(f"max_length must be at least 2 tokens, got {max_length}")
        self.tokenizer, self.template, self.max_length, self.train_on = tokenizer, template, max_length, train_on
        self.end_of_text = tokenizer.eos_token or ""

    # ---- characters ----------------------------------------------------------------------------
    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.template.render(messages, self.tokenizer, add_generation_prompt=add_generation_prompt)

    def target_spans(self, example) -> tuple[str, list[tuple[int, int]]]:
        """(text, sorted [start, end) character spans whose tokens are targets)."""
        if isinstance(example, Document):
            text = example.text + self.end_of_text
            return text, [(0, len(text))]
        if isinstance(example, Completion):
            text = example.prompt + example.completion + self.end_of_text
            return text, [(0 if self.train_on == "all" else len(example.prompt), len(text))]
        text = self.render(example.messages)
        if self.train_on == "all":
            return text, [(0, len(text))]
        spans = []
        for index, message in enumerate(example.messages):
            if message["role"] != "assistant":
                continue
            before = self.render(example.messages[:index], add_generation_prompt=True)
            through = self.render(example.messages[:index + 1])
            if not (through.startswith(before) and text.startswith(through)):
                raise DataError(f"chat template {self.template.name!r} does not render conversations by appending "
                                "turns, so the assistant tokens cannot be found; use --template chatml or "
                                "--train-on all")
            spans.append((len(before), len(through)))
        return text, spans

    # ---- tokens ----------------------------------------------------------------------------------
    def encode(self, examples: list, report: DataReport, batch_size: int = 512) -> list[Encoded]:
        """Tokenize ``examples``; those left with no target token are counted in ``report`` and dropped."""
        encoded = []
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            rendered = [self.target_spans(example) for example in batch]
            tokens = self.tokenizer([text for text, _ in rendered], add_special_tokens=False,
                                    return_offsets_mapping=True)
            for offset, ((text, spans), ids, offsets) in enumerate(
                    zip(rendered, tokens["input_ids"], tokens["offset_mapping"])):
                labels = _labels(ids, offsets, spans)
                pieces = (_chunks(ids, labels, self.max_length) if isinstance(batch[offset], Document)
                          else [Encoded(ids[:self.max_length], labels[:self.max_length])])
                for piece in pieces:
                    piece.labels[0] = IGNORE_INDEX
                    if any(label != IGNORE_INDEX for label in piece.labels):
                        encoded.append(piece)
                    elif not isinstance(batch[offset], Document):
                        report.skip(batch[offset].row, f"no target tokens within max_length={self.max_length}",
                                    text)
        return encoded


def _labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """ids where the token's first character lies in a target span, else IGNORE_INDEX."""
    boundaries = np.array([edge for span in spans for edge in span], dtype=np.int64)
    starts = np.array([start for start, _ in offsets], dtype=np.int64)
    inside = np.searchsorted(boundaries, starts, side="right") % 2 == 1
    return np.where(inside, np.array(ids, dtype=np.int64), IGNORE_INDEX).tolist()


def _chunks(ids: list[int], labels: list[int], size: int) -> list[Encoded]:
    """A long document as consecutive pieces of at most ``size`` tokens (a last piece of one token is dropped)."""
    return [Encoded(ids[i:i + size], labels[i:i + size]) for i in range(0, len(ids), size) if len(ids) - i > 1]
