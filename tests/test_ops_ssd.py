"""Triton SSD chunked scan (``mambakit.ops.kernels.ssd.ssd_scan``) against the reference recurrence.

Outputs and the gradients of every input are compared. On a machine without CUDA the kernels run in
Triton's interpreter on CPU tensors (tiny shapes, chunks of 16 or 32 so that several chunks are
crossed); the ``gpu`` tests use real model shapes.
"""
from __future__ import annotations

import pytest
import torch
from numerics import BF16_RELATIVE_ERROR, assert_relative_error
import torch.nn.functional as F

from mambakit.ops import reference
from mambakit.ops.kernels.ssd import ssd_scan

TOLERANCES = {
    torch.float32: dict(rtol=6e-4, atol=2e-3),
    torch.bfloat16: dict(rtol=3e-2, atol=5e-2),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
}
DIFFERENTIABLE = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")


def make_inputs(batch, length, heads, groups, head_dim, state_dim, dtype=torch.float32, device="cpu", *,
                D=None, z=False, dt_bias=False, dt_softplus=False, initial_state=False):
    """Random ssd_scan inputs, with leaf tensors that require grad.

    dt and A are drawn so that exp(dt·A) stays near 0.96: states survive several chunks, which
    exercises the passing of states between chunks. B and C are scaled by n^-1/2 so that C·B, hence y
    and the gradients, stay O(1) as in a trained model (the absolute tolerances assume that).
    D is None, "head" for (h,) or "channel" for (h, p).
    """
    def rand(*shape, kind=dtype):
        return torch.randn(*shape, device=device, dtype=torch.float32).to(kind)

    if dt_softplus:  # softplus(dt + dt_bias) around 0.13
        dt = (rand(batch, length, heads, kind=torch.float32) * 0.5 - (1.8 if dt_bias else 2.0)).to(dtype)
    else:
        dt = (torch.rand(batch, length, heads, device=device) * 0.2 + 0.02).to(dtype)
    tensors = dict(
        x=rand(batch, length, heads, head_dim), dt=dt,
        A=-(torch.rand(heads, device=device) * 0.4 + 0.1),
        B=rand(batch, length, groups, state_dim) * state_dim ** -0.5,
        C=rand(batch, length, groups, state_dim) * state_dim ** -0.5,
    )
    if D is not None:
        tensors["D"] = rand(heads) if D == "head" else rand(heads, head_dim)
    if z:
        tensors["z"] = rand(batch, length, heads, head_dim)
    if dt_bias:
        tensors["dt_bias"] = rand(heads, kind=torch.float32) * 0.1 - 0.2
    if initial_state:
        tensors["initial_state"] = rand(batch, heads, head_dim, state_dim, kind=torch.float32)
    return {name: t.detach().requires_grad_(True) for name, t in tensors.items()}


def run_with_grads(fn, tensors, options, output_grad, final_state_grad=None):
    """(y, final state, {name: grad}) of fn; the loss is <y, output_grad> (+ <final, final_state_grad>)."""
    y, final = fn(**tensors, **options, return_final_state=True)
    loss = (y.float() * output_grad).sum()
    if final_state_grad is not None:
        loss = loss + (final * final_state_grad).sum()
    grads = torch.autograd.grad(loss, list(tensors.values()))
    return y, final, dict(zip(tensors, grads))


def assert_matches_reference(tensors, options, dtype, final_state_grad=False, tolerance=None):
    tolerance = tolerance or TOLERANCES[dtype]
    x = tensors["x"]
    output_grad = torch.randn(x.shape, device=x.device)
    state_grad = None
    if final_state_grad:
        b, _, h, p = x.shape
        state_grad = torch.randn(b, h, p, tensors["B"].shape[-1], device=x.device)
    y, final, grads = run_with_grads(ssd_scan, tensors, options, output_grad, state_grad)
    y_ref, final_ref, grads_ref = run_with_grads(reference.ssd_scan, tensors, options, output_grad, state_grad)
    assert y.dtype == x.dtype and final.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, **tolerance, msg=lambda m: f"y: {m}")
    torch.testing.assert_close(final, final_ref, **tolerance, msg=lambda m: f"final state: {m}")
    for name in tensors:
        assert grads[name].dtype == tensors[name].dtype, name
        torch.testing.assert_close(grads[name], grads_ref[name], **tolerance, msg=lambda m, n=name: f"d{n}: {m}")


