"""Triton selective scan (forward and backward) against the plain-PyTorch reference.

Without CUDA the kernels run in Triton's CPU interpreter (see conftest.py), so shapes stay tiny. The
kernel's CONFIG is set per test (``scan_config``): "small" cuts 30-70 steps into many forward segments,
backward checkpoint intervals (run in groups of one) and sub-tiles, with channel blocks of 4 (8 lanes per
channel), dB and dC added in two partial sums, no prefetching; "defaults" is the GPU configuration;
"chunked" is the first kernel (chunks of 32 steps here).
"""
import pytest
import torch
import torch.nn.functional as F

from mambakit import ops
from mambakit.ops import reference
from mambakit.ops.kernels import selective_scan as scan_module
from mambakit.ops.kernels.selective_scan import selective_scan

FP32_TOL = dict(rtol=6e-4, atol=2e-3)
BF16_TOL = dict(rtol=3e-2, atol=5e-2)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DIFFERENTIABLE = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
CONFIGS = {
    "small": dict(min_segment=8, warps_per_sm=10**6, checkpoint=16, backward_sub=4, block_d=4, backward_block_d=4,
                  backward_scratch_mb=2**-12, backward_partials=2, prefetch=False),
    "defaults": {},
    "chunked": dict(variant="chunked"),
}


@pytest.fixture
def scan_config(request, monkeypatch):
    """Apply CONFIGS[request.param] on top of the kernel's defaults for the duration of a test."""
    for key, value in CONFIGS[request.param].items():
        monkeypatch.setitem(scan_module.CONFIG, key, value)
    return request.param


def configs(*names):
    return pytest.mark.parametrize("scan_config", names, indirect=True)


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


def model_layout(inputs, dt_rank=3):
    """The same values laid out as Mamba1Mixer passes them: delta a transposed (b, l, d) tensor, z the second
    half of a (b, l, 2d) projection, B and C slices of a (b, l, r + 2n) projection."""
    batch, channels, length = inputs["u"].shape
    state = inputs["B"].shape[-2]
    in_proj = torch.randn(batch, length, 2 * channels, device=DEVICE, dtype=inputs["z"].dtype)
    in_proj[..., channels:] = inputs["z"].transpose(1, 2)
    x_proj = torch.randn(batch, length, dt_rank + 2 * state, device=DEVICE, dtype=inputs["B"].dtype)
    x_proj[..., dt_rank:dt_rank + state] = inputs["B"].transpose(1, 2)
    x_proj[..., dt_rank + state:] = inputs["C"].transpose(1, 2)
    return dict(inputs, delta=inputs["delta"].transpose(1, 2).contiguous().transpose(1, 2),
                z=in_proj[..., channels:].transpose(1, 2), B=x_proj[..., dt_rank:dt_rank + state].transpose(1, 2),
                C=x_proj[..., dt_rank + state:].transpose(1, 2))


def leaves(inputs, requires_grad=DIFFERENTIABLE):
    return {k: (v.detach().requires_grad_(k in requires_grad) if v is not None and k != "seq_idx" else v)
            for k, v in inputs.items()}


