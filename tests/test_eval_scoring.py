"""Scoring on the recurrent state: shared contexts run once, long text carried exactly across chunks."""
import math

import pytest
import torch

import mambakit
from mambakit.eval.perplexity import (PerplexityError, loss_by_position, overall_perplexity, text_losses,
                                      write_report)
from mambakit.eval.scoring import ContinuationScorer, ScoringError

PRESETS = ("mambakit:tiny-random", "mambakit:tiny-random-mamba2")


@pytest.fixture(scope="module", params=PRESETS)
def generator(request):
    model, tokenizer, _ = mambakit.load(request.param, device="cpu", dtype="float32")
    return mambakit.Generator(model, tokenizer)


def _requests():
    """Three contexts of different lengths, each with continuations of different lengths (one shared twice)."""
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(1, 257, (n,), generator=g).tolist()

    contexts = [ids(5), ids(13), ids(1)]
    return [(contexts[0], ids(3)), (contexts[1], ids(1)), (contexts[0], ids(7)), (contexts[2], ids(4)),
            (contexts[1], ids(6)), (contexts[0], ids(1)), (contexts[0], ids(3))]


def _full_sequence_logprobs(model, context, continuation):
    """log p of each continuation token from one forward over context + continuation (no state reuse)."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits.float(), -1)[0]
    positions = torch.arange(len(context) - 1, len(context) + len(continuation) - 1)
    return logprobs[positions, torch.tensor(continuation)]


def test_shared_context_reuse_gives_identical_numbers_to_running_each_context_again(generator):
    requests = _requests()
    reused = ContinuationScorer(generator, batch_size=1).score(requests)
    alone = [ContinuationScorer(generator, batch_size=1).score([request])[0] for request in requests]
    for shared, single in zip(reused, alone):
        assert torch.equal(shared.logprobs, single.logprobs)
        assert torch.equal(shared.greedy, single.greedy)


def test_batched_scores_match_one_forward_over_context_plus_continuation(generator):
    requests = _requests()
    scored = ContinuationScorer(generator, batch_size=4, tokens_per_forward=8).score(requests)
    for (context, continuation), result in zip(requests, scored):
        expected = _full_sequence_logprobs(generator.model, context, continuation)
        torch.testing.assert_close(result.logprobs, expected, rtol=0, atol=1e-5)
        assert result.logprobs.shape == (len(continuation),)


def test_greedy_flags_mark_argmax_continuations(generator):
    context = [5, 9, 17]
    continuation = []
    with torch.no_grad():
        for _ in range(4):  # extend greedily
            logits = generator.model(torch.tensor([context + continuation])).logits[0, -1]
            continuation.append(int(logits.argmax()))
    other = (continuation[1] + 1) % 257
    result = ContinuationScorer(generator).score([(context, continuation), (context, [continuation[0], other])])
    assert result[0].all_greedy
    assert result[1].greedy.tolist()[0] and not result[1].all_greedy


def test_rolling_perplexity_equals_the_full_sequence_loss_of_one_forward(generator):
    text = "Once upon a time, a small state carried the whole story from one chunk to the next. " * 3
    (loss,) = text_losses(generator, {"story": text}, tokens_per_forward=16)  # many chunks of 16 tokens
    ids = [generator.tokenizer.eos_token_id] + generator.tokenizer.encode(text, add_special_tokens=False)
    with torch.no_grad():
        full = generator.model(torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert loss.tokens == len(ids) - 1 > 200
    assert math.isclose(loss.mean_nll, float(full), rel_tol=0, abs_tol=1e-5)
    assert math.isclose(loss.perplexity, math.exp(float(full)), rel_tol=1e-5)


def test_empty_requests_and_texts_are_user_errors(generator):
    with pytest.raises(ScoringError, match="empty context or continuation"):
        ContinuationScorer(generator).score([([1, 2], [])])
    with pytest.raises(PerplexityError, match="no text"):
        text_losses(generator, {"empty.txt": ""})


def test_loss_by_position_averages_over_the_texts_that_reach_each_bin(tmp_path):
    from mambakit.eval.perplexity import TextLoss

    losses = [TextLoss("a", torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])), TextLoss("b", torch.tensor([3.0, 4.0]))]
    bins = loss_by_position(losses, bin_size=2)
    assert [(b["start"], b["mean_nll"], b["tokens"], b["texts"]) for b in bins] == [
        (0, 2.5, 4, 2), (2, 3.5, 2, 1), (4, 5.0, 1, 1)]
    assert math.isclose(overall_perplexity(losses), math.exp(22 / 7))
    json_path, png_path = write_report(losses, tmp_path / "out", "test-model", bin_size=2, train_length=3)
    assert png_path.read_bytes().startswith(b"\x89PNG")
    assert '"train_length": 3' in json_path.read_text()
