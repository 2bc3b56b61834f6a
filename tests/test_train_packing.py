"""Packing: best-fit rows, seq_idx, and packed == unpacked loss and gradients on Mamba-1 and Mamba-2."""
import random

import pytest
import torch

import mambakit
from mambakit.train.packing import PackedCollator, PaddedCollator, fill, pack, packed_rows
from mambakit.train.rendering import IGNORE_INDEX, Encoded


def _examples(count: int, seed: int, vocab: int = 257, longest: int = 24) -> list[Encoded]:
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        ids = [rng.randrange(1, vocab) for _ in range(rng.randrange(2, longest))]
        labels = [t if rng.random() < 0.6 else IGNORE_INDEX for t in ids]
        labels[0], labels[-1] = IGNORE_INDEX, ids[-1]
        examples.append(Encoded(ids, labels))
    return examples


def test_best_fit_packing_places_every_example_once_within_capacity():
    lengths = [random.Random(1).randrange(1, 100) for _ in range(500)]
    rows = pack(lengths, 128)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    assert len(rows) <= -(-sum(lengths) // 128) * 1.05  # best-fit decreasing: within 5% of the bound here
    assert pack(lengths, 128) == rows
    with pytest.raises(ValueError):
        pack([129], 128)


def test_packed_collator_numbers_the_examples_and_pads_only_the_tail():
    examples = [Encoded([5, 6, 7], [-100, 6, 7]), Encoded([8, 9], [-100, 9]), Encoded([1, 2, 3, 4], [-100, 2, 3, 4])]
    rows = packed_rows(examples, capacity=6)
    assert [row["lengths"] for row in rows] == [[4, 2], [3]]
    batch = PackedCollator(pad_id=0, multiple=8)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 8, 9, 0, 0], [5, 6, 7, 0, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3, 4, -100, 9, -100, -100], [-100, 6, 7] + [-100] * 5]
    assert batch["seq_idx"].tolist() == [[0, 0, 0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1, 1, 1]]
    assert batch["seq_idx"].dtype == torch.int32
    assert fill(rows, 6) == 9 / 12


@pytest.mark.parametrize("preset", ["tiny-random", "tiny-random-mamba2"])
def test_packed_and_unpacked_training_give_the_same_loss_and_gradients(preset):
    model = mambakit.load_model(f"mambakit:{preset}", device="cpu", dtype="float32").train()
    examples = _examples(10, seed=0)

    def loss_and_grads(batch):
        model.zero_grad()
        out = model(**batch)
        targets = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        (out.loss * targets).backward()  # token sum, as the trainer normalises over the whole batch
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    padded_loss, padded_grads = loss_and_grads(PaddedCollator(pad_id=0)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]))
    packed_batch = PackedCollator(pad_id=0)(packed_rows(examples, capacity=48))
    assert packed_batch["input_ids"].shape[0] < len(examples)  # several examples share a row
    packed_loss, packed_grads = loss_and_grads(packed_batch)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-6, atol=1e-6)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_without_seq_idx_packing_would_leak_state_between_examples():
    """The test above can fail: dropping seq_idx changes the loss."""
    model = mambakit.load_model("mambakit:tiny-random", device="cpu", dtype="float32")
    batch = PackedCollator(pad_id=0)(packed_rows(_examples(6, seed=1), capacity=48))
    with torch.no_grad():
        with_reset = model(**batch).loss
        without = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    assert abs(with_reset - without) > 2e-5  # ten times the packed == unpacked tolerance
