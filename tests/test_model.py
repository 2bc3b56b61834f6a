"""MambaLM on its own: the recurrent step equals the parallel forward, state continuation, padding and
packing leave no trace, the loss, the fp32 parameter rule."""
import pytest
import torch
import torch.nn.functional as F

from mambakit import MambaConfig, MambaLM

CONFIGS = {
    "mamba": MambaConfig(model_type="mamba", d_model=32, n_layer=2, vocab_size=100, d_state=8),
    "falcon_mamba": MambaConfig(model_type="falcon_mamba", d_model=32, n_layer=2, vocab_size=100, d_state=8,
                                tie_embeddings=False),
    "mamba2": MambaConfig(model_type="mamba2", d_model=32, n_layer=2, vocab_size=100, d_state=16, headdim=8,
                          ngroups=2, chunk_size=8),
}


@pytest.fixture(params=list(CONFIGS))
def model(request):
    return MambaLM.from_config(CONFIGS[request.param], seed=0).eval()


@torch.no_grad()
def test_step_path_equals_forward(model):
    ids = torch.randint(0, 100, (2, 23))
    expected = model(ids).logits
    state = model.allocate_state(2)
    stepped = torch.stack([model.step(ids[:, t], state) for t in range(ids.shape[1])], dim=1)
    torch.testing.assert_close(stepped, expected, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_forward_continues_from_state(model):
    ids = torch.randint(0, 100, (2, 30))
    whole = model(ids, return_state=True)
    state = model.allocate_state(2)
    first = model(ids[:, :13], state=state).logits
    second = model(ids[:, 13:], state=state).logits
    torch.testing.assert_close(torch.cat([first, second], 1), whole.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state.ssm, whole.state.ssm, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state.conv, whole.state.conv)


@torch.no_grad()
def test_left_padding_leaves_state_untouched(model):
    ids = torch.randint(1, 100, (1, 11))
    alone = model(ids, return_state=True)
    padded_ids = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 11, dtype=torch.long)], dim=1)
    padded = model(padded_ids, attention_mask=mask, return_state=True)
    torch.testing.assert_close(padded.logits[:, 5:], alone.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded.state.ssm, alone.state.ssm, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(padded.state.conv, alone.state.conv)


@torch.no_grad()
def test_packed_sequences_equal_separate_ones(model):
    a, b = torch.randint(0, 100, (1, 9)), torch.randint(0, 100, (1, 14))
    packed = torch.cat([a, b], dim=1)
    seq_idx = torch.tensor([[0] * 9 + [1] * 14], dtype=torch.int32)
    logits = model(packed, seq_idx=seq_idx).logits
    torch.testing.assert_close(logits[:, :9], model(a).logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits[:, 9:], model(b).logits, rtol=1e-4, atol=1e-5)


def test_loss_is_shifted_cross_entropy_ignoring_minus_100(model):
    ids = torch.randint(0, 100, (2, 16))
    labels = ids.clone()
    labels[:, :4] = -100
    out = model(ids, labels=labels, return_logits=True)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    assert model(ids, labels=labels).logits is None  # no logits materialised for training by default
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_fp32_parameters_survive_dtype_casts(model):
    model.to(torch.bfloat16)
    for name, param in model.named_parameters():
        kept_fp32 = name.rsplit(".", 1)[-1] in ("A_log", "D", "dt_bias")
        assert param.dtype == (torch.float32 if kept_fp32 else torch.bfloat16), name
    logits = model(torch.randint(0, 100, (1, 5))).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_vocab_is_padded_and_weights_tied():
    config = MambaConfig(d_model=16, n_layer=1, vocab_size=50277)
    assert config.padded_vocab_size == 50280
    model = MambaLM(config)
    assert model.lm_head.weight is model.backbone.embedding.weight
    untied = MambaLM(config.replace(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.backbone.embedding.weight


def test_gradient_checkpointing_gives_the_same_gradients(model):
    ids = torch.randint(0, 100, (2, 12))
    model.train()
    model(ids, labels=ids).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(ids, labels=ids).loss.backward()
    for expected, param in zip(plain, model.parameters()):
        torch.testing.assert_close(param.grad, expected)
