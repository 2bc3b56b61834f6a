"""One public function per op, each dispatching to a backend.

Backends: ``reference`` (plain PyTorch in ``reference.py``: any device, autograd, the test oracle) and
``triton`` (kernels in ``kernels/``, one file per op, same signature and results). The choice per call:

- ``MAMBAKIT_BACKEND=reference`` forces the reference everywhere;
- ``MAMBAKIT_BACKEND=triton`` forces the kernels (with ``TRITON_INTERPRET=1`` they run on CPU tensors);
- otherwise (``auto``) the kernel runs on CUDA tensors when Triton imports, and the reference elsewhere.

``describe_backends(device)`` says which backend each op takes there and why (used by ``mambakit doctor``).
"""
from __future__ import annotations

import importlib
import os

import torch

from mambakit.ops import reference

BACKEND_ENV = "MAMBAKIT_BACKEND"
_BACKENDS = ("auto", "reference", "triton")


class Op:
    """A named op: its reference function and, if it loads, its Triton kernel ``kernels/<module>.<name>``."""

    def __init__(self, name: str, kernel_module: str):
        self.name = name
        self.reference = getattr(reference, name)
        self._kernel_module = kernel_module
        self._kernel = None
        self._kernel_error: str | None = None
        self.__doc__ = self.reference.__doc__
        self.__name__ = name

    def kernel(self):
        """The Triton implementation, or None (with the reason kept in ``kernel_error``)."""
        if self._kernel is None and self._kernel_error is None:
            try:
                module = importlib.import_module(f"mambakit.ops.kernels.{self._kernel_module}")
                self._kernel = getattr(module, self.name)
            except (ImportError, AttributeError) as exc:
                self._kernel_error = f"{type(exc).__name__}: {exc}"
        return self._kernel

    @property
    def kernel_error(self) -> str | None:
        self.kernel()
        return self._kernel_error

    def choose(self, device: torch.device) -> tuple[str, str]:
        """(backend, reason) for a call on ``device``."""
        wanted = requested_backend()
        if wanted == "reference":
            return "reference", f"{BACKEND_ENV}=reference"
        if self.kernel() is None:
            if wanted == "triton":
                raise RuntimeError(
                    f"{BACKEND_ENV}=triton but the Triton kernel for {self.name} cannot load "
                    f"({self._kernel_error}); install triton or unset {BACKEND_ENV}."
                )
            return "reference", f"no Triton kernel ({self._kernel_error})"
        if wanted == "triton":
            return "triton", f"{BACKEND_ENV}=triton"
        if device.type == "cuda":
            return "triton", "CUDA tensor and Triton available"
        return "reference", f"{device.type} tensor (kernels run on CUDA; set {BACKEND_ENV}=triton TRITON_INTERPRET=1 to force)"

    def __call__(self, first: torch.Tensor, *args, **kwargs):
        backend, _ = self.choose(first.device)
        impl = self._kernel if backend == "triton" else self.reference
        return impl(first, *args, **kwargs)


def requested_backend() -> str:
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in _BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={value!r} is not a backend; use one of {', '.join(_BACKENDS)}")
    return value


selective_scan = Op("selective_scan", "selective_scan")
causal_conv1d = Op("causal_conv1d", "causal_conv1d")
causal_conv1d_update = Op("causal_conv1d_update", "causal_conv1d")
selective_state_update = Op("selective_state_update", "state_update")
ssd_scan = Op("ssd_scan", "ssd")
rms_norm = Op("rms_norm", "rms_norm")
gated_rms_norm = Op("gated_rms_norm", "rms_norm")
linear_cross_entropy = Op("linear_cross_entropy", "linear_cross_entropy")
linear = Op("linear", "gemv")
# fused single-token decode ops (a layer's step in 3-4 kernels)
norm_linear = Op("norm_linear", "decode_fused")
gated_norm_linear = Op("gated_norm_linear", "decode_fused")
mamba1_conv_xproj = Op("mamba1_conv_xproj", "decode_fused")
mamba1_ssm_step = Op("mamba1_ssm_step", "decode_fused_ssm")
mamba2_conv_ssm_step = Op("mamba2_conv_ssm_step", "decode_fused_ssm")

ALL_OPS = (
    selective_scan, causal_conv1d, causal_conv1d_update, selective_state_update,
    ssd_scan, rms_norm, gated_rms_norm, linear_cross_entropy, linear,
    norm_linear, gated_norm_linear, mamba1_conv_xproj, mamba1_ssm_step, mamba2_conv_ssm_step,
)


def describe_backends(device: torch.device | str) -> list[tuple[str, str, str]]:
    """[(op name, backend, reason)] for calls on ``device``."""
    device = torch.device(device)
    return [(op.name, *op.choose(device)) for op in ALL_OPS]
