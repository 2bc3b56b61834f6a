"""Mamba-1's training step without keeping the conv output u or the step sizes Δ for the backward.

Autograd would keep both alive through the backward pass: u is saved by x_proj and by the scan, Δ by the
scan. They are 2 · d_inner values per token in the model dtype — at the mamba-1.4b shape and B4 × L2048,
134 MB a layer and 6.4 GB over the 48 layers. Here the forward computes conv, x_proj and dt_proj without
autograd, runs the Triton scan keeping only its own residuals (checkpoint states, B and C) and drops u and
Δ; the backward recomputes conv, x_proj and dt_proj with autograd (a few percent of a layer's time), takes
the scan's gradients for u, Δ, B and C and pushes them back through the recomputed graph to the conv input
and the parameters. The same trade as mamba_ssm's ``mamba_inner_fn`` (checkpoint_lvl=1).

It applies to training-time forwards on the Triton scan without a padding mask or a carried state (those
keep the plain autograd path), and works with adapters: whatever ``Mamba1Mixer.conv_and_projections``
calls (LoRA layers included) is recomputed, and every trainable parameter of the recomputed modules gets
its gradient.
"""
from __future__ import annotations

import importlib

import torch

from mambakit import ops


def _triton_scan():
    """The Triton scan's module (imported on first use: Triton may be absent where this path never runs)."""
    return importlib.import_module("mambakit.ops.kernels.selective_scan")


def applies(mixer, x: torch.Tensor, state, mask) -> bool:
    """Whether ``Mamba1Mixer.forward`` takes the recomputing path for input x (b, d, l)."""
    return (mixer.recompute_in_backward and torch.is_grad_enabled() and state is None and mask is None
            and ops.selective_scan.choose(x.device)[0] == "triton" and _triton_scan().CONFIG["variant"] == "segmented")


def scan_recomputing_inputs(mixer, x, z, A, D, seq_idx):
    """y (b, d, l) = the mixer's selective scan over conv(x), with Δ, B and C projected from it.

    x, z: (b, d, l) (the in_proj halves); A: (d, n) fp32; D: (d,) fp32; seq_idx: (b, l) int32 or None.
    """
    parameters = [p for module in mixer.recomputed_modules() for p in module.parameters()]
    return _RecomputedInputsScan.apply(mixer, x, z, A, D, seq_idx, *parameters)


class _RecomputedInputsScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mixer, x, z, A, D, seq_idx, *parameters):
        with torch.no_grad():
            u, delta, B, C = mixer.conv_and_projections(x, None, seq_idx)
        y, (residuals, ctx.geometry) = _triton_scan().forward_keeping_no_inputs(u, delta, A, B, C, D, z, seq_idx,
                                                                             delta_softplus=True)
        ctx.mixer, ctx.parameters = mixer, parameters
        ctx.dtypes = (A.dtype, D.dtype)
        device_type = x.device.type  # the backward recomputes under the forward's autocast (Trainer's bf16)
        ctx.autocast = dict(device_type=device_type, enabled=torch.is_autocast_enabled(device_type),
                            dtype=torch.get_autocast_dtype(device_type))
        ctx.save_for_backward(x, seq_idx, *residuals)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, seq_idx, *residuals = ctx.saved_tensors
        with torch.enable_grad(), torch.autocast(**ctx.autocast):
            x_leaf = x.detach().requires_grad_(ctx.needs_input_grad[1])
            u, delta, B, C = ctx.mixer.conv_and_projections(x_leaf, None, seq_idx)
        du, ddelta, dz, dA, dB, dC, dD = _triton_scan().backward_with_inputs(
            residuals, ctx.geometry, u.detach(), delta.detach(), dy, delta_softplus=True)

        leaves = (x_leaf, *ctx.parameters)
        # the forward's inputs: mixer, x, z, A, D, seq_idx, *parameters
        needed = (ctx.needs_input_grad[1], *ctx.needs_input_grad[6:])
        wanted = [index for index, need in enumerate(needed) if need]
        pairs = [(out, grad) for out, grad in ((u, du), (delta, ddelta), (B, dB.squeeze(1).to(B.dtype)),
                                               (C, dC.squeeze(1).to(C.dtype))) if out.requires_grad]
        leaf_grads = [None] * len(leaves)
        if wanted and pairs:
            grads = torch.autograd.grad([out for out, _ in pairs], [leaves[index] for index in wanted],
                                        [grad for _, grad in pairs], allow_unused=True)
            for index, grad in zip(wanted, grads):
                leaf_grads[index] = grad
        A_dtype, D_dtype = ctx.dtypes
        return (None, leaf_grads[0], dz, dA.to(A_dtype), dD.to(D_dtype), None, *leaf_grads[1:])
