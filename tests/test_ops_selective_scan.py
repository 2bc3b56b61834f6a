"""Triton selective scan (forward and backward) against the plain-PyTorch reference.

Without CUDA the kernels run in Triton's CPU interpreter (see conftest.py), so shapes stay tiny; short
sequences use chunks of 32 steps, so lengths of 45-100 cover several chunks and a ragged last one.
"""
import pytest
import torch
import torch.nn.functional as F

from mambakit import ops
from mambakit.ops import reference
from mambakit.ops.kernels.selective_scan import selective_scan

FP32_TOL = dict(rtol=6e-4, atol=2e-3)
BF16_TOL = dict(rtol=3e-2, atol=5e-2)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DIFFERENTIABLE = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def make_inputs(batch=2, channels=4, state=3, length=45, groups=None, dtype=torch.float32, device=DEVICE,
                skip=True, gate=True, bias=True, initial_state=False, seq_idx=None):
    """Random inputs as Mamba-1 draws them: A = -exp(randn), delta = softplus(randn) > 0."""
    projection_shape = (batch, state, length) if groups is None else (batch, groups, state, length)
    inputs = dict(
        u=torch.randn(batch, channels, length, device=device, dtype=dtype),
        delta=F.softplus(0.5 * torch.randn(batch, channels, length, device=device) - 1.0).to(dtype),
        A=-torch.exp(torch.randn(channels, state, device=device)),
        B=torch.randn(projection_shape, device=device).to(dtype),
        C=torch.randn(projection_shape, device=device).to(dtype),
        D=torch.randn(channels, device=device) if skip else None,
        z=torch.randn(batch, channels, length, device=device, dtype=dtype) if gate else None,
        delta_bias=0.3 * torch.randn(channels, device=device) if bias else None,
        initial_state=torch.randn(batch, channels, state, device=device) if initial_state else None,
        seq_idx=None if seq_idx is None else seq_idx.to(device),
    )
    return inputs


def leaves(inputs, requires_grad=DIFFERENTIABLE):
    return {k: (v.detach().clone().requires_grad_(k in requires_grad) if v is not None and k != "seq_idx" else v)
            for k, v in inputs.items()}


def run(fn, inputs, output_grads, return_final_state, **flags):
    """Outputs of ``fn`` and the gradients of every input that requires grad."""
    args = leaves(inputs, flags.pop("requires_grad", DIFFERENTIABLE))
    outputs = fn(**args, return_final_state=return_final_state, **flags)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    torch.autograd.backward(outputs, output_grads[: len(outputs)])
    grads = {k: v.grad for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    return outputs, grads


def check_against_reference(inputs, tol, return_final_state=False, **flags):
    batch, channels, length = inputs["u"].shape
    state = inputs["A"].shape[1]
    output_grads = (torch.randn(batch, channels, length, device=inputs["u"].device).to(inputs["u"].dtype),
                    torch.randn(batch, channels, state, device=inputs["u"].device))
    got, got_grads = run(selective_scan, inputs, output_grads, return_final_state, **flags)
    want, want_grads = run(reference.selective_scan, inputs, output_grads, return_final_state, **flags)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g.float(), w.float(), **tol)
    assert got_grads.keys() == want_grads.keys()
    for name in want_grads:
        g, w = got_grads[name], want_grads[name]
        assert g.dtype == w.dtype and g.shape == w.shape, name
        torch.testing.assert_close(g.float(), w.float(), **tol, msg=lambda m: f"d{name}: {m}")


def test_kernel_is_registered():
    assert ops.selective_scan.kernel() is selective_scan


def test_plain_recurrence():
    inputs = make_inputs(skip=False, gate=False, bias=False)
    check_against_reference(inputs, FP32_TOL)


@pytest.mark.parametrize("groups", [None, 1, 2])
def test_skip_gate_bias_softplus(groups):
    inputs = make_inputs(groups=groups)
    check_against_reference(inputs, FP32_TOL, delta_softplus=True)


def test_initial_and_final_state_with_their_gradients():
    inputs = make_inputs(length=70, initial_state=True)
    check_against_reference(inputs, FP32_TOL, return_final_state=True, delta_softplus=True)


def test_sequence_boundaries():
    length = 100
    seq_idx = torch.zeros(2, length, dtype=torch.int32)
    seq_idx[0, 7:], seq_idx[0, 32:], seq_idx[0, 33:], seq_idx[0, 71:] = 1, 2, 3, 4  # odd, chunk edge, length 1
    seq_idx[1, 45:] = 9
    inputs = make_inputs(channels=2, length=length, groups=2, initial_state=True, seq_idx=seq_idx)
    check_against_reference(inputs, FP32_TOL, return_final_state=True, delta_softplus=True)


def test_bf16_inputs():
    inputs = make_inputs(length=50, dtype=torch.bfloat16, initial_state=True)
    check_against_reference(inputs, BF16_TOL, return_final_state=True, delta_softplus=True)


def test_gradient_for_some_inputs_only():
    inputs = make_inputs(length=40, groups=1)
    check_against_reference(inputs, FP32_TOL, delta_softplus=True, requires_grad=("u", "B"))


def test_inference_final_state_over_many_chunks():
    """Without autograd the forward keeps two state slots instead of one per chunk."""
    inputs = make_inputs(channels=2, state=2, length=140, initial_state=True)
    with torch.no_grad():
        y, final = selective_scan(**inputs, delta_softplus=True, return_final_state=True)
    want_y, want_final = reference.selective_scan(**inputs, delta_softplus=True, return_final_state=True)
    torch.testing.assert_close(y, want_y, **FP32_TOL)
    torch.testing.assert_close(final, want_final, **FP32_TOL)


def test_strided_inputs():
    inputs = make_inputs(length=40)
    inputs["u"] = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)  # unit stride along d, not l
    inputs["z"] = torch.cat([inputs["z"], inputs["z"]], dim=1)[:, ::2]
    check_against_reference(inputs, FP32_TOL, delta_softplus=True)


@pytest.mark.gpu
@pytest.mark.parametrize("batch, channels, length, dtype, tol", [
    (2, 1536, 2048, torch.float32, dict(rtol=2e-3, atol=5e-3)),
    (1, 4096, 10240, torch.bfloat16, BF16_TOL),
])
def test_real_shapes_on_gpu(batch, channels, length, dtype, tol):
    inputs = make_inputs(batch, channels, 16, length, dtype=dtype, device="cuda", initial_state=True)
    inputs["B"], inputs["C"] = inputs["B"] / 4, inputs["C"] / 4  # keep y ~ 1 over 16 states
    batch, channels, length = inputs["u"].shape
    output_grads = (torch.randn_like(inputs["u"]), torch.randn(batch, channels, 16, device="cuda"))
    got, got_grads = run(selective_scan, inputs, output_grads, True, delta_softplus=True)
    want, want_grads = run(reference.selective_scan, inputs, output_grads, True, delta_softplus=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.float(), **tol)
    for name, w in want_grads.items():  # sums over l (and d for dB, dC): compare relative to their size
        g = got_grads[name].float()
        scale = w.float().abs().amax().clamp(min=1.0)
        torch.testing.assert_close(g / scale, w.float() / scale, **tol, msg=lambda m: f"d{name}: {m}")