def packed_seq_idx(length, device="cpu"):
    """(2, length) int32: row 0 has sequences starting at 16 (a chunk edge for chunks of 16), 37 and 40;
    row 1 starts new sequences at 5 and 48 (a chunk edge) and returns to an earlier id at 53."""
    seq_idx = torch.zeros(2, length, dtype=torch.int32, device=device)
    seq_idx[0, 16:], seq_idx[0, 37:], seq_idx[0, 40:] = 1, 2, 3
    seq_idx[1, :5], seq_idx[1, 5:], seq_idx[1, 48:], seq_idx[1, 53:] = 7, 8, 9, 8
    return seq_idx


CPU_CASES = {
    "plain": dict(shape=(2, 64, 2, 1, 16, 16), chunk=16, inputs={}, options={}),
    "gated_grouped_softplus_ragged": dict(
        shape=(2, 50, 4, 2, 16, 16), chunk=32,
        inputs=dict(D="head", z=True, dt_bias=True, dt_softplus=True), options=dict(dt_softplus=True)),
    "channel_D_limit_initial_state": dict(
        shape=(1, 70, 4, 4, 16, 32), chunk=16,
        inputs=dict(D="channel", initial_state=True, dt_softplus=True),
        options=dict(dt_softplus=True, dt_limit=(0.1, 0.2))),
    "packed_sequences": dict(
        shape=(2, 66, 4, 2, 16, 16), chunk=16,
        inputs=dict(D="head", z=True, dt_bias=True, dt_softplus=True, initial_state=True),
        options=dict(dt_softplus=True), packed=True),
    "odd_dims": dict(shape=(1, 45, 6, 3, 12, 20), chunk=16, inputs=dict(D="channel", z=True), options={}),
    # chunks of several row blocks (fp32 tiles are 32 positions, bf16 ones 64 with 32-wide inner tiles)
    "multi_block_chunks": dict(
        shape=(2, 150, 2, 1, 16, 16), chunk=128, inputs=dict(D="head", z=True, initial_state=True), options={},
        packed=True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CPU_CASES))
def test_matches_reference(case, dtype):
    spec = CPU_CASES[case]
    tensors = make_inputs(*spec["shape"], dtype=dtype, **spec["inputs"])
    options = dict(spec["options"], chunk_size=spec["chunk"])
    if spec.get("packed"):
        options["seq_idx"] = packed_seq_idx(spec["shape"][1])
    assert_matches_reference(tensors, options, dtype, final_state_grad=True)


def test_fp16_inputs():
    tensors = make_inputs(2, 40, 4, 2, 16, 16, dtype=torch.float16, D="head", z=True, dt_bias=True, dt_softplus=True)
    assert_matches_reference(tensors, dict(chunk_size=16, dt_softplus=True), torch.float16)


def test_clamp_is_active_in_limit_case():
    """The dt_limit case really clamps on both sides (else its gradient check would prove little)."""
    dt = make_inputs(*CPU_CASES["channel_D_limit_initial_state"]["shape"], dt_softplus=True)["dt"]
    dt = F.softplus(dt.detach())
    assert (dt < 0.1).float().mean() > 0.1 and (dt > 0.2).float().mean() > 0.1


def test_chunk_size_does_not_change_the_result():
    tensors = make_inputs(1, 64, 2, 1, 16, 16, D="head", initial_state=True)
    inputs = {k: v.detach() for k, v in tensors.items()}
    y16, final16 = ssd_scan(**inputs, chunk_size=16, return_final_state=True)
    y64, final64 = ssd_scan(**inputs, chunk_size=64, return_final_state=True)
    torch.testing.assert_close(y16, y64, **TOLERANCES[torch.float32])
    torch.testing.assert_close(final16, final64, **TOLERANCES[torch.float32])


def test_only_final_state_used_and_strided_inputs():
    """A loss on the final state alone (y gets no gradient), with B, C, z sliced out of one projection."""
    batch, length, heads, head_dim, state_dim = 2, 40, 2, 16, 16
    projection = torch.randn(batch, length, heads * head_dim + 2 * state_dim)
    z_proj = torch.randn(batch, length, 2 * heads * head_dim)
    tensors = make_inputs(batch, length, heads, 1, head_dim, state_dim)
    B = projection[..., heads * head_dim:heads * head_dim + state_dim].unsqueeze(2)
    C = projection[..., heads * head_dim + state_dim:].unsqueeze(2)
    z = z_proj[..., ::2].unflatten(-1, (heads, head_dim))
    assert not B.is_contiguous() and not z.is_contiguous()
    x = tensors["x"]
    results = []
    for fn in (ssd_scan, reference.ssd_scan):
        y, final = fn(x, tensors["dt"], tensors["A"], B, C, chunk_size=16, z=z, return_final_state=True)
        results.append((y, final, torch.autograd.grad(final.square().sum(), [x, tensors["dt"], tensors["A"]])))
    (y, final, grads), (y_ref, final_ref, grads_ref) = results
    torch.testing.assert_close(y, y_ref, **TOLERANCES[torch.float32])
    torch.testing.assert_close(final, final_ref, **TOLERANCES[torch.float32])
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, **TOLERANCES[torch.float32])