def run(fn, inputs, output_grads, return_final_state, **flags):
    """Outputs of ``fn`` and the gradients of every input that requires grad."""
    args = leaves(inputs, flags.pop("requires_grad", DIFFERENTIABLE))
    outputs = fn(**args, return_final_state=return_final_state, **flags)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    torch.autograd.backward(outputs, output_grads[: len(outputs)])
    grads = {k: v.grad for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    return outputs, grads


def check_against_reference(inputs, tol, return_final_state=False, output_grads=None, **flags):
    batch, channels, length = inputs["u"].shape
    state = inputs["A"].shape[1]
    if output_grads is None:
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


@configs("small", "chunked")
def test_plain_recurrence(scan_config):
    inputs = make_inputs(skip=False, gate=False, bias=False)
    check_against_reference(inputs, FP32_TOL)


@configs("small", "defaults", "chunked")
@pytest.mark.parametrize("groups", [None, 2])
def test_skip_gate_bias_softplus(scan_config, groups):
    inputs = make_inputs(length=36, groups=groups)
    check_against_reference(inputs, FP32_TOL, delta_softplus=True)


@configs("small", "chunked")
def test_initial_and_final_state_with_their_gradients(scan_config):
    inputs = make_inputs(length=70, initial_state=True)
    check_against_reference(inputs, FP32_TOL, return_final_state=True, delta_softplus=True)


@configs("small", "chunked")
def test_sequence_boundaries(scan_config):
    """Resets at an odd step, at the edges of segments and chunks (16, 32), a sequence of length 1."""
    length = 45
    seq_idx = torch.zeros(2, length, dtype=torch.int32)
    seq_idx[0, 7:], seq_idx[0, 16:], seq_idx[0, 32:], seq_idx[0, 33:], seq_idx[0, 40:] = 1, 2, 3, 4, 5
    seq_idx[1, 29:] = 9
    inputs = make_inputs(channels=2, length=length, groups=2, initial_state=True, seq_idx=seq_idx)
    check_against_reference(inputs, FP32_TOL, return_final_state=True, delta_softplus=True)


@configs("small", "defaults")
def test_bf16_inputs(scan_config):
    inputs = make_inputs(length=50, dtype=torch.bfloat16, initial_state=True)
    check_against_reference(inputs, BF16_TOL, return_final_state=True, delta_softplus=True)


@configs("small", "defaults")
@pytest.mark.parametrize("channels, state, length", [(5, 5, 13), (3, 1, 3), (6, 2, 1)])
def test_ragged_shapes(scan_config, channels, state, length):
    """Channel blocks and state rows partly masked, sequences shorter than a tile."""
    inputs = make_inputs(batch=1, channels=channels, state=state, length=length, initial_state=True)
    check_against_reference(inputs, FP32_TOL, return_final_state=True, delta_softplus=True)


@configs("small")
def test_gradient_for_some_inputs_only(scan_config):
    inputs = make_inputs(length=40, groups=1)
    check_against_reference(inputs, FP32_TOL, delta_softplus=True, requires_grad=("u", "B"))


@configs("small", "defaults", "chunked")
def test_inference_final_state_over_many_segments(scan_config):
    """Without autograd no checkpoints are kept; the final state still comes out."""
    inputs = make_inputs(channels=2, state=2, length=140, initial_state=True)
    with torch.no_grad():
        y, final = selective_scan(**inputs, delta_softplus=True, return_final_state=True)
    want_y, want_final = reference.selective_scan(**inputs, delta_softplus=True, return_final_state=True)
    torch.testing.assert_close(y, want_y, **FP32_TOL)
    torch.testing.assert_close(final, want_final, **FP32_TOL)


@configs("small", "chunked")
def test_strided_inputs(scan_config):
    inputs = make_inputs(length=40)
    inputs["u"] = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)  # unit stride along d, not l
    inputs["z"] = torch.cat([inputs["z"], inputs["z"]], dim=1)[:, ::2]
    check_against_reference(inputs, FP32_TOL, delta_softplus=True)


@configs("small", "defaults")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, FP32_TOL), (torch.bfloat16, BF16_TOL)])
def test_model_layout_read_in_place(scan_config, dtype, tol):
    """delta and z with unit stride along d (and z not dense), B and C slices of a wider projection."""
    inputs = model_layout(make_inputs(length=36, channels=8, dtype=dtype, initial_state=True))
    check_against_reference(inputs, tol, return_final_state=True, delta_softplus=True)


@configs("small")
def test_broadcast_output_gradient(scan_config):
    """y.sum() sends a gradient with zero strides, read as it is."""
    inputs = make_inputs(length=30)
    batch, channels, length = inputs["u"].shape
    output_grads = (torch.ones(1, 1, 1, device=DEVICE).expand(batch, channels, length),)
    check_against_reference(inputs, FP32_TOL, output_grads=output_grads, delta_softplus=True)


def test_unknown_variant_is_refused(monkeypatch):
    monkeypatch.setitem(scan_module.CONFIG, "variant", "fast")
    with pytest.raises(ValueError, match="variant"):
        selective_scan(**make_inputs(length=4))


@pytest.mark.gpu
@pytest.mark.parametrize("batch, channels, length, dtype, tol", [
    (2, 1536, 2048, torch.float32, dict(rtol=2e-3, atol=5e-3)),
    (1, 4096, 10240, torch.bfloat16, BF16_TOL),
])
def test_real_shapes_on_gpu(batch, channels, length, dtype, tol, monkeypatch):
    """The segmented kernel with the inputs laid out as the model passes them and contiguous, and the chunked
    kernel, against one reference run."""
    inputs = make_inputs(batch, channels, 16, length, dtype=dtype, device="cuda", initial_state=True)
    inputs["B"], inputs["C"] = inputs["B"] / 4, inputs["C"] / 4  # keep y ~ 1 over 16 states
    batch, channels, length = inputs["u"].shape
    output_grads = (torch.randn_like(inputs["u"]), torch.randn(batch, channels, 16, device="cuda"))
    want, want_grads = run(reference.selective_scan, inputs, output_grads, True, delta_softplus=True)
    for variant, layout in [("segmented", model_layout), ("segmented", dict), ("chunked", dict)]:
        monkeypatch.setitem(scan_module.CONFIG, "variant", variant)
        got, got_grads = run(selective_scan, layout(inputs), output_grads, True, delta_softplus=True)
        for g, w in zip(got, want):
            torch.testing.assert_close(g.float(), w.float(), **tol, msg=lambda m: f"{variant}: {m}")
        for name, w in want_grads.items():  # sums over l (and d for dB, dC): compare relative to their size
            g = got_grads[name].float()
            scale = w.float().abs().amax().clamp(min=1.0)
            torch.testing.assert_close(g / scale, w.float() / scale, **tol, msg=lambda m: f"{variant} d{name}: {m}")
