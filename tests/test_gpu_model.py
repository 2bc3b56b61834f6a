"""Whole models on the GPU through the Triton kernels (run with `pytest -m gpu` on a CUDA machine)."""
import pytest
import torch

import mambakit
from mambakit import MambaConfig, MambaLM
from mambakit.generation import Generator, SamplingParams
from mambakit.generation.cuda_graph import CudaGraphStepper
from mambakit.generation.prefill import PrefillGraphs, split_prompt
from mambakit.state import InferenceState
from mambakit.tokenizer import byte_tokenizer
from tiny_models import KINDS, VOCAB, hf_model, skip_unless_comparable

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-3), (torch.bfloat16, 0.15)])
def test_triton_path_matches_hf(tmp_path, kind, dtype, atol):
    skip_unless_comparable(kind)
    reference = hf_model(kind)
    reference.save_pretrained(tmp_path)
    model = mambakit.load_model(tmp_path, device="cuda", dtype=dtype)
    ids = torch.randint(0, VOCAB, (2, 300))
    with torch.no_grad():
        expected = reference(ids).logits
        actual = model(ids.cuda()).logits.float().cpu()
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


@pytest.fixture(scope="module", params=["mamba", "mamba2"])
def cuda_model(request):
    config = MambaConfig(model_type=request.param, d_model=256, n_layer=4, vocab_size=257, d_state=16,
                         headdim=32, chunk_size=64)
    return MambaLM.from_config(config, device="cuda", dtype=torch.bfloat16, seed=0).eval()


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prompts", [["Once upon a time"], ["Once upon a time", "Hi", "The quick brown fox"]])
def test_cuda_graph_decode_equals_eager(cuda_model, state_dtype, prompts):
    params = SamplingParams(max_new_tokens=48, temperature=0, ignore_eos=True)
    cuda_model.ssm_state_dtype = state_dtype
    try:
        graphed = Generator(cuda_model, byte_tokenizer()).generate(prompts, params)
        eager = Generator(cuda_model, byte_tokenizer(), cuda_graphs=False).generate(prompts, params)
    finally:
        cuda_model.ssm_state_dtype = torch.float32
    assert [r.token_ids for r in graphed] == [r.token_ids for r in eager]


def test_chunked_prefill_equals_one_shot(cuda_model):
    ids = torch.randint(0, 257, (1, 3000), device="cuda")
    with torch.inference_mode():
        whole = cuda_model(ids, return_state=True)
        state = cuda_model.allocate_state(1)
        chunks = torch.cat([cuda_model(ids[:, s:s + 1024], state=state).logits for s in range(0, 3000, 1024)], 1)
    torch.testing.assert_close(chunks.float(), whole.logits.float(), rtol=0, atol=0.1)
    torch.testing.assert_close(state.ssm, whole.state.ssm, rtol=0.05, atol=0.05)


def test_training_step_on_triton_path(cuda_model):
    cuda_model.train()
    ids = torch.randint(0, 257, (2, 512), device="cuda")
    loss = cuda_model(ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for p in cuda_model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    cuda_model.zero_grad()
    cuda_model.eval()


def test_bound_graph_steps_equal_eager_steps(cuda_model):
    """A server's stepper captures on its slot state: stepping the first rows equals eager steps."""
    slots = cuda_model.allocate_state(8)
    slots.ssm.normal_()
    slots.conv.normal_()
    eager = slots.clone()
    stepper = CudaGraphStepper(cuda_model, bound_state=slots)
    with torch.inference_mode():
        for _ in range(3):
            tokens = torch.randint(0, 257, (3,), device="cuda")
            graphed = stepper.step_rows(tokens).clone()
            expected = cuda_model.step(tokens, InferenceState(eager.conv[:, :3], eager.ssm[:, :3]))
            torch.testing.assert_close(graphed, expected, rtol=0, atol=1e-2)
    torch.testing.assert_close(slots.ssm[:, :3], eager.ssm[:, :3], rtol=1e-3, atol=1e-3)


def test_graphed_prefill_equals_eager_pieces(cuda_model):
    graphs = PrefillGraphs(cuda_model)
    for state_dtype, ssm_atol in ((torch.float32, 1e-3), (torch.bfloat16, 1e-2)):
        _check_graphed_prefill(cuda_model, graphs, InferenceState.allocate(cuda_model, 1, ssm_dtype=state_dtype),
                               ssm_atol)
    # one graph per (piece length, state dtype)
    assert set(graphs.capture_seconds) == {(n, d) for n in (256, 512, 1024) for d in (torch.float32, torch.bfloat16)}
    assert graphs.pool_bytes > 0


def _check_graphed_prefill(cuda_model, graphs, start, ssm_atol):
    start.ssm.normal_()  # continuing from a state, as a chat turn does
    for length in (3000, 700, 3000):  # the second 3000 replays graphs captured by the first
        ids = torch.randint(0, 257, (1, length), device="cuda")
        graphed_state, eager_state = start.clone(), start.clone()
        graphed = graphs.run(ids, graphed_state, chunk_size=1024)
        with torch.inference_mode():
            offset = 0
            for piece in split_prompt(length, 1024):
                eager = cuda_model(ids[:, offset:offset + piece], state=eager_state, logits_to_keep=1).logits[:, -1]
                offset += piece
        torch.testing.assert_close(graphed.float(), eager.float(), rtol=0, atol=1e-2)
        assert graphed_state.ssm.dtype == start.ssm.dtype
        torch.testing.assert_close(graphed_state.ssm, eager_state.ssm, rtol=1e-3, atol=ssm_atol)
        torch.testing.assert_close(graphed_state.conv, eager_state.conv, rtol=0, atol=0)


def test_generation_with_graphed_prefill_equals_eager(cuda_model):
    # fp32, so that cutting the prompt differently (pieces vs one chunk) cannot flip a near-tie
    model = MambaLM.from_config(cuda_model.config, device="cuda", dtype=torch.float32, seed=0).eval()
    params = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True)
    prompt = "Once upon a time, " * 80  # 1,440 byte tokens: graphed pieces of 1024 and 256, an eager 160
    graphed = Generator(model, byte_tokenizer()).generate(prompt, params)
    eager = Generator(model, byte_tokenizer(), cuda_graphs=False).generate(prompt, params)
    assert graphed[0].token_ids == eager[0].token_ids
