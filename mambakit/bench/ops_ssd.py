"""GPU timings of the Triton Mamba-2 SSD chunked scan (``ssd_scan``) at one layer of a long sequence.

``run()`` returns one dict per measurement: op, shape, ms (median of ``triton.testing.do_bench``),
gbps (the bytes that must move through HBM at least / time) and tflops (the tensor-core work of the
chunked algorithm / time). The scan runs as a Mamba-2 layer calls it: bf16 x, dt, B, C; fp32 A, D (one
per head) and dt_bias; dt_softplus. Shape b=1 l=10240 h=64 p=64 n=128 g=1, chunk 256.
Targets on an H200: fwd <= 0.6 ms, fwd+bwd <= 3.0 ms (mamba_ssm's Triton kernels: 0.78 / 4.24 ms).
``include_reference`` adds the plain-PyTorch reference (a Python loop over l: seconds, ~20 GB for fwd+bwd).
Run as ``python -m mambakit.bench.ops_ssd``.
"""
from __future__ import annotations

import torch
import triton.testing

from mambakit.ops import reference
from mambakit.ops.kernels.ssd import ssd_scan

SHAPE = dict(batch=1, length=10240, heads=64, head_dim=64, state=128, groups=1)
CHUNK = 256


def _median_ms(fn, grad_to_none=None, slow=False) -> float:
    if slow:  # the reference takes seconds: a handful of runs is enough
        return triton.testing.do_bench(fn, warmup=1, rep=1, grad_to_none=grad_to_none, return_mode="median")
    return triton.testing.do_bench(fn, grad_to_none=grad_to_none, return_mode="median")


def _bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _forward_flops(batch, length, heads, head_dim, state, groups, chunk) -> int:
    """Matrix-product FLOPs of the chunked forward, counting only the causal half of each chunk:
    C·Bᵀ once per group (l·q/2·n MACs), (C Bᵀ ∘ L)·x (l·q/2·p), the chunk states and the
    inter-chunk output (l·p·n each), all per head except C·Bᵀ."""
    per_head = length * (chunk // 2 * head_dim + 2 * head_dim * state)
    per_group = length * chunk // 2 * state
    return 2 * batch * (heads * per_head + groups * per_group)


def _row(op: str, shape: str, ms: float, moved_bytes: int, flops: int) -> dict:
    seconds = ms * 1e-3
    return {"op": op, "shape": shape, "ms": ms, "gbps": moved_bytes / seconds / 1e9, "tflops": flops / seconds / 1e12}


def _inputs(device, batch, length, heads, head_dim, state, groups) -> dict:
    bf16 = torch.bfloat16
    return dict(
        x=torch.randn(batch, length, heads, head_dim, device=device, dtype=bf16),
        dt=(0.5 * torch.randn(batch, length, heads, device=device) - 2.0).to(bf16),  # pre-softplus
        A=-torch.linspace(1.0, 16.0, heads, device=device),  # Mamba-2's A init range
        B=(torch.randn(batch, length, groups, state, device=device) * state ** -0.5).to(bf16),
        C=(torch.randn(batch, length, groups, state, device=device) * state ** -0.5).to(bf16),
        D=torch.ones(heads, device=device),
        dt_bias=0.1 * torch.randn(heads, device=device),
    )


def run(device="cuda", include_reference: bool = False) -> list[dict]:
    """Time ssd_scan fwd and fwd+bwd (Triton and, optionally, the reference) at SHAPE."""
    shape = "b={batch} l={length} h={heads} p={head_dim} n={state} g={groups} chunk={chunk} bf16".format(
        **SHAPE, chunk=CHUNK)
    inputs = _inputs(device, **SHAPE)
    for tensor in inputs.values():
        tensor.requires_grad_()
    grad_y = torch.randn_like(inputs["x"])
    sequence_inputs = [inputs[k] for k in ("x", "dt", "B", "C")]
    forward_bytes = _bytes(*sequence_inputs, inputs["x"])  # read x, dt, B, C; write y
    train_bytes = forward_bytes + 2 * _bytes(*sequence_inputs) + _bytes(grad_y)  # + read them and dy, write grads
    forward_flops = _forward_flops(**SHAPE, chunk=CHUNK)
    implementations = [("ssd_scan", ssd_scan, False)]
    if include_reference:
        implementations.append(("ssd_scan (reference)", reference.ssd_scan, True))

    rows = []
    for name, scan, slow in implementations:
        with torch.no_grad():
            forward_ms = _median_ms(lambda: scan(**inputs, chunk_size=CHUNK, dt_softplus=True), slow=slow)
        rows.append(_row(f"{name} fwd", shape, forward_ms, forward_bytes, forward_flops))
        train_ms = _median_ms(lambda: scan(**inputs, chunk_size=CHUNK, dt_softplus=True).backward(grad_y),
                              grad_to_none=list(inputs.values()), slow=slow)
        # backward: twice the forward's matrix products (the usual convention for matmul-based ops)
        rows.append(_row(f"{name} fwd+bwd", shape, train_ms, train_bytes, 3 * forward_flops))
    return rows


if __name__ == "__main__":
    for result in run():
        print(f"{result['op']:<26} {result['shape']:<52} {result['ms']:9.4f} ms "
              f"{result['gbps']:8.1f} GB/s {result['tflops']:7.1f} TFLOP/s")
