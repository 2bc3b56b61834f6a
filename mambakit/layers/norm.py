"""RMSNorm modules over the ``rms_norm`` / ``gated_rms_norm`` ops, and the fp32-parameter rule."""
from __future__ import annotations

import torch
from torch import nn

from mambakit import ops


class RMSNorm(nn.Module):
    """weight * x / rms(x) over the last axis; ``forward(x, residual)`` also adds the residual first.

    x, residual: (..., d). Returns (y in the weight's dtype, residual_out in fp32 when ``residual_in_fp32``).
    """

    def __init__(self, dim: int, eps: float = 1e-5, residual_in_fp32: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return ops.rms_norm(x, self.weight, self.eps, residual=residual, residual_in_fp32=self.residual_in_fp32)


class GatedRMSNorm(nn.Module):
    """Mamba-2's output norm: weight * rmsnorm_per_group(y * silu(z)); y, z: (..., d) -> (..., d)."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return ops.gated_rms_norm(y, z, self.weight, self.eps, group_size=self.group_size)


class KeepsFp32Params(nn.Module):
    """Mixin for mixers: parameters named in ``fp32_params`` stay fp32 whatever ``.to(dtype)`` asks.

    A_log, D and dt_bias set the recurrence's decay and step size; rounding them to bf16 changes the
    model (the reference implementation keeps them fp32 too).
    """

    fp32_params: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name in self.fp32_params:
            param = getattr(self, name)
            if param.dtype != torch.float32:
                param.data = param.data.float()
        return self
