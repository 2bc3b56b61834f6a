"""LoRA through PEFT: the adapters sit on the projections, are never bypassed, and merge exactly."""
import pytest
import torch

import mambakit
from mambakit.train.lora import MAMBA1_TARGETS, MAMBA2_TARGETS, apply_lora, load_adapter, merge_lora, merged

pytest.importorskip("peft")


@pytest.mark.parametrize("preset, targets", [("tiny-random", MAMBA1_TARGETS), ("tiny-random-mamba2", MAMBA2_TARGETS)])
def test_adapters_train_change_outputs_and_merge_exactly(preset, targets, tmp_path):
    model, tokenizer, _ = mambakit.load(f"mambakit:{preset}", device="cpu", dtype="float32")
    adapted = apply_lora(model, {"r": 4, "alpha": 8}, base_name=f"mambakit:{preset}")
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert {n.split(".mixer.")[1].split(".")[0] for n in trainable} == set(targets)

    ids = torch.randint(1, 257, (2, 12))
    with torch.no_grad():
        before = adapted(ids).logits
    optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        optimizer.zero_grad()
        adapted(ids, labels=ids).loss.backward()
        grads = {n: p.grad for n, p in adapted.named_parameters() if p.requires_grad}
        nonzero = {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}
        # lora_B starts at zero, so lora_A has no gradient on the very first step; after it, every one does
        expected = trainable if step else {n for n in trainable if ".lora_B." in n}
        assert nonzero == expected
        optimizer.step()

    adapted.eval()
    with torch.no_grad():
        after = adapted(ids).logits
        assert (after - before).abs().max() > 1e-4  # the kernels did not bypass the adapters
        # the recurrent step (decode path) sees the adapters too
        state = adapted.base_model.model.allocate_state(2)
        stepped = torch.stack([adapted.base_model.model.step(ids[:, t], state) for t in range(ids.shape[1])], 1)
        torch.testing.assert_close(stepped, after, rtol=1e-4, atol=1e-4)

    adapted.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    fresh, _, _ = mambakit.load(f"mambakit:{preset}", device="cpu", dtype="float32")
    with torch.no_grad():
        reloaded = load_adapter(fresh, tmp_path / "adapter")(ids).logits
        torch.testing.assert_close(reloaded, after, rtol=1e-5, atol=1e-5)
        folded = merged(adapted)
        assert not any("lora" in n for n, _ in folded.named_parameters())
        torch.testing.assert_close(folded(ids).logits, after, rtol=1e-4, atol=1e-5)

    merge_lora(tmp_path / "adapter", tmp_path / "merged")  # the base recorded in the adapter
    on_disk, _, _ = mambakit.load(tmp_path / "merged", device="cpu", dtype="float32")
    with torch.no_grad():
        torch.testing.assert_close(on_disk(ids).logits, after, rtol=1e-4, atol=1e-5)
