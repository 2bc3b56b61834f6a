"""Triton causal conv1d (training and decode update) against the reference: outputs and all gradients."""
import pytest
import torch

from mambakit.ops import reference
from mambakit.ops.kernels import causal_conv1d as conv_kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCES = {torch.float32: dict(rtol=6e-4, atol=2e-3), torch.bfloat16: dict(rtol=3e-2, atol=5e-2),
              torch.float16: dict(rtol=5e-3, atol=1e-2)}


@pytest.fixture(autouse=True)
def _small_launches(monkeypatch):
    """Programs of 16 bytes of channels (4 fp32, 8 bf16) and a few positions, loading 3 rows per step (so that
    taps and sequence boundaries cross channel-block, chunk and step edges at test shapes)."""
    if DEVICE == "cpu":
        for config in (conv_kernels.FORWARD_CONFIG, conv_kernels.BACKWARD_CONFIG):
            monkeypatch.setitem(config, "row_bytes", 16)
            monkeypatch.setitem(config, "rows_per_step", 3)
            monkeypatch.setitem(config, "target_programs", 8)


def _make_inputs(batch, channels, length, width, dtype, bias=True, initial_state=False, channels_last=False):
    if channels_last:  # the model's layout: a transposed view of a (b, l, d) projection output
        x = torch.randn(batch, length, channels, device=DEVICE, dtype=dtype).transpose(1, 2)
    else:
        x = torch.randn(batch, channels, length, device=DEVICE, dtype=dtype)
    return dict(
        x=x,
        weight=torch.randn(channels, width, device=DEVICE, dtype=dtype) * 0.5,
        bias=torch.randn(channels, device=DEVICE, dtype=dtype) if bias else None,
        initial_state=torch.randn(batch, channels, width - 1, device=DEVICE, dtype=dtype) if initial_state else None,
    )


