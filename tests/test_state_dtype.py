"""A bf16 (or fp16) SSM state: every op computes the recurrence in fp32 from the stored values and rounds
only when it stores the state, on both backends, through prefill, the per-op step and the fused step."""
import pytest
import torch

from mambakit import MambaConfig, MambaLM, ops
from mambakit import model as model_module
from mambakit.chat.prefix_cache import PrefixCache
from mambakit.state import InferenceState

CONFIGS = {
    "mamba": MambaConfig(model_type="mamba", d_model=16, n_layer=2, vocab_size=40, d_state=4),
    "mamba2": MambaConfig(model_type="mamba2", d_model=16, n_layer=2, vocab_size=40, d_state=8, headdim=8,
                          ngroups=2, chunk_size=8),
}


def _model(kind: str) -> MambaLM:
    return MambaLM.from_config(CONFIGS[kind], seed=0).eval()


def _as_fp32_copy(state: InferenceState) -> InferenceState:
    """The same stored values in an fp32 state: what a bf16 state must behave like."""
    return InferenceState(state.conv.clone(), state.ssm.float())


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_allocate_follows_the_model_state_dtype(kind):
    model = _model(kind)
    assert model.allocate_state(3).ssm.dtype == torch.float32
    model.ssm_state_dtype = torch.bfloat16
    state = model.allocate_state(3)
    assert state.ssm.dtype == torch.bfloat16 and state.conv.dtype == torch.float32
    assert InferenceState.allocate(model, 1, device="meta").ssm.dtype == torch.bfloat16


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("kind", list(CONFIGS))
@torch.no_grad()
def test_bf16_state_rounds_only_when_stored(kind, backend, monkeypatch):
    monkeypatch.setenv(ops.BACKEND_ENV, backend)
    monkeypatch.setattr(model_module, "FUSED_STEP_MAX_BATCH", 2)  # the fused step on the interpreter too
    model = _model(kind)
    ids = torch.randint(0, 40, (2, 19))
    fp32_state = model.allocate_state(2)
    expected = model(ids[:, :11], state=fp32_state).logits
    model.ssm_state_dtype = torch.bfloat16
    state = model.allocate_state(2)
    # a prefill from zeros: the same numbers, the state rounded once at the end
    torch.testing.assert_close(model(ids[:, :11], state=state).logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(state.ssm, fp32_state.ssm.to(torch.bfloat16), rtol=0, atol=0)
    # a prefill from a bf16 state reads its values exactly
    reference = _as_fp32_copy(state)
    torch.testing.assert_close(model(ids[:, 11:15], state=state).logits,
                               model(ids[:, 11:15], state=reference).logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.ssm, reference.ssm.to(torch.bfloat16), rtol=0, atol=2e-3)
    # decode steps, per-op and fused, from the same stored values
    for t, fused in zip(range(15, 19), (False, True, False, True)):
        reference = _as_fp32_copy(state)
        torch.testing.assert_close(model.step(ids[:, t], state, fused=fused),
                                   model.step(ids[:, t], reference, fused=fused), rtol=1e-5, atol=1e-6)
        assert state.ssm.dtype == torch.bfloat16
        torch.testing.assert_close(state.ssm, reference.ssm.to(torch.bfloat16), rtol=0, atol=2e-3)


@pytest.mark.parametrize("kind", list(CONFIGS))
@torch.no_grad()
def test_bf16_state_stays_close_over_a_generation(kind):
    model = _model(kind)
    ids = torch.randint(0, 40, (2, 64))
    expected = model(ids).logits
    model.ssm_state_dtype = torch.bfloat16
    state = model.allocate_state(2)
    logits = torch.cat([model(ids[:, :8], state=state).logits] +
                       [model.step(ids[:, t], state)[:, None] for t in range(8, 64)], dim=1)
    scale = expected.abs().max()
    assert (logits - expected).abs().max() / scale < 2e-2


def test_prefix_cache_keeps_state_dtypes_apart(tmp_path):
    cache, model = PrefixCache(tmp_path), _model("mamba")
    fp32_path = cache.path(model, [1, 2, 3])
    model.ssm_state_dtype = torch.bfloat16
    assert cache.path(model, [1, 2, 3]) != fp32_path  # a bf16 prefill is not the fp32 state rounded afterwards
