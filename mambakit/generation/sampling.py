"""Sampling options and the logit processing that turns next-token logits into tokens.

Order, as in HF transformers: repetition penalty (CTRL-style, over prompt and output) -> temperature ->
top-k -> top-p -> min-p -> draw. ``temperature == 0`` is greedy decoding. Every step is a fixed set of
tensor operations (no host synchronisation), so it can run inside a CUDA graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from mambakit.errors import UserError


class SamplingError(UserError):
    """An invalid sampling option; the message names it and its valid range."""


@dataclass
class SamplingParams:
    """How to pick tokens. Defaults sample at temperature 1; ``temperature=0`` decodes greedily."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the output)
    ignore_eos: bool = False

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    def validate(self) -> None:
        def number(name, value, ok, rule):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not ok(value):
                raise SamplingError(f"{name} must be {rule}, got {value!r}")

        number("max_new_tokens", self.max_new_tokens, lambda v: v == int(v) and v >= 1, "an integer >= 1")
        number("temperature", self.temperature, lambda v: 0 <= v < math.inf, ">= 0 (0 = greedy)")
        number("top_k", self.top_k, lambda v: v == int(v) and v >= 0, "an integer >= 0 (0 = off)")
        number("top_p", self.top_p, lambda v: 0 < v <= 1, "in (0, 1]")
        number("min_p", self.min_p, lambda v: 0 <= v < 1, "in [0, 1)")
        number("repetition_penalty", self.repetition_penalty, lambda v: 0 < v < math.inf, "> 0 (1 = off)")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise SamplingError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise SamplingError(f"stop must be a list of non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def updated(self, **changes) -> "SamplingParams":
        """A copy with some options changed (validated); unknown names raise SamplingError."""
        known = {f.name for f in fields(self)}
        for name in changes:
            if name not in known:
                raise SamplingError(f"unknown sampling option {name!r}; known: {', '.join(sorted(known))}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return SamplingParams(**values)


class LogitProcessor:
    """Applies ``params`` to a batch of logits and draws the next tokens.

    ``vocab_limit``: ids >= this are padding rows of the embedding and are never drawn.
    ``seen`` (b, v) bool marks tokens already in each row (prompt and output) for the repetition penalty.
    """

    def __init__(self, params: SamplingParams, vocab_limit: int, device: torch.device):
        self.params = params
        self.vocab_limit = vocab_limit
        self.generator = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed if params.seed is not None else torch.seed() % (2 ** 63))

    def process(self, logits: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        """logits (b, v) -> processed fp32 logits (b, v), -inf where a token may not be drawn."""
        p = self.params
        logits = logits.float()
        if logits.shape[-1] > self.vocab_limit:
            logits = logits.clone()
            logits[:, self.vocab_limit:] = -math.inf
        if p.repetition_penalty != 1.0 and seen is not None:
            penalised = torch.where(logits < 0, logits * p.repetition_penalty, logits / p.repetition_penalty)
            logits = torch.where(seen, penalised, logits)
        if p.greedy:
            return logits
        logits = logits / p.temperature
        if p.top_k > 0:
            kth = torch.topk(logits, min(p.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            drop_sorted = cumulative - sorted_logits.softmax(-1) >= p.top_p  # mass before this token already >= top_p
            logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -math.inf)
        if p.min_p > 0:
            probs = logits.softmax(-1)
            logits = logits.masked_fill(probs < p.min_p * probs.max(-1, keepdim=True).values, -math.inf)
        return logits

    def draw(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        """logits (b, v) -> next token ids (b,) (argmax when greedy, else a draw from the softmax)."""
        logits = self.process(logits, seen)
        if self.params.greedy:
            return logits.argmax(-1)
        probs = logits.softmax(-1)
        # Exponential-race sampling: argmax(p / E) with E ~ Exp(1) draws from p, without a host sync.
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        return (probs / noise).argmax(-1)
