"""The lm-evaluation-harness model ``mambakit``.

    lm_eval.simple_evaluate(model="mambakit", model_args="pretrained=state-spaces/mamba-1.4b,dtype=bfloat16",
                            tasks=["lambada_openai", "piqa"])

``import mambakit`` registers the name (see ``mambakit.eval``); this module is imported only when lm-eval
asks for the class. Tokenisation follows lm-eval's ``TemplateLM`` (the same context/continuation split as
its ``hf`` model), and the three request types run on the recurrent state:

- ``loglikelihood``: a context shared by several continuations is run once, its state reused for each;
- ``loglikelihood_rolling``: the whole document from the BOS/EOS token, the state carried across chunks
  (exact: no window, no truncation);
- ``generate_until``: ``mambakit.Generator`` with the stop sequences as ``SamplingParams.stop``, so
  generation ends as soon as one appears.
"""
from __future__ import annotations

import json

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from tqdm import tqdm

from mambakit.errors import UserError
from mambakit.eval import HARNESS_MODEL_NAME
from mambakit.eval.scoring import (DEFAULT_BATCH_SIZE, DEFAULT_TOKENS_PER_FORWARD, ContinuationScorer, TokenScores,
                                   prefix_token_id)
from mambakit.generation import Generator, SamplingParams
from mambakit.generation.generator import DEFAULT_PREFILL_CHUNK
from mambakit.loading import load
from mambakit.model import MambaLM
from mambakit.tokenizer import load_tokenizer

SAMPLING_OPTIONS = ("top_k", "top_p", "min_p", "repetition_penalty", "seed")


class HarnessError(UserError):
    """A bad model argument or generation option given to the ``mambakit`` lm-eval model."""


@register_model(HARNESS_MODEL_NAME)
class MambaKitLM(TemplateLM):
    """lm-eval model over a MambaLM.

    pretrained: checkpoint folder, hub id, preset, or an already loaded MambaLM (then ``tokenizer`` is
    required). batch_size: rows per forward call ("auto" means the default, 16). prefill_chunk_size: tokens
    per prefill call of long contexts. tokens_per_forward: bounds the logits of one scoring call.
    """

    def __init__(self, pretrained: str | MambaLM = "mambakit:tiny-random", tokenizer=None, dtype: str = "auto",
                 device: str = "auto", batch_size: int | str = DEFAULT_BATCH_SIZE, max_batch_size: int | None = None,
                 prefill_chunk_size: int = DEFAULT_PREFILL_CHUNK, tokens_per_forward: int = DEFAULT_TOKENS_PER_FORWARD,
                 max_gen_toks: int = 256, **unknown):
        super().__init__()
        if unknown:
            raise HarnessError(f"unknown model_args for the mambakit model: {', '.join(sorted(unknown))}; known: "
                               "pretrained, tokenizer, dtype, device, batch_size, prefill_chunk_size, "
                               "tokens_per_forward, max_gen_toks")
        if isinstance(pretrained, MambaLM):
            if tokenizer is None:
                raise HarnessError("a MambaLM passed as pretrained needs its tokenizer (tokenizer=...)")
            model = pretrained.eval()
            tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        else:
            model, tokenizer, _ = load(pretrained, device=device, dtype=dtype, tokenizer=tokenizer)
        self.model, self.tokenizer = model, tokenizer
        self._device = model.device
        self.batch_size = _batch_size(batch_size, max_batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.generator = Generator(model, tokenizer, prefill_chunk_size=int(prefill_chunk_size))
        self.scorer = ContinuationScorer(self.generator, self.batch_size, int(tokens_per_forward))

    # ---- tokens ----------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context (and every rolling document) starts from."""
        return prefix_token_id(self.tokenizer)

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    def get_model_info(self) -> dict:
        return {"model_num_parameters": self.model.num_parameters(), "model_dtype": str(self.model.dtype)}

    # ---- requests --------------------------------------------------------------------------------
    def _score(self, pairs: list[tuple[list[int], list[int]]], disable_tqdm: bool, description: str
               ) -> list[TokenScores]:
        with tqdm(total=len(pairs), disable=disable_tqdm, desc=description) as bar:
            return self.scorer.score(pairs, on_done=bar.update)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation) strings, context ids, continuation ids) -> (log p, is greedy)."""
        scores = self._score([(context, continuation) for _, context, continuation in requests], disable_tqdm,
                             "mambakit loglikelihood")
        answers = []
        for (strings, _, _), scored in zip(requests, scores):
            answer = (scored.total, scored.all_greedy)
            self.cache_hook.add_partial("loglikelihood", strings, answer)
            answers.append(answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(document | BOS/EOS) of each whole document, exact at any length."""
        documents = [self.tok_encode(request.args[0]) for request in requests]
        nonempty = [index for index, tokens in enumerate(documents) if tokens]
        scores = self._score([([self.prefix_token_id], documents[index]) for index in nonempty], disable_tqdm,
                             "mambakit loglikelihood_rolling")
        totals = [0.0] * len(requests)
        for index, scored in zip(nonempty, scores):
            totals[index] = scored.total
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continue each context until a stop sequence, EOS or max_gen_toks; requests batch by their options."""
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        outputs: list[str] = [""] * len(requests)
        eos_text = self.tokenizer.decode([self.eot_token_id], skip_special_tokens=False)
        with tqdm(total=len(requests), disable=disable_tqdm, desc="mambakit generate_until") as bar:
            for indices in groups.values():
                params = self.sampling_params(requests[indices[0]].args[1], eos_text)
                # An empty context starts from the EOS text, which encodes to the EOS token.
                prompts = {index: requests[index].args[0] or eos_text for index in indices}
                ordered = sorted(indices, key=lambda index: len(prompts[index]), reverse=True)
                for start in range(0, len(ordered), self.batch_size):
                    batch = ordered[start:start + self.batch_size]
                    for index, result in zip(batch, self.generator.generate([prompts[i] for i in batch], params)):
                        outputs[index] = result.text
                        self.cache_hook.add_partial("generate_until", requests[index].args, result.text)
                    bar.update(len(batch))
        return outputs

    def sampling_params(self, gen_kwargs: dict, eos_text: str) -> SamplingParams:
        """lm-eval generation kwargs (until, max_gen_toks, do_sample, temperature, …) -> SamplingParams."""
        options = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        stop = [s for s in handle_stop_sequences(options.pop("until", None), eos=eos_text) if s]
        max_new_tokens = options.pop("max_gen_toks")
        temperature = float(options.pop("temperature", 0.0)) if options.pop("do_sample", False) else 0.0
        chosen = {name: options.pop(name) for name in SAMPLING_OPTIONS if options.get(name) is not None}
        leftover = sorted(name for name, value in options.items() if value is not None)
        if leftover:
            raise HarnessError(f"generation option(s) {', '.join(leftover)} are not supported by the mambakit model; "
                               f"supported: until, max_gen_toks, do_sample, temperature, {', '.join(SAMPLING_OPTIONS)}")
        return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, stop=stop, **chosen)


def _batch_size(batch_size: int | str, max_batch_size: int | None) -> int:
    """lm-eval's batch_size (an int, or "auto"/"auto:N" which mean the default here), capped by max_batch_size."""
    text = str(batch_size)
    if text.startswith("auto"):
        size = DEFAULT_BATCH_SIZE
    elif text.isdigit() and int(text) > 0:
        size = int(text)
    else:
        raise HarnessError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    return min(size, int(max_batch_size)) if max_batch_size else size
