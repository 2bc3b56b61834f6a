"""Batching: padding-free packing (the default) or padded batches grouped by length (the fallback).

Packing: examples are placed into rows of at most ``max_length`` tokens by best-fit decreasing (every
example fits, since it was cut to ``max_length``), which fills rows almost completely; ``seq_idx`` (b, L)
int32 numbers the examples of each row, so the kernels restart the recurrent state at every example
boundary. Every example's first label is -100, so no example is predicted from the one before it: the loss
equals the unpacked one. Rows stay rows (b, L) rather than one long sequence, so the scans keep their
parallelism over the batch; the few positions after a row's last example are padding (labels -100,
their own ``seq_idx``), and ``fill`` reports how few.

Padding: examples of a batch are right-padded to the longest (labels -100 there). A Mamba is causal, so
right padding never reaches the real tokens and needs no attention mask; ``group_by_length`` sampling keeps
the padding small.
"""
from __future__ import annotations

import bisect

import torch

from mambakit.train.rendering import IGNORE_INDEX, Encoded


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: example indices grouped into rows whose lengths sum to at most ``capacity``.

    Deterministic; rows come out longest-example first (the trainer's sampler shuffles them).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free space, row index)
    for index in order:
        length = lengths[index]
        if length > capacity:
            raise ValueError(f"example of {length} tokens exceeds the row capacity {capacity}")
        slot = bisect.bisect_left(free, (length, -1))
        if slot < len(free):
            space, row = free.pop(slot)
        else:
            space, row = capacity, len(rows)
            rows.append([])
        rows[row].append(index)
        if space - length > 0:
            bisect.insort(free, (space - length, row))
    return rows


def packed_rows(examples: list[Encoded], capacity: int) -> list[dict]:
    """Dataset items for packing: {"input_ids", "labels", "lengths" (the examples' lengths, in order)}."""
    rows = []
    for members in pack([len(e.input_ids) for e in examples], capacity):
        rows.append({"input_ids": [t for i in members for t in examples[i].input_ids],
                     "labels": [t for i in members for t in examples[i].labels],
                     "lengths": [len(examples[i].input_ids) for i in members]})
    return rows


def example_rows(examples: list[Encoded]) -> list[dict]:
    """Dataset items for padded batches: {"input_ids", "labels"}."""
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]


class PackedCollator:
    """Packed rows -> input_ids, labels (b, L) and seq_idx (b, L) int32; L = the longest row, rounded up to
    ``multiple``; the tail of a shorter row is ``pad_id`` / -100 with a seq_idx of its own."""

    def __init__(self, pad_id: int, multiple: int = 8):
        self.pad_id, self.multiple = pad_id, multiple

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = PaddedCollator(self.pad_id, self.multiple)(rows)
        seq_idx = torch.zeros(batch["input_ids"].shape, dtype=torch.int32)
        for index, row in enumerate(rows):
            lengths = torch.tensor(row["lengths"] + [seq_idx.shape[1] - sum(row["lengths"])])
            seq_idx[index] = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), lengths)
        return {**batch, "seq_idx": seq_idx}


def fill(rows: list[dict], length: int) -> float:
    """The fraction of real tokens when ``rows`` are padded to ``length``."""
    return sum(len(row["input_ids"]) for row in rows) / max(1, len(rows) * length)


class PaddedCollator:
    """Rows -> input_ids, labels (b, L) right-padded with ``pad_id`` / -100, L rounded up to ``multiple``."""

    def __init__(self, pad_id: int, multiple: int = 8):
        self.pad_id, self.multiple = pad_id, multiple

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(row["input_ids"]) for row in rows)
        longest = -(-longest // self.multiple) * self.multiple
        input_ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, :len(row["input_ids"])] = torch.tensor(row["input_ids"])
            labels[index, :len(row["labels"])] = torch.tensor(row["labels"])
        return {"input_ids": input_ids, "labels": labels}


def batch_items(examples: list[Encoded], packing: bool, max_length: int, pad_id: int):
    """(dataset items, collator) for ``examples``."""
    if packing:
        return packed_rows(examples, max_length), PackedCollator(pad_id)
    return example_rows(examples), PaddedCollator(pad_id)
