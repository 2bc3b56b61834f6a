"""Triton single-token selective state update against the plain-PyTorch reference, both layouts."""
import pytest
import torch
import torch.nn.functional as F

from mambakit import ops
from mambakit.ops import reference
from mambakit.ops.kernels.state_update import selective_state_update

FP32_TOL = dict(rtol=6e-4, atol=2e-3)
BF16_TOL = dict(rtol=3e-2, atol=5e-2)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def mamba1_inputs(batch=3, channels=6, state=5, groups=None, dtype=torch.float32, state_dtype=torch.float32,
                  skip=True, gate=True, bias=True, device=DEVICE):
    projection_shape = (batch, state) if groups is None else (batch, groups, state)
    return dict(
        state=torch.randn(batch, channels, state, device=device).to(state_dtype),
        x=torch.randn(batch, channels, device=device).to(dtype),
        dt=F.softplus(torch.randn(batch, channels, device=device)).to(dtype),
        A=-torch.exp(torch.randn(channels, state, device=device)),
        B=torch.randn(projection_shape, device=device).to(dtype),
        C=torch.randn(projection_shape, device=device).to(dtype),
        D=torch.randn(channels, device=device) if skip else None,
        z=torch.randn(batch, channels, device=device).to(dtype) if gate else None,
        dt_bias=0.3 * torch.randn(channels, device=device) if bias else None,
    )


def mamba2_inputs(batch=2, heads=4, head_dim=3, state=8, groups=2, dtype=torch.float32, device=DEVICE):
    A_per_head = -torch.exp(torch.randn(heads, device=device))
    return dict(
        state=torch.randn(batch, heads, head_dim, state, device=device),
        x=torch.randn(batch, heads, head_dim, device=device).to(dtype),
        dt=F.softplus(torch.randn(batch, heads, device=device))[..., None].expand(batch, heads, head_dim).to(dtype),
        A=A_per_head[:, None, None].expand(heads, head_dim, state),  # Mamba-2: one decay per head
        B=torch.randn(batch, groups, state, device=device).to(dtype),
        C=torch.randn(batch, groups, state, device=device).to(dtype),
        D=torch.randn(heads, device=device)[:, None].expand(heads, head_dim),
        z=torch.randn(batch, heads, head_dim, device=device).to(dtype),
        dt_bias=0.3 * torch.randn(heads, device=device)[:, None].expand(heads, head_dim),
    )


def check_against_reference(inputs, tol, dt_softplus=True):
    state_for_kernel = inputs["state"].clone()
    state_for_reference = inputs["state"].clone()
    others = {k: v for k, v in inputs.items() if k != "state"}
    y = selective_state_update(state_for_kernel, **others, dt_softplus=dt_softplus)
    want = reference.selective_state_update(state_for_reference, **others, dt_softplus=dt_softplus)
    assert y.dtype == want.dtype and y.shape == want.shape
    torch.testing.assert_close(y.float(), want.float(), **tol)
    torch.testing.assert_close(state_for_kernel.float(), state_for_reference.float(), **tol)


def test_kernel_is_registered():
    assert ops.selective_state_update.kernel() is selective_state_update


@pytest.mark.parametrize("groups", [None, 1, 2])
def test_mamba1_layout(groups):
    check_against_reference(mamba1_inputs(groups=groups), FP32_TOL)


def test_mamba1_without_optional_inputs():
    check_against_reference(mamba1_inputs(skip=False, gate=False, bias=False), FP32_TOL, dt_softplus=False)


def test_mamba1_bf16_inputs_and_state():
    check_against_reference(mamba1_inputs(dtype=torch.bfloat16, state_dtype=torch.bfloat16), BF16_TOL)


def test_mamba2_layout_with_groups_and_broadcast_parameters():
    check_against_reference(mamba2_inputs(), FP32_TOL)


def test_mamba2_bf16():
    check_against_reference(mamba2_inputs(dtype=torch.bfloat16, state=16, head_dim=4), BF16_TOL)


def test_state_slice_updated_in_place():
    """A state cache slot (a non-contiguous view) is updated where it lives; other slots are untouched."""
    inputs = mamba1_inputs(batch=2)
    cache = torch.randn(4, *inputs["state"].shape[1:], device=DEVICE)
    untouched = cache[1::2].clone()
    state_view = cache[::2]
    want_state = state_view.clone()
    others = {k: v for k, v in inputs.items() if k != "state"}
    y = selective_state_update(state_view, **others, dt_softplus=True)
    want_y = reference.selective_state_update(want_state, **others, dt_softplus=True)
    torch.testing.assert_close(y, want_y, **FP32_TOL)
    torch.testing.assert_close(cache[::2], want_state, **FP32_TOL)
    torch.testing.assert_close(cache[1::2], untouched)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 64])
def test_mamba_1_4b_layer_on_gpu(batch):
    check_against_reference(mamba1_inputs(batch=batch, channels=4096, state=16, dtype=torch.bfloat16,
                                          device="cuda"), BF16_TOL)


@pytest.mark.gpu
def test_cuda_graph_capture():
    inputs = mamba1_inputs(batch=8, channels=4096, state=16, device="cuda")
    state = inputs.pop("state")
    want_state = state.clone()
    want_y = reference.selective_state_update(want_state, **inputs, dt_softplus=True)
    graph_state = state.clone()
    selective_state_update(graph_state.clone(), **inputs, dt_softplus=True)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = selective_state_update(graph_state, **inputs, dt_softplus=True)
    graph.replay()
    torch.testing.assert_close(y, want_y, **FP32_TOL)
    torch.testing.assert_close(graph_state, want_state, **FP32_TOL)


@pytest.mark.parametrize("make_inputs", [mamba1_inputs, mamba2_inputs])
def test_decay_rate_given_as_its_log(make_inputs):
    """A_is_log=True with A_log gives the step of A = -exp(A_log), in the kernel and the reference."""
    inputs = make_inputs()
    A_log = torch.log(-inputs["A"])
    others = {k: v for k, v in inputs.items() if k not in ("state", "A")}
    want_state = inputs["state"].clone()
    want = reference.selective_state_update(want_state, A=inputs["A"], **others, dt_softplus=True)
    for implementation in (selective_state_update, reference.selective_state_update):
        state = inputs["state"].clone()
        y = implementation(state, A=A_log, **others, dt_softplus=True, A_is_log=True)
        torch.testing.assert_close(y, want, **FP32_TOL)
        torch.testing.assert_close(state, want_state, **FP32_TOL)
