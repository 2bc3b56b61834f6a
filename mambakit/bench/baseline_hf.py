"""The same shape through HF transformers (what a plain pip install gives), for side-by-side ratios."""
from __future__ import annotations

import time

import torch
import transformers

from mambakit.config import MambaConfig

HF_CLASSES = {"mamba": "MambaForCausalLM", "falcon_mamba": "FalconMambaForCausalLM", "mamba2": "Mamba2ForCausalLM"}


def _hf_model(config: MambaConfig):
    hf_config = transformers.AutoConfig.for_model(**config.to_hf())
    model_cls = getattr(transformers, HF_CLASSES[config.model_type])
    with torch.device("cuda"):
        model = model_cls(hf_config)
    return model.to(torch.bfloat16).eval()


def bench_hf(config: MambaConfig, decode_tokens: int = 32, prefill_tokens: int = 1024) -> list[dict]:
    """HF decode tok/s at batch 1 (generate, greedy) and prefill ms of ``prefill_tokens`` tokens."""
    model = _hf_model(config)
    prompt = torch.randint(0, 1000, (1, 16), device="cuda")
    with torch.inference_mode():
        model.generate(prompt, max_new_tokens=4, do_sample=False)  # warm-up
        torch.cuda.synchronize()
        started = time.perf_counter()
        model.generate(prompt, max_new_tokens=decode_tokens, min_new_tokens=decode_tokens, do_sample=False)
        torch.cuda.synchronize()
        decode_s = time.perf_counter() - started
        ids = torch.randint(0, 1000, (1, prefill_tokens), device="cuda")
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        model(ids, logits_to_keep=1)
        torch.cuda.synchronize()
        prefill_ms = (time.perf_counter() - started) * 1000
    return [{"metric": "hf_decode", "batch": 1, "tokens_per_s": decode_tokens / decode_s},
            {"metric": "hf_prefill", "tokens": prefill_tokens, "ms": prefill_ms,
             "peak_gb": torch.cuda.max_memory_allocated() / 1e9}]
