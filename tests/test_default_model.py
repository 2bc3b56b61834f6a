"""The embedded default model (mambakit:small) ships trained: it loads offline and predicts real text."""
import math

import torch

import mambakit


def test_default_model_is_trained_and_generates(shared_data):
    model, tokenizer, _ = mambakit.load("mambakit:small", device="cpu")
    assert model.num_parameters() == 4_552_960 and len(tokenizer) == 4096
    text = (shared_data / "text" / "tinystories_2MiB.txt").read_text()[-6000:]
    ids = torch.tensor([tokenizer.encode(text)[:1024]])
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < 3.0 < math.log(len(tokenizer))  # uniform guessing would be 8.3 nats per token
    result = mambakit.Generator(model, tokenizer).generate(
        "Once upon a time", mambakit.SamplingParams(max_new_tokens=30, temperature=0))[0]
    assert len(result.token_ids) == 30 and result.text.count(" ") >= 10
