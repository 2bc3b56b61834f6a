"""Chunked linear + cross-entropy against the reference: loss and gradients, chunking, ignored positions."""
import pytest
import torch

from mambakit.ops import reference
from mambakit.ops.kernels import linear_cross_entropy as ce_kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCES = {torch.float32: dict(rtol=6e-4, atol=2e-3), torch.bfloat16: dict(rtol=3e-2, atol=5e-2)}


def _loss_and_grads(fn, hidden, weight, labels, grad_scale=1.0, **kwargs):
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    loss = fn(hidden, weight, labels, **kwargs)
    (loss * grad_scale).backward()
    return loss, hidden.grad, weight.grad


def _problem(tokens, dim, vocab, dtype, ignored_fraction=0.3):
    hidden = torch.randn(tokens, dim, device=DEVICE, dtype=dtype)
    weight = torch.randn(vocab, dim, device=DEVICE, dtype=dtype) / dim**0.5
    labels = torch.randint(0, vocab, (tokens,), device=DEVICE)
    labels[torch.rand(tokens, device=DEVICE) < ignored_fraction] = -100
    return hidden, weight, labels


def _assert_matches(hidden, weight, labels, dtype, grad_scale=1.0, **kwargs):
    expected = _loss_and_grads(reference.linear_cross_entropy, hidden, weight, labels, grad_scale, **kwargs)
    actual = _loss_and_grads(ce_kernels.linear_cross_entropy, hidden, weight, labels, grad_scale, **kwargs)
    assert actual[0].dtype == torch.float32 and actual[0].shape == ()
    for name, out, ref in zip(("loss", "grad hidden", "grad weight"), actual, expected):
        assert out.dtype == ref.dtype, name
        torch.testing.assert_close(out, ref, **TOLERANCES[dtype], msg=lambda m: f"{name}: {m}")


@pytest.fixture
def small_chunks(monkeypatch):
    """A logits buffer of 4 fp32 (8 bf16) rows of a 37-entry vocabulary, streamed in blocks of 16."""
    monkeypatch.setattr(ce_kernels, "CHUNK_LOGITS_BYTES", 4 * 37 * 4)
    monkeypatch.setattr(ce_kernels, "BLOCK_V", 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_cross_entropy_matches_reference(dtype):
    hidden, weight, labels = _problem(10, 24, 37, dtype)
    _assert_matches(hidden, weight, labels, dtype, grad_scale=2.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_cross_entropy_several_chunks(small_chunks, dtype):
    """11 tokens in 3 (fp32) or 2 (bf16) chunks; the vocabulary streams through 3 blocks of 16."""
    hidden, weight, labels = _problem(11, 24, 37, dtype)
    labels[0] = 36  # the last vocabulary entry, in the partial block
    _assert_matches(hidden, weight, labels, dtype, grad_scale=0.5, ignore_index=-100)


def test_linear_cross_entropy_custom_ignore_index(small_chunks):
    hidden, weight, labels = _problem(9, 16, 37, torch.float32, ignored_fraction=0.0)
    labels[::3] = 5
    _assert_matches(hidden, weight, labels, torch.float32, ignore_index=5)


def test_linear_cross_entropy_all_ignored_is_zero_with_zero_grads():
    hidden, weight, labels = _problem(6, 16, 37, torch.float32)
    labels[:] = -100
    loss, grad_hidden, grad_weight = _loss_and_grads(ce_kernels.linear_cross_entropy, hidden, weight, labels)
    assert loss.item() == 0.0
    assert not grad_hidden.any() and not grad_weight.any()


def test_linear_cross_entropy_gradient_for_weight_only_and_no_grad():
    hidden, weight, labels = _problem(8, 16, 37, torch.float32)
    weight_leaf = weight.clone().requires_grad_()
    ce_kernels.linear_cross_entropy(hidden, weight_leaf, labels).backward()
    expected_weight = weight.clone().requires_grad_()
    reference.linear_cross_entropy(hidden, expected_weight, labels).backward()
    torch.testing.assert_close(weight_leaf.grad, expected_weight.grad, **TOLERANCES[torch.float32])
    with torch.no_grad():
        loss = ce_kernels.linear_cross_entropy(hidden, weight_leaf, labels)
    torch.testing.assert_close(loss, reference.linear_cross_entropy(hidden, weight, labels),
                               **TOLERANCES[torch.float32])


@pytest.mark.gpu
def test_linear_cross_entropy_real_shape_and_peak_memory():
    tokens, dim, vocab = 8192, 2048, 50280
    hidden, weight, labels = _problem(tokens, dim, vocab, torch.bfloat16, ignored_fraction=0.1)
    _assert_matches(hidden, weight, labels, torch.bfloat16)

    hidden, weight = hidden.requires_grad_(), weight.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    ce_kernels.linear_cross_entropy(hidden, weight, labels).backward()
    torch.cuda.synchronize()
    gradients = hidden.numel() * 2 + weight.numel() * 2
    workspace = torch.cuda.max_memory_allocated() - baseline - gradients
    full_logits_bf16 = tokens * vocab * 2
    assert workspace < full_logits_bf16 / 2, f"{workspace / 2**20:.0f} MiB of workspace"
