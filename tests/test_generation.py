"""Generation: batching, sampling options, stops, streaming, padded vocabulary, the real tokenizer."""
import pytest
import torch

import mambakit
from mambakit import MambaConfig, MambaLM
from mambakit.generation import GenerationError, Generator, SamplingError, SamplingParams
from mambakit.generation.prefill import split_prompt
from mambakit.tokenizer import byte_tokenizer, load_tokenizer


@pytest.fixture(scope="module", params=["tiny-random", "tiny-random-mamba2"])
def generator(request):
    model, tokenizer, _ = mambakit.load(f"mambakit:{request.param}", device="cpu")
    return Generator(model, tokenizer)


PROMPTS = ["Once upon a time", "Hi", "The quick brown fox jumps over"]


@pytest.mark.parametrize("options", [dict(temperature=0), dict(temperature=0, repetition_penalty=1.5)])
def test_batch_of_different_lengths_equals_one_by_one(generator, options):
    params = SamplingParams(max_new_tokens=24, ignore_eos=True, **options)
    together = generator.generate(PROMPTS, params)
    for prompt, result in zip(PROMPTS, together):
        assert result.token_ids == generator.generate(prompt, params)[0].token_ids


def test_chunked_prefill_equals_one_shot(generator):
    params = SamplingParams(max_new_tokens=16, temperature=0, ignore_eos=True)
    one_shot = generator.generate(PROMPTS[2], params)[0].token_ids
    chunked = Generator(generator.model, generator.tokenizer, prefill_chunk_size=4)
    assert chunked.generate(PROMPTS[2], params)[0].token_ids == one_shot


def test_sampling_is_seeded_and_really_samples(generator):
    params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=3, ignore_eos=True)
    first = generator.generate(PROMPTS[0], params)[0].token_ids
    assert generator.generate(PROMPTS[0], params)[0].token_ids == first
    others = {tuple(generator.generate(PROMPTS[0], params.updated(seed=s))[0].token_ids) for s in range(4, 8)}
    greedy = generator.generate(PROMPTS[0], params.updated(temperature=0))[0].token_ids
    assert len(others | {tuple(first)}) > 1 and tuple(greedy) != tuple(first)


def test_top_k_one_is_greedy_and_min_p_top_p_restrict(generator):
    greedy = generator.generate(PROMPTS[1], SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True))
    top1 = generator.generate(PROMPTS[1], SamplingParams(max_new_tokens=12, top_k=1, seed=0, ignore_eos=True))
    assert top1[0].token_ids == greedy[0].token_ids
    tiny_p = generator.generate(PROMPTS[1], SamplingParams(max_new_tokens=12, top_p=1e-6, seed=0, ignore_eos=True))
    assert tiny_p[0].token_ids == greedy[0].token_ids
    high_min_p = generator.generate(PROMPTS[1], SamplingParams(max_new_tokens=12, min_p=0.999, seed=0,
                                                               ignore_eos=True))
    assert high_min_p[0].token_ids == greedy[0].token_ids


def test_stop_string_and_streaming(generator):
    params = SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True)
    full = generator.generate(PROMPTS[0], params)[0]
    stop = full.text[10:12]
    stopped = generator.generate(PROMPTS[0], params.updated(stop=[stop]))[0]
    assert stopped.finish_reason == "stop" and stopped.text == full.text[:full.text.index(stop)]
    assert "".join(generator.stream(PROMPTS[0], params.updated(stop=[stop]))) == stopped.text
    assert "".join(generator.stream(PROMPTS[0], params)) == full.text
    assert full.finish_reason == "length" and len(full.token_ids) == 40


def test_eos_stops_each_row(generator):
    params = SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True)
    tokens = generator.generate(PROMPTS[1], params)[0].token_ids
    tokenizer = generator.tokenizer
    eos_before = tokenizer.eos_token_id
    tokenizer.eos_token_id = tokens[5]  # pretend the 6th token is the end of text
    try:
        result = generator.generate(PROMPTS[1], params.updated(ignore_eos=False))[0]
    finally:
        tokenizer.eos_token_id = eos_before
    assert result.finish_reason == "stop" and result.token_ids == tokens[:tokens.index(tokens[5])]


def test_padded_vocabulary_is_never_sampled():
    config = MambaConfig(d_model=32, n_layer=1, vocab_size=257, pad_vocab_size_multiple=16)
    model = MambaLM.from_config(config, seed=0).eval()
    model.lm_head.weight.data[257:] = 10.0  # padding rows would win every draw
    tokenizer = byte_tokenizer()
    result = Generator(model, tokenizer).generate("abc", SamplingParams(max_new_tokens=20, seed=0,
                                                                        ignore_eos=True))[0]
    assert max(result.token_ids) < 257


@pytest.mark.parametrize("bad", [dict(top_p=0), dict(top_p=1.5), dict(temperature=-1), dict(top_k=-2),
                                 dict(min_p=1.0), dict(repetition_penalty=0), dict(max_new_tokens=0),
                                 dict(seed=-1), dict(stop=[""]), dict(temperature=float("nan"))])
def test_invalid_sampling_arguments(bad):
    name = next(iter(bad))
    with pytest.raises(SamplingError, match=name):
        SamplingParams(**bad)


def test_empty_prompt_is_refused(generator):
    with pytest.raises(GenerationError, match="empty"):
        generator.generate("", SamplingParams())


def test_gpt_neox_tokenizer_end_to_end(shared_data):
    tokenizer = load_tokenizer(shared_data / "tokenizers" / "gpt-neox-20b")
    assert tokenizer.encode("Hello world") == [12092, 1533] and tokenizer.eos_token_id == 0
    model = MambaLM.from_config(MambaConfig(d_model=32, n_layer=2, vocab_size=50277), seed=0).eval()
    assert model.config.padded_vocab_size == 50280
    result = Generator(model, tokenizer).generate(["Hello world", "Mamba is"],
                                                  SamplingParams(max_new_tokens=8, seed=0, ignore_eos=True))
    for item in result:
        assert len(item.token_ids) == 8 and max(item.token_ids) < len(tokenizer)
        assert item.text == tokenizer.decode(item.token_ids)


@pytest.mark.parametrize("length, chunk, pieces", [
    (10240, 4096, [4096, 4096, 2048]),
    (1440, 4096, [1024, 256, 160]),
    (4096, 4096, [4096]),
    (255, 4096, [255]),
    (3000, 1000, [1000, 1000, 1000]),
    (2700, 1000, [1000, 1000, 512, 188]),
])
def test_split_prompt_gives_chunks_then_powers_of_two_then_a_short_rest(length, chunk, pieces):
    assert split_prompt(length, chunk) == pieces