def test_sum_loss_gives_a_broadcast_output_grad():
    """y.sum().backward() hands the kernels a (b, l, h, p) gradient with all strides 0."""
    tensors = make_inputs(1, 24, 2, 1, 16, 16, D="head", z=True)
    grads = []
    for fn in (ssd_scan, reference.ssd_scan):
        fn(**tensors, chunk_size=16).sum().backward()
        grads.append({name: t.grad.clone() for name, t in tensors.items()})
        for t in tensors.values():
            t.grad = None
    for name in tensors:
        torch.testing.assert_close(grads[0][name], grads[1][name], **TOLERANCES[torch.float32])


def test_forward_without_grad_any_chunk_size_and_input_checks():
    """Without autograd; chunk sizes that are not powers of two >= 16 are rounded up by the kernels."""
    tensors = {k: v.detach() for k, v in make_inputs(1, 20, 2, 1, 16, 16, z=True).items()}
    expected = reference.ssd_scan(**tensors)
    for chunk_size in (8, 24):
        torch.testing.assert_close(ssd_scan(**tensors, chunk_size=chunk_size), expected, **TOLERANCES[torch.float32])
    with pytest.raises(ValueError, match="dt has shape"):
        ssd_scan(**dict(tensors, dt=tensors["dt"][:, :10]), chunk_size=16)


def test_dispatcher_finds_the_kernel():
    from mambakit import ops

    assert ops.ssd_scan.kernel() is ssd_scan, ops.ssd_scan.kernel_error


# ----------------------------------------------------------------------------------------------- GPU

# Per-head parameter gradients sum b * l terms (10,240 at the benchmark shape) of bf16-rounded products.
PER_HEAD_PARAMETER_GRADS = ("dA", "dD", "ddt_bias")


def assert_close_gpu(actual, expected, dtype, name):
    """bf16 rounds each tensor-core operand, so its error grows with the number of terms summed (the
    parameter gradients sum over every position): bf16 is judged by the relative error norm, twice the
    usual limit for the per-head parameter gradients."""
    if dtype == torch.bfloat16:
        assert_relative_error(actual, expected, name,
                              limit=2 * BF16_RELATIVE_ERROR if name in PER_HEAD_PARAMETER_GRADS else BF16_RELATIVE_ERROR)
    else:
        torch.testing.assert_close(actual.float(), expected.float(), **TOLERANCES[dtype],
                                   msg=lambda m: f"{name}: {m}")


def compare_on_gpu(shape, dtype, chunk, seq_idx=None, with_gate=True):
    batch, length, heads, groups, head_dim, state_dim = shape
    tensors = make_inputs(*shape, dtype=dtype, device="cuda", D="head", z=with_gate, dt_bias=True, dt_softplus=True,
                          initial_state=True)
    options = dict(chunk_size=chunk, dt_softplus=True, seq_idx=seq_idx)
    output_grad = torch.randn(batch, length, heads, head_dim, device="cuda")
    state_grad = torch.randn(batch, heads, head_dim, state_dim, device="cuda")
    y, final, grads = run_with_grads(ssd_scan, tensors, options, output_grad, state_grad)
    y_ref, final_ref, grads_ref = run_with_grads(reference.ssd_scan, tensors, options, output_grad, state_grad)
    assert_close_gpu(y, y_ref, dtype, "y")
    assert_close_gpu(final, final_ref, dtype, "final state")
    for name in tensors:
        assert_close_gpu(grads[name], grads_ref[name], dtype, f"d{name}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_model_shape(dtype):
    shape = (2, 2048, 32, 1, 64, 128)
    seq_idx = torch.zeros(2, 2048, dtype=torch.int32, device="cuda")
    seq_idx[1, 700:], seq_idx[1, 1024:], seq_idx[1, 1500:] = 1, 2, 3
    compare_on_gpu(shape, dtype, 256, seq_idx)


@pytest.mark.gpu
def test_gpu_grouped_heads_bf16():
    compare_on_gpu((2, 1000, 8, 2, 64, 64), torch.bfloat16, 128)


@pytest.mark.gpu
def test_gpu_benchmark_shape_bf16():
    compare_on_gpu((1, 10240, 64, 1, 64, 128), torch.bfloat16, 256, with_gate=False)
