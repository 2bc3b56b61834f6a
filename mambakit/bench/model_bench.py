"""Whole-model benchmarks on random weights of a named shape: decode, prefill, training step.

Speed does not depend on the weights' values, so random weights of the real shapes measure what real
checkpoints would. Every number comes with its yardstick: decode with achieved GB/s against the copy
bandwidth measured in the same run, prefill with peak memory, training with MFU.
"""
from __future__ import annotations

import time

import torch

from mambakit.config import MambaConfig
from mambakit.generation.cuda_graph import CudaGraphStepper
from mambakit.generation.prefill import PrefillGraphs
from mambakit.generation.sampling import LogitProcessor, SamplingParams
from mambakit.model import MambaLM

NEOX_VOCAB = 50277
BF16_PEAK_TFLOPS = 989.0  # H100/H200 dense bf16 datasheet peak, the usual MFU denominator


def _mamba1(d_model, n_layer, **kw):
    return MambaConfig(model_type="mamba", d_model=d_model, n_layer=n_layer, vocab_size=NEOX_VOCAB, **kw)


def _mamba2(d_model, n_layer, **kw):
    kw.setdefault("vocab_size", NEOX_VOCAB)
    kw.setdefault("pad_vocab_size_multiple", 16)
    return MambaConfig(model_type="mamba2", d_model=d_model, n_layer=n_layer, d_state=128, headdim=64, **kw)


SHAPES = {
    "mamba-130m": _mamba1(768, 24), "mamba-370m": _mamba1(1024, 48), "mamba-790m": _mamba1(1536, 48),
    "mamba-1.4b": _mamba1(2048, 48), "mamba-2.8b": _mamba1(2560, 64),
    "mamba2-130m": _mamba2(768, 24), "mamba2-370m": _mamba2(1024, 48), "mamba2-780m": _mamba2(1536, 48),
    "mamba2-1.3b": _mamba2(2048, 48), "mamba2-2.7b": _mamba2(2560, 64),
    "falcon-mamba-7b": MambaConfig(model_type="falcon_mamba", d_model=4096, n_layer=64, vocab_size=65024,
                                   tie_embeddings=False),
    "codestral-mamba-7b": _mamba2(4096, 64, vocab_size=32768, ngroups=8, tie_embeddings=False),
}


def _cuda_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn`` in ms, timed with CUDA events after a warm-up."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_bandwidth_gbps(device="cuda", gib: float = 1.0) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), the yardstick for decode."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = _cuda_ms(lambda: dst.copy_(src), repeats=20)
    return 2 * src.numel() / ms / 1e6


def weight_bytes(model: MambaLM) -> int:
    """Bytes of weights one decode step reads (each parameter once; the embedding only one row)."""
    total = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    embedding = model.backbone.embedding.weight
    if not model.config.tie_embeddings:
        total -= embedding.numel() * embedding.element_size()
    return total


def bench_decode(model: MambaLM, batch: int, steps: int = 128, params: SamplingParams | None = None,
                 copy_gbps: float | None = None) -> dict:
    """Tokens/s of graphed decoding (sampling on the GPU, no host sync per token) at ``batch`` rows."""
    params = params or SamplingParams(temperature=0)
    device = model.device
    stepper = CudaGraphStepper(model)
    state = model.allocate_state(batch)
    with torch.inference_mode():
        logits = model(torch.randint(0, 1000, (batch, 16), device=device), state=state, logits_to_keep=1).logits[:, -1]
        processor = LogitProcessor(params, model.config.vocab_size, device)
        started = time.perf_counter()
        session = stepper.session(state)
        first_call_s = time.perf_counter() - started
        tokens = processor.draw(logits)

        def run():
            nonlocal tokens
            for _ in range(steps):
                tokens = processor.draw(session.step(tokens))

        ms = _cuda_ms(run, repeats=3) / steps
        session.close()
    state_bytes = state.conv.numel() * state.conv.element_size() + state.ssm.numel() * state.ssm.element_size()
    moved = weight_bytes(model) + 2 * state_bytes
    result = {"metric": "decode", "batch": batch, "ssm_state_dtype": str(state.ssm.dtype).removeprefix("torch."),
              "ms_per_step": ms, "tokens_per_s": batch * 1000 / ms,
              "gbps": moved / ms / 1e6, "graph_capture_s": first_call_s,
              "sampling": "greedy" if params.greedy else "sampled"}
    if copy_gbps:
        result["pct_of_copy_bandwidth"] = 100 * result["gbps"] / copy_gbps
    return result


def bench_prefill(model: MambaLM, length: int, chunk: int, graphs: bool = True, repeats: int = 3) -> dict:
    """ms and peak GB to run a ``length``-token prompt into the state, as Generator.prefill does: with
    ``graphs``, pieces replaying CUDA graphs (generation/prefill.py), else eager forwards of ``chunk`` tokens.
    The peak counts the graphs' memory pool, which the allocator's peak statistic does not see in replays."""
    ids = torch.randint(0, 1000, (1, length), device=model.device)
    prefill_graphs = PrefillGraphs(model) if graphs else None

    def run():
        state = model.allocate_state(1)
        if prefill_graphs is not None:
            prefill_graphs.run(ids, state, chunk)
            return
        with torch.inference_mode():
            for start in range(0, length, chunk):
                model(ids[:, start:start + chunk], state=state, logits_to_keep=1)

    run()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ms = _cuda_ms(run, repeats=repeats)
    peak = torch.cuda.max_memory_allocated() + (prefill_graphs.pool_bytes if prefill_graphs else 0)
    result = {"metric": "prefill", "tokens": length, "chunk": chunk, "cuda_graphs": graphs, "ms": ms,
              "peak_gb": peak / 1e9, "tokens_per_s": length * 1000 / ms}
    if prefill_graphs is not None:
        result["graph_capture_s"] = sum(prefill_graphs.capture_seconds.values())
    return result


def bench_train(model: MambaLM, batch: int = 4, length: int = 2048, steps: int = 5,
                checkpointing: bool = False) -> dict:
    """Tokens/s, peak GB and MFU of a full training step (pure bf16 AdamW, full-vocab loss)."""
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, 1000, (batch, length), device=model.device)

    def run():
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    run()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ms = _cuda_ms(run, repeats=steps)
    peak = torch.cuda.max_memory_allocated() / 1e9
    model.gradient_checkpointing_disable()
    model.eval()
    del optimizer
    tokens_per_s = batch * length * 1000 / ms
    flops = 6 * model.num_parameters() * tokens_per_s
    return {"metric": "train", "batch": batch, "length": length, "ms_per_step": ms, "tokens_per_s": tokens_per_s,
            "peak_gb": peak, "mfu_pct": 100 * flops / (BF16_PEAK_TFLOPS * 1e12), "checkpointing": checkpointing}
