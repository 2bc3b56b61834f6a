"""Text generation: prefill the prompt(s), then decode one token at a time through the recurrent state.

Prompts of different lengths share a batch by left padding; padded positions leave the state as it is,
so every row gets the tokens it would get alone. Long prompts are prefilled in chunks, which keeps
memory flat in the prompt length (the state carries everything between chunks).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from mambakit.errors import UserError
from mambakit.generation.cuda_graph import CudaGraphStepper
from mambakit.generation.prefill import PrefillGraphs
from mambakit.generation.row_text import RowText
from mambakit.generation.sampling import LogitProcessor, SamplingParams
from mambakit.model import MambaLM
from mambakit.state import InferenceState

# Tokens per prefill forward (and the largest graphed piece, see prefill.py). H200, 10,240-token prompt,
# graphed (benchmarks/results/2026-11-29-h200-prefill-chunks.json): mamba-1.4b 94.4 ms / 3.09 GB peak with
# 2,048, 89.9 ms / 3.25 GB with 4,096; mamba2-1.3b 71.8 ms / 3.21 GB and 70.3 ms / 3.37 GB. The smaller chunk
# keeps memory flat and low for a few % of speed.
DEFAULT_PREFILL_CHUNK = 2048


class GenerationError(UserError):
    """Bad input to generation (e.g. an empty prompt)."""


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    stats: dict = field(default_factory=dict)


class Generator:
    """Generates text with a MambaLM and its tokenizer."""

    def __init__(self, model: MambaLM, tokenizer, prefill_chunk_size: int = DEFAULT_PREFILL_CHUNK,
                 cuda_graphs: bool = True):
        """``cuda_graphs``: on a CUDA model, decode through captured graphs (see cuda_graph.py) and prefill
        single prompts through them too (see prefill.py)."""
        self.model, self.tokenizer = model, tokenizer
        self.prefill_chunk_size = prefill_chunk_size
        self.cuda_graphs = CudaGraphStepper(model) if cuda_graphs and CudaGraphStepper.supported(model) else None
        self.prefill_graphs = PrefillGraphs(model) if cuda_graphs and PrefillGraphs.supported(model) else None
        self.vocab_limit = min(len(tokenizer), model.config.padded_vocab_size)

    def graph_setup_seconds(self) -> float:
        """Seconds spent so far on first calls: warm-up (Triton compiles, or loads from its disk cache, the
        kernels) and CUDA graph capture, for decoding and prefill."""
        return sum(sum(graphs.capture_seconds.values())
                   for graphs in (self.cuda_graphs, self.prefill_graphs) if graphs is not None)

    # ---- token level -----------------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str) or not prompt:
            raise GenerationError("the prompt is empty; give some text to continue")
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], state: InferenceState | None = None):
        """Run prompts (token id lists, any lengths) through the model.

        Returns (last-position logits (b, padded vocab), state). ``state`` (optional) is the start state of
        every row and is advanced in place; padded rows start from it too.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise GenerationError("every prompt needs at least one token")
        device = self.model.device
        longest = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), longest, dtype=torch.long)
        mask = torch.zeros(len(prompts), longest, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, longest - len(prompt):] = torch.tensor(prompt)
            mask[row, longest - len(prompt):] = 1
        ids = ids.to(device)
        if state is None:
            state = self.model.allocate_state(len(prompts))
        elif not bool(mask.all()) and bool(state.ssm.any()):
            raise GenerationError("prompts of different lengths cannot continue from a non-zero state; "
                                  "run them one at a time")
        if self.prefill_graphs is not None and len(prompts) == 1:
            return self.prefill_graphs.run(ids, state, self.prefill_chunk_size), state
        logits = None
        for start in range(0, longest, self.prefill_chunk_size):
            stop = start + self.prefill_chunk_size
            chunk_mask = mask[:, start:stop]  # checked here on the host: no device sync per chunk
            chunk_mask = None if bool(chunk_mask.all()) else chunk_mask.to(device)
            out = self.model(ids[:, start:stop], attention_mask=chunk_mask, state=state, logits_to_keep=1)
            logits = out.logits[:, -1]
        return logits, state

    @torch.inference_mode()
    def decode(self, prompts: list[list[int]], params: SamplingParams, state: InferenceState | None = None,
               context: list[list[int]] | None = None) -> Iterator[torch.Tensor]:
        """Yields the next token of every row (b,) for up to ``params.max_new_tokens`` steps.

        The caller stops iterating when all rows are finished; ``state`` (if given) ends holding the state
        after the last yielded token has been fed back (i.e. after all tokens but the last).
        ``context``: per row, the token ids already in ``state`` before the prompt (earlier chat turns, a
        cached prefix); only the repetition penalty reads them, so it covers what re-encoding would.
        """
        logits, state = self.prefill(prompts, state)
        processor = LogitProcessor(params, self.vocab_limit, logits.device)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(len(prompts), logits.shape[-1], dtype=torch.bool, device=logits.device)
            for row, prompt in enumerate(prompts):
                seen[row, torch.tensor(prompt + (context[row] if context else []), device=logits.device)] = True
        session = self.cuda_graphs.session(state) if self.cuda_graphs is not None else None
        try:
            for step in range(params.max_new_tokens):
                tokens = processor.draw(logits, seen)
                if seen is not None:
                    seen.scatter_(1, tokens[:, None], True)
                yield tokens
                if step + 1 < params.max_new_tokens:
                    logits = session.step(tokens) if session is not None else self.model.step(tokens, state)
        finally:
            if session is not None:
                session.close()

    # ---- text level ------------------------------------------------------------------------------
    def stream_rows(self, prompts: list[str], params: SamplingParams, state: InferenceState | None = None
                    ) -> Iterator[tuple[int, str]]:
        """Yields (row, text piece) as text becomes final; ends when every row has stopped."""
        encoded = [self.encode(p) for p in prompts]
        yield from self._stream_ids(encoded, params, state, results=None)

    def _stream_ids(self, encoded, params, state, results):
        eos_id = None if params.ignore_eos else self.tokenizer.eos_token_id
        rows = [RowText(self.tokenizer, list(params.stop), eos_id) for _ in encoded]
        started = time.perf_counter()
        setup_before = self.graph_setup_seconds()
        first_token_at = None
        steps = 0
        for tokens in self.decode(encoded, params, state):
            steps += 1
            first_token_at = first_token_at or time.perf_counter()
            for row, token in enumerate(tokens.tolist()):
                if rows[row].finish_reason is None:
                    piece = rows[row].add(token)
                    if piece:
                        yield row, piece
            if all(r.finish_reason for r in rows):
                break
        finished = time.perf_counter()
        for row, text in enumerate(rows):
            if text.finish_reason is None:
                text.finish_reason = "length"
                piece = text.flush()
                if piece:
                    yield row, piece
        if results is not None:
            decode_seconds = finished - (first_token_at or finished)
            stats = {"prefill_seconds": (first_token_at or finished) - started, "decode_seconds": decode_seconds,
                     "decode_tokens_per_second": (steps - 1) * len(encoded) / decode_seconds if steps > 1 and
                     decode_seconds > 0 else None, "graph_setup_seconds": self.graph_setup_seconds() - setup_before}
            results.extend(GenerationResult(r.text, r.ids, r.finish_reason, len(e), stats)
                           for r, e in zip(rows, encoded))

    def stream(self, prompt: str, params: SamplingParams, state: InferenceState | None = None,
               results: list[GenerationResult] | None = None) -> Iterator[str]:
        """Yields text pieces of one prompt's continuation as they become final; ``results``, if given,
        receives the GenerationResult (with its stats) at the end."""
        for _, piece in self._stream_ids([self.encode(prompt)], params, state, results):
            yield piece

    def generate(self, prompts: str | list[str], params: SamplingParams,
                 state: InferenceState | None = None) -> list[GenerationResult]:
        """Complete each prompt; returns one GenerationResult per prompt (text without the prompt)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        encoded = [self.encode(p) for p in prompts]
        results: list[GenerationResult] = []
        for _ in self._stream_ids(encoded, params, state, results):
            pass
        return results
