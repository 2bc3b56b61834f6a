"""Triton RMSNorm (residual add) and gated group RMSNorm against the reference: outputs and all gradients."""
import pytest
import torch
from numerics import assert_relative_error

from mambakit.ops import reference
from mambakit.ops.kernels import rms_norm as norm_kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCES = {torch.float32: dict(rtol=6e-4, atol=2e-3), torch.bfloat16: dict(rtol=3e-2, atol=5e-2)}


def _outputs_and_grads(fn, tensors, **kwargs):
    """Outputs of fn and the gradients of sum(output * random) over every output, for every tensor input."""
    leaves = {name: None if t is None else t.detach().clone().requires_grad_() for name, t in tensors.items()}
    outputs = fn(**leaves, **kwargs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    generator = torch.Generator(device=DEVICE).manual_seed(1)
    loss = sum((out.float() * torch.randn(out.shape, device=DEVICE, generator=generator)).sum() for out in outputs)
    loss.backward()
    return outputs, {name: t.grad for name, t in leaves.items() if t is not None}


def _assert_matches(fn_name, tensors, dtype, **kwargs):
    expected, expected_grads = _outputs_and_grads(getattr(reference, fn_name), tensors, **kwargs)
    actual, actual_grads = _outputs_and_grads(getattr(norm_kernels, fn_name), tensors, **kwargs)
    for out, ref in zip(actual, expected):
        assert out.dtype == ref.dtype and out.shape == ref.shape
        torch.testing.assert_close(out, ref, **TOLERANCES[dtype])
    for name, ref in expected_grads.items():
        assert actual_grads[name].dtype == ref.dtype, name
        torch.testing.assert_close(actual_grads[name], ref, **TOLERANCES[dtype], msg=lambda m: f"grad {name}: {m}")


def _randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("residual_in_fp32", [False, True])
def test_rms_norm_matches_reference(dtype, with_residual, with_weight, residual_in_fp32):
    """Rows of 40 (not a power of two) over a (3, 5) batch: more rows than backward programs."""
    tensors = dict(
        x=_randn(3, 5, 40, dtype=dtype),
        residual=_randn(3, 5, 40, dtype=torch.float32 if residual_in_fp32 else dtype) if with_residual else None,
        weight=1 + 0.1 * _randn(40, dtype=dtype) if with_weight else None,
    )
    _assert_matches("rms_norm", tensors, dtype, eps=1e-5, residual_in_fp32=residual_in_fp32)


def test_rms_norm_strided_rows_fp32_weight_bf16_input():
    """x a row-strided view; fp32 weight with bf16 x gives an fp32 y, as the reference."""
    wide = _randn(6, 64, dtype=torch.bfloat16)
    tensors = dict(x=wide[:, :48], residual=_randn(6, 48), weight=_randn(48))
    _assert_matches("rms_norm", tensors, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group_size", [None, 8, 12])
def test_gated_rms_norm_matches_reference(dtype, group_size):
    """d = 48: one group, 6 groups of 8, and 4 groups of 12 (a non-power-of-two group)."""
    tensors = dict(x=_randn(2, 5, 48, dtype=dtype), z=_randn(2, 5, 48, dtype=dtype),
                   weight=1 + 0.1 * _randn(48, dtype=dtype))
    _assert_matches("gated_rms_norm", tensors, dtype, eps=1e-5, group_size=group_size)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_real_shape(dtype):
    tensors = dict(x=_randn(8192, 2048, dtype=dtype), residual=_randn(8192, 2048), weight=_randn(2048, dtype=dtype))
    _assert_matches_at_scale("rms_norm", tensors, dtype, residual_in_fp32=True)


@pytest.mark.gpu
def test_gated_rms_norm_real_shape():
    tensors = dict(x=_randn(4096, 5120, dtype=torch.bfloat16), z=_randn(4096, 5120, dtype=torch.bfloat16),
                   weight=_randn(5120, dtype=torch.bfloat16))
    _assert_matches_at_scale("gated_rms_norm", tensors, torch.bfloat16, group_size=640)


def _assert_matches_at_scale(fn_name, tensors, dtype, **kwargs):
    """At real shapes the weight gradient sums thousands of rows: bf16 is compared with the fp32
    reference on upcast inputs by relative error norm (see numerics.py), fp32 elementwise."""
    if dtype != torch.bfloat16:
        return _assert_matches(fn_name, tensors, dtype, **kwargs)
    upcast = {name: None if t is None else t.float() for name, t in tensors.items()}
    expected, expected_grads = _outputs_and_grads(getattr(reference, fn_name), upcast, **kwargs)
    actual, actual_grads = _outputs_and_grads(getattr(norm_kernels, fn_name), tensors, **kwargs)
    for index, (out, ref) in enumerate(zip(actual, expected)):
        assert_relative_error(out, ref, f"output {index}")
    for name, ref in expected_grads.items():
        assert_relative_error(actual_grads[name], ref, f"grad {name}")
