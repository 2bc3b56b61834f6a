"""Projections on the decode path: plain nn.Linear layers go through ``ops.linear`` (the batch-1 GEMV
kernel on CUDA); anything else — a LoRA-wrapped layer, a quantised one — is called as it is, so
adapters are never bypassed."""
from __future__ import annotations

import torch
from torch import nn

from mambakit import ops


def project(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x) for x (..., in_features) -> (..., out_features)."""
    if type(layer) is nn.Linear:
        return ops.linear(x, layer.weight, layer.bias)
    return layer(x)
