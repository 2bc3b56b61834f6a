"""Log-probabilities of continuations given contexts, using the recurrent state instead of re-reading text.

A context shared by several continuations (the choices of a multiple-choice question, or the one-token
prefix of every document in a perplexity run) is run through the model once. Its state is copied for each
continuation, which then runs from that state. The first continuation token is scored by the logits at the
context's last position; every later one by the logits of the token before it. Long continuations are run
chunk by chunk and the state carries everything between chunks, so the result is exact for any length:
no window, no truncation.

Shapes: b rows (requests in a batch), l tokens, V the model's (padded) vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from mambakit.errors import UserError
from mambakit.generation import Generator
from mambakit.state import InferenceState

DEFAULT_BATCH_SIZE = 16
DEFAULT_TOKENS_PER_FORWARD = 8192  # bounds the (b, l, V) logits of one forward call


class ScoringError(UserError):
    """A request that cannot be scored (an empty context or continuation)."""


@dataclass
class TokenScores:
    """Per-token results of one continuation of n tokens."""

    logprobs: torch.Tensor  # (n,) fp32: log p(token_i | context, tokens before i)
    greedy: torch.Tensor  # (n,) bool: token_i is the most likely next token

    @property
    def total(self) -> float:
        return float(self.logprobs.double().sum())

    @property
    def all_greedy(self) -> bool:
        return bool(self.greedy.all())


def prefix_token_id(tokenizer) -> int:
    """The token a text is scored from when nothing comes before it: BOS, else EOS (as lm-eval's hf model)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (b, l, V), targets (b, l) -> (log p(target) (b, l) fp32, target is the argmax (b, l) bool)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    targets = targets.to(logits.device)
    chosen = logprobs.gather(-1, targets[..., None])[..., 0]
    return chosen, logprobs.argmax(-1) == targets


class ContinuationScorer:
    """Scores (context, continuation) token-id pairs with a Generator's model.

    batch_size: rows per forward call (contexts, then continuations); tokens_per_forward: the most tokens
    one call of the continuation pass sees (its chunk length is tokens_per_forward // rows).
    """

    def __init__(self, generator: Generator, batch_size: int = DEFAULT_BATCH_SIZE,
                 tokens_per_forward: int = DEFAULT_TOKENS_PER_FORWARD):
        if batch_size < 1 or tokens_per_forward < 1:
            raise ScoringError(f"batch size ({batch_size}) and tokens per forward ({tokens_per_forward}) must be >= 1")
        self.generator = generator
        self.model = generator.model
        self.batch_size = batch_size
        self.tokens_per_forward = tokens_per_forward

    @torch.inference_mode()
    def score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
              on_done: Callable[[int], None] | None = None) -> list[TokenScores]:
        """requests: (context ids, continuation ids), both non-empty -> one TokenScores per request, in order.

        ``on_done(count)`` is called as requests finish (for progress bars).
        """
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, (context, continuation) in enumerate(requests):
            if len(context) == 0 or len(continuation) == 0:
                raise ScoringError(f"request {index} has an empty context or continuation; both need a token "
                                   "(start an empty context with the BOS/EOS token)")
            groups.setdefault(tuple(context), []).append(index)
        results: list[TokenScores | None] = [None] * len(requests)
        contexts = sorted(groups, key=len, reverse=True)  # similar lengths share a batch: little padding
        for start in range(0, len(contexts), self.batch_size):
            batch = contexts[start:start + self.batch_size]
            last_logits, state = self.generator.prefill([list(context) for context in batch])
            members = [(row, index) for row, context in enumerate(batch) for index in groups[context]]
            members.sort(key=lambda member: len(requests[member[1]][1]), reverse=True)
            for first in range(0, len(members), self.batch_size):
                part = members[first:first + self.batch_size]
                rows = [row for row, _ in part]
                scored = self._score_continuations(last_logits[rows], state.rows(rows),
                                                   [requests[index][1] for _, index in part])
                for (_, index), scores in zip(part, scored):
                    results[index] = scores
                if on_done is not None:
                    on_done(len(part))
        return results

    def _score_continuations(self, first_logits: torch.Tensor, state: InferenceState,
                             continuations: list[Sequence[int]]) -> list[TokenScores]:
        """first_logits (b, V): the prediction after each context; state: b rows, each after its context.

        The continuations are right-padded: a padded position comes after every real one of its row, so it
        cannot change their logits (the model is causal); the state it leaves behind is thrown away.
        """
        rows, longest = len(continuations), max(len(c) for c in continuations)
        targets = torch.zeros(rows, longest, dtype=torch.long)
        for row, continuation in enumerate(continuations):
            targets[row, :len(continuation)] = torch.as_tensor(list(continuation), dtype=torch.long)
        logprobs = torch.empty(rows, longest, dtype=torch.float32)
        greedy = torch.empty(rows, longest, dtype=torch.bool)
        first_logprobs, first_greedy = target_logprobs(first_logits[:, None], targets[:, :1])
        logprobs[:, :1], greedy[:, :1] = first_logprobs.cpu(), first_greedy.cpu()
        inputs = targets[:, :-1].to(self.model.device)  # token t predicts token t + 1
        chunk = max(1, self.tokens_per_forward // rows)
        for start in range(0, longest - 1, chunk):
            logits = self.model(inputs[:, start:start + chunk], state=state).logits
            chunk_logprobs, chunk_greedy = target_logprobs(logits, targets[:, start + 1:start + 1 + chunk])
            logprobs[:, start + 1:start + 1 + chunk] = chunk_logprobs.cpu()
            greedy[:, start + 1:start + 1 + chunk] = chunk_greedy.cpu()
        return [TokenScores(logprobs[row, :len(c)].clone(), greedy[row, :len(c)].clone())
                for row, c in enumerate(continuations)]
