"""The batch-1 GEMV kernel against torch's linear."""
import pytest
import torch

from mambakit.ops import reference
from mambakit.ops.kernels.gemv import linear

SHAPES = [(1, 64, 48), (1, 37, 130), (1, 300, 17), (3, 40, 24)]  # (rows, n, k); 3 rows -> cuBLAS path


@pytest.mark.parametrize("rows, n, k", SHAPES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gemv_matches_linear(rows, n, k, dtype, tol, with_bias):
    x = torch.randn(rows, k, dtype=dtype)
    weight = torch.randn(n, k, dtype=dtype) / k ** 0.5
    bias = torch.randn(n, dtype=dtype) if with_bias else None
    expected = reference.linear(x.float(), weight.float(), None if bias is None else bias.float())
    actual = linear(x, weight, bias)
    assert actual.dtype == dtype and actual.shape == (rows, n)
    torch.testing.assert_close(actual.float(), expected, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("n, k", [(8192, 2048), (2048, 4096), (160, 4096), (4096, 128), (50280, 2048)])
def test_gemv_real_shapes(n, k):
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
    torch.testing.assert_close(linear(x, weight).float(), (x.float() @ weight.float().T), rtol=2e-2, atol=2e-2)
