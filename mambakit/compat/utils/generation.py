"""mamba_ssm.utils.generation: ``InferenceParams``, ``sample``, ``decode`` and ``GenerationMixin.generate``.

Semantics kept from mamba_ssm (what its users rely on):
- ``max_length`` counts the prompt: ``max(1, max_length - prompt length)`` new tokens, fewer when every row
  has just produced ``eos_token_id`` (finished rows keep generating until then; rows are not padded);
- greedy unless ``top_k != 1`` (the default top_k=1 ignores temperature, top_p and min_p);
- ``top_p`` 0 (or >= 1) means off; top-k, temperature and top-p combine as in mamba_ssm;
- the repetition penalty is CTRL-style over prompt and output, before sampling (as mamba_ssm and HF);
- ``scores``: the raw logits (b, vocab) of each step; ``teacher_outputs`` (b, >= max_length) forces tokens;
- ``torch.manual_seed`` makes sampling reproducible (the draws differ from mamba_ssm's).

Fixed or changed:
- ``min_p`` is real min-p sampling (keep tokens whose probability is >= min_p × the top probability, after
  temperature), applied with any top_k / top_p. mamba_ssm only applies it when top_k=0, and then compares
  raw logits with min_p × the logit of token id 0 (the wrong logit) and ignores top_p;
- ``temperature=0`` with top_k != 1 is greedy (mamba_ssm divides by zero);
- padded vocabulary rows (ids >= config.vocab_size) are never drawn;
- ``cg=True`` decodes through mambakit's CUDA graphs on a CUDA model, and is ignored on the CPU;
- ``decode`` takes a mambakit model (``MambaLMHeadModel`` or ``mambakit.MambaLM``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from transformers.generation import GenerateDecoderOnlyOutput

from mambakit.compat.errors import CompatError
from mambakit.generation import LogitProcessor, SamplingError, SamplingParams
from mambakit.model import MambaLM


@dataclass
class InferenceParams:
    """Decoding bookkeeping: ``seqlen_offset`` tokens already in the per-layer states of
    ``key_value_memory_dict`` ({layer index: (conv_state, ssm_state)})."""

    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)
    lengths_per_sample: torch.Tensor | None = None

    def reset(self, max_seqlen, max_batch_size):
        self.max_seqlen = max_seqlen
        self.max_batch_size = max_batch_size
        self.seqlen_offset = 0
        if self.lengths_per_sample is not None:
            self.lengths_per_sample.zero_()


def sampling_params(top_k=1, top_p=0.0, min_p=0.0, temperature=1.0, repetition_penalty=1.0,
                    max_new_tokens=1) -> SamplingParams:
    """mamba_ssm's sampling options as mambakit's SamplingParams (the seed comes from torch's global RNG)."""
    if top_p > 1.0:
        raise SamplingError(f"top_p must be in [0, 1] (0 = off), got {top_p!r}")
    if top_k == 1 or temperature == 0:
        return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=repetition_penalty)
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p if 0.0 < top_p < 1.0 else 1.0, min_p=min_p,
                          repetition_penalty=repetition_penalty, seed=int(torch.randint(2 ** 62, ()).item()))


def sample(logits, top_k=1, top_p=0.0, min_p=0.0, temperature=1.0):
    """logits (b, vocab) -> next token ids (b,), with mamba_ssm's options (see the module docstring)."""
    params = sampling_params(top_k, top_p, min_p, temperature)
    return LogitProcessor(params, logits.shape[-1], logits.device).draw(logits)


