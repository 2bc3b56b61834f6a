"""mambakit vs HF transformers on the same random weights: logits, greedy and penalised generation."""
import pytest
import torch

import mambakit
from mambakit.tokenizer import byte_tokenizer
from mambakit.generation import Generator, SamplingParams
from tiny_models import KINDS, VOCAB, hf_model, save_hf, save_state_spaces, skip_unless_comparable

LAYOUTS = {"hf": save_hf, "state-spaces": save_state_spaces}


@pytest.fixture(scope="module", params=list(KINDS))
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def reference(kind):
    skip_unless_comparable(kind)
    return hf_model(kind)


@pytest.fixture(scope="module", params=list(LAYOUTS))
def loaded(request, kind, reference, tmp_path_factory):
    folder = LAYOUTS[request.param](reference, tmp_path_factory.mktemp(f"{kind}-{request.param}"))
    return mambakit.load_model(folder, device="cpu", dtype="float32")


def _generator(model):
    generator = Generator(model, byte_tokenizer())
    generator.vocab_limit = VOCAB  # compare over the whole vocabulary, as HF does
    return generator


def test_logits_match_hf(reference, loaded):
    ids = torch.randint(0, VOCAB, (3, 37))
    with torch.no_grad():
        expected = reference(ids).logits
        actual = loaded(ids).logits
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)


def test_loss_matches_hf(reference, loaded):
    ids = torch.randint(0, VOCAB, (2, 21))
    labels = ids.clone()
    labels[0, :5] = -100
    with torch.no_grad():
        expected = reference(ids, labels=labels).loss
        actual = loaded(ids, labels=labels).loss
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_generation_matches_hf(reference, loaded, penalty):
    prompt = torch.randint(1, VOCAB, (1, 9))
    with torch.no_grad():
        expected = reference.generate(prompt, max_new_tokens=32, do_sample=False, repetition_penalty=penalty,
                                      eos_token_id=None, pad_token_id=0)[0, 9:].tolist()
    params = SamplingParams(max_new_tokens=32, temperature=0, repetition_penalty=penalty)
    actual = [int(t) for t in _generator(loaded).decode([prompt[0].tolist()], params)]
    assert actual == expected
