"""GPU timings of the Triton selective scan (Mamba-1) and the single-token selective state update.

``run()`` returns one dict per measurement: op, shape, ms (median of ``triton.testing.do_bench``) and
gbps (the bytes that must move through HBM at least / time). The scan runs as Mamba-1 calls it: bf16
u, delta, z, B, C; fp32 A, D, delta_bias; delta_softplus. Rows marked "(reference)" time the
plain-PyTorch reference on the same inputs (a Python loop over l: seconds at the scan shape).
Targets on an H200 at b=1 d=4096 l=10240 n=16: scan fwd <= 0.6 ms, fwd+bwd <= 3.0 ms.
Run as ``python -m mambakit.bench.ops_selective_scan``.
"""
from __future__ import annotations

import torch
import triton.testing

from mambakit.ops import reference
from mambakit.ops.kernels.selective_scan import selective_scan
from mambakit.ops.kernels.state_update import selective_state_update

SCAN_SHAPE = dict(batch=1, channels=4096, length=10240, state=16)
UPDATE_CHANNELS, UPDATE_STATE = 4096, 16  # one mamba-1.4b layer
UPDATE_BATCHES = (1, 64)


def _median_ms(fn, grad_to_none=None, slow=False) -> float:
    if slow:  # the reference scan takes seconds: a handful of runs is enough
        return triton.testing.do_bench(fn, warmup=1, rep=1, grad_to_none=grad_to_none, return_mode="median")
    return triton.testing.do_bench(fn, grad_to_none=grad_to_none, return_mode="median")


def _bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _row(op: str, shape: str, ms: float, moved_bytes: int) -> dict:
    return {"op": op, "shape": shape, "ms": ms, "gbps": moved_bytes / (ms * 1e-3) / 1e9}


def _scan_inputs(device, batch, channels, length, state) -> dict:
    bf16 = torch.bfloat16
    return dict(
        u=torch.randn(batch, channels, length, device=device, dtype=bf16),
        delta=(0.5 * torch.randn(batch, channels, length, device=device) - 2.0).to(bf16),  # pre-softplus
        A=-torch.arange(1, state + 1, device=device, dtype=torch.float32).repeat(channels, 1),  # S4D-real init
        B=torch.randn(batch, state, length, device=device, dtype=bf16),
        C=torch.randn(batch, state, length, device=device, dtype=bf16),
        D=torch.ones(channels, device=device),
        z=torch.randn(batch, channels, length, device=device, dtype=bf16),
        delta_bias=0.1 * torch.randn(channels, device=device),
    )


def _bench_scan(device, include_reference: bool) -> list[dict]:
    shape = "b={batch} d={channels} l={length} n={state} bf16".format(**SCAN_SHAPE)
    inputs = _scan_inputs(device, **SCAN_SHAPE)
    for tensor in inputs.values():
        tensor.requires_grad_()
    grad_y = torch.randn_like(inputs["u"])
    activations = [inputs[k] for k in ("u", "delta", "z")]
    projections = [inputs["B"], inputs["C"]]
    forward_bytes = _bytes(*activations, *projections, inputs["u"])  # read u, delta, z, B, C; write y
    # + read u, delta, z, B, C, dy; write du, ddelta, dz, dB, dC
    train_bytes = forward_bytes + 2 * _bytes(*activations, *projections) + _bytes(grad_y)
    implementations = [("selective_scan", selective_scan, False)]
    if include_reference:
        implementations.append(("selective_scan (reference)", reference.selective_scan, True))

    rows = []
    for name, scan, slow in implementations:
        with torch.no_grad():
            forward_ms = _median_ms(lambda: scan(**inputs, delta_softplus=True), slow=slow)
        rows.append(_row(f"{name} fwd", shape, forward_ms, forward_bytes))
        train_ms = _median_ms(lambda: scan(**inputs, delta_softplus=True).backward(grad_y),
                              grad_to_none=list(inputs.values()), slow=slow)
        rows.append(_row(f"{name} fwd+bwd", shape, train_ms, train_bytes))
    return rows


def _bench_state_update(device, include_reference: bool) -> list[dict]:
    channels, state_size = UPDATE_CHANNELS, UPDATE_STATE
    implementations = [("selective_state_update", selective_state_update)]
    if include_reference:
        implementations.append(("selective_state_update (reference)", reference.selective_state_update))
    rows = []
    for batch in UPDATE_BATCHES:
        bf16 = torch.bfloat16
        state = torch.zeros(batch, channels, state_size, device=device)
        x, dt, z = (torch.randn(batch, channels, device=device, dtype=bf16) for _ in range(3))
        A = -torch.arange(1, state_size + 1, device=device, dtype=torch.float32).repeat(channels, 1)
        B, C = (torch.randn(batch, state_size, device=device, dtype=bf16) for _ in range(2))
        D, dt_bias = torch.ones(channels, device=device), torch.zeros(channels, device=device)
        # read and write the fp32 state; read x, dt, z, A, B, C, D, dt_bias; write y
        moved = _bytes(state, state, x, dt, z, A, B, C, D, dt_bias, x)
        shape = f"b={batch} d={channels} n={state_size} bf16, fp32 state"
        for name, update in implementations:
            ms = _median_ms(lambda: update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus=True))
            rows.append(_row(name, shape, ms, moved))
    return rows


def run(device="cuda", include_reference: bool = True) -> list[dict]:
    """Time the scan (fwd, fwd+bwd) and the state update (b=1, b=64), Triton and, optionally, reference."""
    return _bench_scan(device, include_reference) + _bench_state_update(device, include_reference)


if __name__ == "__main__":
    for result in run():
        print(f"{result['op']:<42} {result['shape']:<36} {result['ms']:10.4f} ms {result['gbps']:8.1f} GB/s")
