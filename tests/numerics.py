"""Comparing low-precision results at real shapes.

Elementwise tolerances do not fit gradients that sum thousands of bf16-rounded terms (a weight or bias
gradient): their error grows with the number of terms and near-zero sums have no meaningful relative
error. There the norm of the error relative to the norm of the reference is the measure
(bf16 operands: between 1e-3 and 1e-2; fp32 far below 1e-3)."""
import torch

BF16_RELATIVE_ERROR = 1e-2


def assert_relative_error(actual: torch.Tensor, expected: torch.Tensor, name: str,
                          limit: float = BF16_RELATIVE_ERROR) -> None:
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    error = ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()
    assert error <= limit, f"{name}: ||actual - expected|| / ||expected|| = {error:.3g} > {limit}"