def _cut(logits: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    """(b, padded vocab) -> (b, vocab_size) when decode's ``vocab_size`` is given."""
    return logits[..., :vocab_size] if vocab_size is not None else logits


def _decode_steps(model: MambaLM, state, cg: bool):
    """The decode step (token ids (b,) -> logits (b, vocab)) and a close() for it: CUDA graphs when asked and
    possible, else ``model.step``."""
    if cg and model.device.type == "cuda":
        from mambakit.generation.cuda_graph import CudaGraphStepper

        placement = (model.device, model.dtype)  # captured graphs, kept across calls as mamba_ssm does
        if getattr(model, "_decoding_cache", None) is None or model._decoding_cache[0] != placement:
            model._decoding_cache = (placement, CudaGraphStepper(model))
        session = model._decoding_cache[1].session(state)
        return (lambda tokens: session.step(tokens).clone()), session.close
    return (lambda tokens: MambaLM.step(model, tokens, state)), (lambda: None)


@torch.inference_mode()
def decode(input_ids, model, max_length, top_k=1, top_p=0.0, min_p=0.0, temperature=1.0, repetition_penalty=1.0,
           eos_token_id=None, teacher_outputs=None, vocab_size=None, cg=False, enable_timing=False, streamer=None,
           output_scores=False):
    """Continue input_ids (b, l), every row the same length, up to ``max_length`` tokens in all.

    Returns a ``GenerateDecoderOnlyOutput`` with sequences (b, <= max(max_length, l + 1)) and, with
    ``output_scores``, scores: one (b, vocab) logits tensor per new token (``vocab_size`` cuts the vocabulary).
    ``streamer`` (e.g. transformers' TextStreamer) gets the prompt, then every token, then ``end()``.
    """
    if not isinstance(model, MambaLM):
        raise CompatError(f"decode needs a mambakit model (MambaLMHeadModel), got {type(model).__name__}")
    if streamer is not None:
        streamer.put(input_ids.cpu())
    batch_size, prompt_length = input_ids.shape
    new_tokens = max(1, max_length - prompt_length)
    params = sampling_params(top_k, top_p, min_p, temperature, repetition_penalty, new_tokens)
    vocab_limit = min(model.config.vocab_size, vocab_size or math.inf)
    processor = LogitProcessor(params, vocab_limit, input_ids.device)
    started = time.perf_counter()
    state = model.allocate_state(batch_size)
    logits = _cut(MambaLM.forward(model, input_ids, state=state, logits_to_keep=1).logits[:, -1], vocab_size)
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(batch_size, logits.shape[-1], dtype=torch.bool, device=logits.device)
        seen.scatter_(1, input_ids, True)
    step, close = _decode_steps(model, state, cg)
    scores, sequences = [], [input_ids]
    try:
        for index in range(new_tokens):
            if index > 0:
                logits = _cut(step(sequences[-1][:, 0]), vocab_size)
            if output_scores:
                scores.append(logits)
            position = prompt_length + index
            if teacher_outputs is not None and teacher_outputs.shape[1] > position:
                tokens = teacher_outputs[:, position]
            else:
                tokens = processor.draw(logits, seen)
            if seen is not None:
                seen.scatter_(1, tokens[:, None], True)
            sequences.append(tokens[:, None])
            if streamer is not None:
                streamer.put(tokens[:, None].cpu())
            if eos_token_id is not None and bool((tokens == eos_token_id).all()):
                break
    finally:
        close()
    if streamer is not None:
        streamer.end()
    if enable_timing:
        if input_ids.device.type == "cuda":
            torch.cuda.synchronize()
        print(f"Prompt processing + decoding time: {(time.perf_counter() - started) * 1000:.0f}ms")
    return GenerateDecoderOnlyOutput(sequences=torch.cat(sequences, dim=1), scores=tuple(scores))


class GenerationMixin:
    """``generate`` for mamba_ssm's language models."""

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        raise NotImplementedError

    def generate(self, input_ids, max_length, top_k=1, top_p=0.0, min_p=0.0, temperature=1.0,
                 return_dict_in_generate=False, output_scores=False, **kwargs):
        """input_ids (b, l) -> sequences (b, ≈max_length) with the prompt, or, with ``return_dict_in_generate``,
        an output with ``.sequences`` and ``.scores`` (None unless ``output_scores``). kwargs: ``decode``'s
        (repetition_penalty, eos_token_id, teacher_outputs, vocab_size, cg, enable_timing, streamer)."""
        output = decode(input_ids, self, max_length, top_k=top_k, top_p=top_p, min_p=min_p, temperature=temperature,
                        output_scores=output_scores, **kwargs)
        if not output_scores:
            output.scores = None
        return output if return_dict_in_generate else output.sequences
