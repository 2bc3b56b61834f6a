"""Mamba-1's recomputing training path (layers/mamba1_recompute.py) against the plain autograd path.

On the Triton scan (here the interpreter on CPU) a training forward keeps neither the conv output u nor Δ;
the backward recomputes them. Every parameter gradient must equal the plain path's, with and without packed
sequences, for Mamba-1 and Falcon-Mamba and through LoRA adapters, and autograd must hold 2·d_inner fewer
values per token and layer.
"""
import pytest
import torch

from mambakit import MambaConfig, MambaLM
from mambakit.layers import mamba1_recompute
from mambakit.layers.mamba1 import Mamba1Mixer

CONFIGS = {
    "mamba": MambaConfig(model_type="mamba", d_model=16, n_layer=2, vocab_size=64, d_state=4),
    "falcon_mamba": MambaConfig(model_type="falcon_mamba", d_model=16, n_layer=2, vocab_size=64, d_state=4,
                                tie_embeddings=False),
}
LENGTH = 24


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv("MAMBAKIT_BACKEND", "triton")  # conftest sets TRITON_INTERPRET=1


@pytest.fixture
def recompute_calls(monkeypatch):
    """How many times the recomputing path ran (so that a test cannot pass on the plain path alone)."""
    calls = []
    original = mamba1_recompute.scan_recomputing_inputs

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(mamba1_recompute, "scan_recomputing_inputs", counted)
    return calls


def _gradients(model, ids, seq_idx, recompute: bool, monkeypatch, autocast_dtype=None):
    monkeypatch.setattr(Mamba1Mixer, "recompute_in_backward", recompute)
    model.zero_grad(set_to_none=True)
    device_type = next(model.parameters()).device.type
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = model(ids, labels=ids, seq_idx=seq_idx).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _model(kind):
    model = MambaLM.from_config(CONFIGS[kind], seed=0).train()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("D", "dt_proj.bias")):
                param.add_(0.3 * torch.randn_like(param))
    return model


@pytest.mark.parametrize("kind", sorted(CONFIGS))
@pytest.mark.parametrize("packed", [False, True])
def test_gradients_equal_plain_path(kind, packed, triton_backend, recompute_calls, monkeypatch):
    torch.manual_seed(1)
    model = _model(kind)
    ids = torch.randint(1, 64, (2, LENGTH))
    seq_idx = torch.tensor([[0] * 10 + [1] * 14, [0] * 24], dtype=torch.int32) if packed else None
    plain_loss, plain = _gradients(model, ids, seq_idx, False, monkeypatch)
    assert not recompute_calls
    loss, recomputed = _gradients(model, ids, seq_idx, True, monkeypatch)
    assert len(recompute_calls) == CONFIGS[kind].n_layer
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    assert recomputed.keys() == plain.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=6e-4, atol=2e-3, msg=name)


def test_gradients_equal_plain_path_under_autocast(triton_backend, recompute_calls, monkeypatch):
    """The Trainer's bf16 autocast over fp32 weights: the backward recomputes u and Δ in bf16, as the forward
    made them, so the gradients are the plain path's."""
    torch.manual_seed(5)
    model = _model("mamba")
    ids = torch.randint(1, 64, (2, LENGTH))
    plain_loss, plain = _gradients(model, ids, None, False, monkeypatch, torch.bfloat16)
    loss, recomputed = _gradients(model, ids, None, True, monkeypatch, torch.bfloat16)
    assert recompute_calls
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=3e-2, atol=5e-2, msg=name)


def test_lora_gradients_equal_plain_path(triton_backend, recompute_calls, monkeypatch):
    peft = pytest.importorskip("peft")
    torch.manual_seed(2)
    model = peft.get_peft_model(_model("mamba"), peft.LoraConfig(r=4, target_modules=["x_proj", "dt_proj", "in_proj"],
                                                                 init_lora_weights=False))
    ids = torch.randint(1, 64, (2, LENGTH))
    _, plain = _gradients(model, ids, None, False, monkeypatch)
    _, recomputed = _gradients(model, ids, None, True, monkeypatch)
    assert recompute_calls and any("lora" in name for name in plain)
    assert recomputed.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=6e-4, atol=2e-3, msg=name)


def test_autograd_keeps_neither_u_nor_delta(triton_backend, monkeypatch):
    """The values autograd holds from one mixer forward to its backward: the recomputing path holds
    b·l·2·d_inner fewer (what its backward saves while recomputing is freed as that backward ends)."""
    torch.manual_seed(3)
    mixer = _model("mamba").backbone.layers[0].mixer
    hidden = torch.randn(2, LENGTH, 16, requires_grad=True)

    def saved_values(recompute: bool) -> int:
        monkeypatch.setattr(Mamba1Mixer, "recompute_in_backward", recompute)
        seen: dict[int, int] = {}

        def pack(tensor):
            seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes() // tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            output = mixer(hidden)
        output.sum().backward()
        return sum(seen.values())

    d_inner = mixer.A_log.shape[0]
    assert saved_values(False) - saved_values(True) >= 2 * 2 * LENGTH * d_inner


def test_inference_and_masked_forwards_keep_the_plain_path(triton_backend, recompute_calls):
    model = _model("mamba")
    ids = torch.randint(1, 64, (2, LENGTH))
    with torch.no_grad():
        model(ids)
    model(ids, attention_mask=torch.ones_like(ids).index_fill_(1, torch.tensor([0, 1]), 0)).logits
    assert not recompute_calls


@pytest.mark.gpu
@pytest.mark.parametrize("packed", [False, True])
def test_gradients_equal_plain_path_on_gpu(packed, recompute_calls, monkeypatch):
    """At a GPU shape (several forward segments and backward groups of the scan) in fp32."""
    config = MambaConfig(model_type="mamba", d_model=256, n_layer=2, vocab_size=512, d_state=16)
    model = MambaLM.from_config(config, device="cuda", seed=0).train()
    torch.manual_seed(4)
    ids = torch.randint(1, 512, (2, 1536), device="cuda")
    seq_idx = None
    if packed:
        seq_idx = torch.zeros(2, 1536, dtype=torch.int32, device="cuda")
        seq_idx[:, 700:] = 1
    plain_loss, plain = _gradients(model, ids, seq_idx, False, monkeypatch)
    loss, recomputed = _gradients(model, ids, seq_idx, True, monkeypatch)
    assert len(recompute_calls) == config.n_layer
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-6)
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=6e-4, atol=2e-3, msg=name)