def _outputs_and_grads(fn, tensors, upstream, **kwargs):
    """Outputs of fn and the gradients of sum(output * upstream) with respect to every tensor input."""
    leaves = {name: None if t is None else t.detach().clone().requires_grad_() for name, t in tensors.items()}
    outputs = fn(**leaves, **kwargs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    sum(((out.float() * up).sum() for out, up in zip(outputs, upstream))).backward()
    return outputs, {name: t.grad for name, t in leaves.items() if t is not None}


def _assert_matches(tensors, dtype, **kwargs):
    x = tensors["x"]
    upstream = [torch.randn(x.shape, device=DEVICE)]
    if kwargs.get("return_final_state"):
        upstream.append(torch.randn(x.shape[0], x.shape[1], tensors["weight"].shape[-1] - 1, device=DEVICE))
    expected, expected_grads = _outputs_and_grads(reference.causal_conv1d, tensors, upstream, **kwargs)
    actual, actual_grads = _outputs_and_grads(conv_kernels.causal_conv1d, tensors, upstream, **kwargs)
    for out, ref in zip(actual, expected):
        assert out.dtype == ref.dtype and out.shape == ref.shape
        torch.testing.assert_close(out, ref, **TOLERANCES[dtype])
    for name, ref in expected_grads.items():
        assert actual_grads[name].dtype == ref.dtype, name
        torch.testing.assert_close(actual_grads[name], ref, **TOLERANCES[dtype], msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_matches_reference(width, activation, bias):
    tensors = _make_inputs(2, 6, 11, width, torch.float32, bias=bias)
    _assert_matches(tensors, torch.float32, activation=activation)


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_initial_and_final_state(width, channels_last):
    tensors = _make_inputs(2, 5, 9, width, torch.float32, initial_state=True, channels_last=channels_last)
    _assert_matches(tensors, torch.float32, activation="silu", return_final_state=True)


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_conv_packed_sequences(width, dtype):
    """seq_idx boundaries at 2, 3 (closer than k-1) and 8; the initial state must reach only sequence 0."""
    tensors = _make_inputs(2, 6, 11, width, dtype, initial_state=True, channels_last=True)
    seq_idx = torch.tensor([[0, 0, 1, 2, 2, 2, 2, 2, 3, 3, 3], [0] * 4 + [1] * 7], device=DEVICE, dtype=torch.int32)
    _assert_matches(tensors, dtype, activation="silu", seq_idx=seq_idx, return_final_state=True)


@pytest.mark.parametrize("rows_per_step,target_programs", [(1, 64), (4, 1), (2, 1000)])
def test_conv_launch_shapes(monkeypatch, rows_per_step, target_programs):
    """Chunks of one position, one chunk for the whole sequence, and more programs asked for than positions."""
    for config in (conv_kernels.FORWARD_CONFIG, conv_kernels.BACKWARD_CONFIG):
        monkeypatch.setitem(config, "rows_per_step", rows_per_step)
        monkeypatch.setitem(config, "target_programs", target_programs)
    tensors = _make_inputs(2, 6, 11, 4, torch.float32, initial_state=True, channels_last=True)
    seq_idx = torch.tensor([[0, 0, 1, 2, 2, 2, 2, 2, 3, 3, 3], [0] * 4 + [1] * 7], device=DEVICE, dtype=torch.int32)
    _assert_matches(tensors, torch.float32, activation="silu", seq_idx=seq_idx, return_final_state=True)


def test_conv_final_state_of_sequence_shorter_than_window():
    """l < k-1: the final state mixes initial-state entries with x; a boundary zeroes the older ones."""
    tensors = _make_inputs(2, 4, 2, 4, torch.float32, initial_state=True)
    seq_idx = torch.tensor([[0, 1], [5, 5]], device=DEVICE, dtype=torch.int32)
    _assert_matches(tensors, torch.float32, activation="silu", seq_idx=seq_idx, return_final_state=True)


@pytest.mark.parametrize("used_output", [0, 1])
def test_conv_gradient_through_one_output(used_output):
    """With return_final_state, a loss on y alone or on the final state alone (the other gets no grad)."""
    tensors = _make_inputs(2, 5, 7, 3, torch.float32, initial_state=True)
    grads = []
    for fn in (reference.causal_conv1d, conv_kernels.causal_conv1d):
        leaves = {name: t.detach().clone().requires_grad_() for name, t in tensors.items()}
        fn(**leaves, activation="silu", return_final_state=True)[used_output].pow(2).sum().backward()
        grads.append({name: torch.zeros_like(t) if t.grad is None else t.grad for name, t in leaves.items()})
    for name, ref in grads[0].items():
        torch.testing.assert_close(grads[1][name], ref, **TOLERANCES[torch.float32], msg=lambda m: f"{name}: {m}")


def test_conv_non_dense_channel_slice_bf16():
    """x is a channel slice of a wider (b, l, d) buffer: neither contiguous nor dense."""
    wide = torch.randn(2, 10, 16, device=DEVICE, dtype=torch.bfloat16).transpose(1, 2)
    tensors = _make_inputs(2, 7, 10, 4, torch.bfloat16)
    tensors["x"] = wide[:, 3:10]
    _assert_matches(tensors, torch.bfloat16, activation="silu")


@pytest.mark.parametrize("width,state_len", [(2, 1), (3, 2), (4, 3), (4, 6)])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_conv_update_matches_reference(width, state_len, activation):
    batch, channels = 3, 6
    x = torch.randn(batch, channels, device=DEVICE)
    state = torch.randn(batch, channels, state_len, device=DEVICE)
    weight, bias = torch.randn(channels, width, device=DEVICE), torch.randn(channels, device=DEVICE)
    expected_state, actual_state = state.clone(), state.clone()
    expected = reference.causal_conv1d_update(x, expected_state, weight, bias, activation)
    actual = conv_kernels.causal_conv1d_update(x, actual_state, weight, bias, activation)
    torch.testing.assert_close(actual, expected, **TOLERANCES[torch.float32])
    torch.testing.assert_close(actual_state, expected_state, rtol=0, atol=0)


def test_conv_update_several_channel_blocks(monkeypatch):
    """Channels split over programs of 32 (the last one partly masked), fp16, no bias."""
    monkeypatch.setitem(conv_kernels.UPDATE_CONFIG, "block_d", 32)
    x = torch.randn(2, 70, device=DEVICE, dtype=torch.float16)
    state = torch.randn(2, 70, 3, device=DEVICE, dtype=torch.float16)
    weight = torch.randn(70, 4, device=DEVICE, dtype=torch.float16)
    expected_state, actual_state = state.clone(), state.clone()
    expected = reference.causal_conv1d_update(x, expected_state, weight, None, "silu")
    actual = conv_kernels.causal_conv1d_update(x, actual_state, weight, None, "silu")
    torch.testing.assert_close(actual, expected, **TOLERANCES[torch.float16])
    torch.testing.assert_close(actual_state, expected_state, rtol=0, atol=0)


def test_conv_update_bf16_strided_state_matches_prefill():
    """Decoding step by step through a strided bf16 cache equals the full conv over the sequence."""
    batch, channels, length, width = 2, 5, 6, 4
    tensors = _make_inputs(batch, channels, length, width, torch.bfloat16)
    cache = torch.zeros(batch, 2 * channels, width - 1, device=DEVICE, dtype=torch.bfloat16)[:, ::2]
    steps = [conv_kernels.causal_conv1d_update(tensors["x"][..., t], cache, tensors["weight"], tensors["bias"], "silu")
             for t in range(length)]
    expected, final = reference.causal_conv1d(**tensors, activation="silu", return_final_state=True)
    torch.testing.assert_close(torch.stack(steps, -1), expected, **TOLERANCES[torch.bfloat16])
    torch.testing.assert_close(cache, final, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_real_shape(dtype, channels_last):
    tensors = _make_inputs(2, 3072, 4096, 4, dtype, initial_state=True, channels_last=channels_last)
    seq_idx = (torch.arange(4096, device=DEVICE) >= 1500).int().expand(2, -1).contiguous()
    _assert_matches(tensors, dtype, activation="silu", seq_idx=seq_idx, return_final_state=True)


@pytest.mark.gpu
def test_conv_update_real_shape_under_cuda_graph():
    batch, channels, width = 64, 4096, 4
    x = torch.randn(batch, channels, device=DEVICE, dtype=torch.bfloat16)
    state = torch.randn(batch, channels, width - 1, device=DEVICE, dtype=torch.bfloat16)
    weight, bias = torch.randn(channels, width, device=DEVICE), torch.randn(channels, device=DEVICE)
    expected_state = state.clone()
    expected = reference.causal_conv1d_update(x, expected_state, weight, bias, "silu")
    conv_kernels.causal_conv1d_update(x, state.clone(), weight, bias, "silu")  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        actual = conv_kernels.causal_conv1d_update(x, state, weight, bias, "silu")
    graph.replay()
    torch.testing.assert_close(actual, expected, **TOLERANCES[torch.bfloat16])
    torch.testing.assert_close(state, expected_state, rtol=0, atol=0)
