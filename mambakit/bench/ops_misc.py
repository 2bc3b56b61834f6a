"""GPU timings of the causal conv, RMSNorm and linear cross-entropy Triton kernels at model shapes.

``run()`` returns one dict per measurement: op, shape, ms (median of ``triton.testing.do_bench``), gbps
(bytes that must move through HBM / time; None for the compute-bound cross-entropy) and peak_gb (peak
extra memory of a call; only for the cross-entropy, next to the plain-PyTorch reference).
Run as ``python -m mambakit.bench.ops_misc``.
"""
from __future__ import annotations

import torch
import triton.testing

from mambakit.ops import reference
from mambakit.ops.kernels.causal_conv1d import causal_conv1d, causal_conv1d_update
from mambakit.ops.kernels.linear_cross_entropy import linear_cross_entropy
from mambakit.ops.kernels.rms_norm import rms_norm

CONV_SHAPE = dict(batch=1, channels=4096, length=10240, width=4)
CONV_UPDATE_BATCHES = (1, 64)
NORM_SHAPE = dict(tokens=8192, width=2048)
CROSS_ENTROPY_SHAPE = dict(tokens=8192, dim=2048, vocab=50280)


def _median_ms(fn, grad_to_none=None) -> float:
    return triton.testing.do_bench(fn, grad_to_none=grad_to_none, return_mode="median")


def _bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _row(op: str, shape: str, ms: float, moved_bytes: int | None = None, peak_gb: float | None = None) -> dict:
    gbps = None if moved_bytes is None else moved_bytes / (ms * 1e-3) / 1e9
    return {"op": op, "shape": shape, "ms": ms, "gbps": gbps, "peak_gb": peak_gb}


def _bench_conv(device) -> list[dict]:
    batch, channels, length, width = (CONV_SHAPE[key] for key in ("batch", "channels", "length", "width"))
    shape = f"b={batch} d={channels} l={length} k={width} bf16 silu"
    # The model's layout: a (b, d, l) transposed view of a (b, l, d) projection output.
    x = torch.randn(batch, length, channels, device=device, dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
    weight = torch.randn(channels, width, device=device, dtype=torch.bfloat16, requires_grad=True)
    bias = torch.randn(channels, device=device, dtype=torch.bfloat16, requires_grad=True)
    grad_y = torch.randn_like(x)
    with torch.no_grad():
        forward_ms = _median_ms(lambda: causal_conv1d(x, weight, bias, "silu"))
    train_ms = _median_ms(lambda: causal_conv1d(x, weight, bias, "silu").backward(grad_y),
                          grad_to_none=[x, weight, bias])
    return [
        _row("causal_conv1d fwd", shape, forward_ms, _bytes(x, x)),  # read x, write y
        _row("causal_conv1d fwd+bwd", shape, train_ms, _bytes(x, x, x, grad_y, x)),  # + read x, dy; write dx
    ]


def _bench_conv_update(device) -> list[dict]:
    channels, width = CONV_SHAPE["channels"], CONV_SHAPE["width"]
    rows = []
    for batch in CONV_UPDATE_BATCHES:
        x = torch.randn(batch, channels, device=device, dtype=torch.bfloat16)
        state = torch.randn(batch, channels, width - 1, device=device, dtype=torch.bfloat16)
        weight = torch.randn(channels, width, device=device, dtype=torch.bfloat16)
        bias = torch.randn(channels, device=device, dtype=torch.bfloat16)
        ms = _median_ms(lambda: causal_conv1d_update(x, state, weight, bias, "silu"))
        rows.append(_row("causal_conv1d_update", f"b={batch} d={channels} k={width} bf16", ms,
                         _bytes(x, state, state, x)))  # read x and the state, write the state and y
    return rows


def _bench_rms_norm(device) -> list[dict]:
    tokens, width = NORM_SHAPE["tokens"], NORM_SHAPE["width"]
    shape = f"{tokens}x{width} bf16, fp32 residual"
    x = torch.randn(tokens, width, device=device, dtype=torch.bfloat16, requires_grad=True)
    residual = torch.randn(tokens, width, device=device, requires_grad=True)
    weight = torch.randn(width, device=device, dtype=torch.bfloat16, requires_grad=True)
    grad_y, grad_residual_out = torch.randn_like(x), torch.randn_like(residual)

    def train_step():
        y, residual_out = rms_norm(x, weight, residual=residual, residual_in_fp32=True)
        torch.autograd.backward([y, residual_out], [grad_y, grad_residual_out])

    with torch.no_grad():
        forward_ms = _median_ms(lambda: rms_norm(x, weight, residual=residual, residual_in_fp32=True))
    train_ms = _median_ms(train_step, grad_to_none=[x, residual, weight])
    forward_bytes = _bytes(x, residual, x, residual)  # read x and residual, write y and residual_out
    backward_bytes = _bytes(x, residual, grad_y, grad_residual_out, x, residual)  # + write dx and dresidual
    return [
        _row("rms_norm fwd", shape, forward_ms, forward_bytes),
        _row("rms_norm fwd+bwd", shape, train_ms, forward_bytes + backward_bytes),
    ]


def _bench_linear_cross_entropy(device) -> list[dict]:
    tokens, dim, vocab = (CROSS_ENTROPY_SHAPE[key] for key in ("tokens", "dim", "vocab"))
    shape = f"t={tokens} d={dim} v={vocab} bf16"
    hidden = torch.randn(tokens, dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(vocab, dim, device=device, dtype=torch.bfloat16) / dim**0.5).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), device=device)
    rows = []
    for name, fn in (("linear_cross_entropy fwd+bwd", linear_cross_entropy),
                     ("linear_cross_entropy fwd+bwd (torch reference)", reference.linear_cross_entropy)):
        def train_step(fn=fn):
            fn(hidden, weight, labels).backward()

        ms = _median_ms(train_step, grad_to_none=[hidden, weight])
        hidden.grad = weight.grad = None
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        train_step()
        torch.cuda.synchronize(device)
        peak_gb = (torch.cuda.max_memory_allocated(device) - baseline) / 1e9
        hidden.grad = weight.grad = None
        rows.append(_row(name, shape, ms, peak_gb=peak_gb))
    return rows


def run(device="cuda") -> list[dict]:
    """Time every kernel of this family on ``device`` (a CUDA device); one dict per measurement."""
    device = torch.device(device)
    return (_bench_conv(device) + _bench_conv_update(device) + _bench_rms_norm(device)
            + _bench_linear_cross_entropy(device))


if __name__ == "__main__":
    for result in run():
        gbps = "" if result["gbps"] is None else f"{result['gbps']:8.0f} GB/s"
        peak = "" if result["peak_gb"] is None else f"peak {result['peak_gb']:.2f} GB"
        print(f"{result['op']:48s} {result['shape']:36s} {result['ms']:9.3f} ms {gbps} {peak}")
