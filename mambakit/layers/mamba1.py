"""Mamba-1 mixer (selective SSM, S6), also Falcon-Mamba's (weightless RMSNorm on B, C and Δ).

Shapes: b batch, l length, d_model model width, d = d_inner = expand * d_model, n = d_state,
r = dt_rank, k = d_conv. Parameter names follow state-spaces/mamba, so checkpoints load as they are.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mambakit import ops
from mambakit.config import MambaConfig
from mambakit.layers import mamba1_recompute
from mambakit.layers.norm import KeepsFp32Params
from mambakit.layers.projection import project
from mambakit.state import write_final_state


class Mamba1Mixer(KeepsFp32Params):
    fp32_params = ("A_log", "D")
    # Training forwards on the Triton scan keep neither the conv output nor Δ and recompute both in the backward
    # (mamba1_recompute.py): 6.4 GB less at mamba-1.4b, B4 x L2048. False keeps them (plain autograd).
    recompute_in_backward = True

    def __init__(self, config: MambaConfig):
        super().__init__()
        d_inner, n, r = config.d_inner, config.d_state, config.dt_rank_value
        self.d_state, self.dt_rank = n, r
        self.in_proj = nn.Linear(config.d_model, 2 * d_inner, bias=config.bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, config.d_conv, groups=d_inner, padding=config.d_conv - 1,
                                bias=config.conv_bias)
        self.x_proj = nn.Linear(d_inner, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, n))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, config.d_model, bias=config.bias)
        self.bcdt_rms_eps = config.mixer_rms_eps if config.model_type == "falcon_mamba" else None

    def _project_dt_b_c(self, x: torch.Tensor):
        """x (..., d) -> Δ before softplus (..., d) (dt_proj with its bias), B (..., n), C (..., n).

        Projections go through ``project``, so adapters (LoRA) wrapped around them apply.
        """
        dt, B, C = project(self.x_proj, x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.bcdt_rms_eps is not None:
            dt, B, C = (ops.rms_norm(t, None, self.bcdt_rms_eps)[0] for t in (dt, B, C))
        return project(self.dt_proj, dt), B, C

    def conv_and_projections(self, x, conv_state=None, seq_idx=None):
        """u = silu(conv(x)) and the scan inputs projected from it: (u, Δ before softplus, B, C), (b, d, l),
        (b, d, l), (b, n, l), (b, n, l) for x (b, d, l); Δ, B and C are transposed views. With conv_state
        (b, d, k-1) the conv starts from it and leaves its final state there."""
        u = write_final_state(ops.causal_conv1d(
            x, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu", initial_state=conv_state, seq_idx=seq_idx,
            return_final_state=conv_state is not None), conv_state)
        delta, B, C = self._project_dt_b_c(u.transpose(1, 2))
        return u, delta.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)

    def recomputed_modules(self) -> tuple[nn.Module, ...]:
        """The modules ``conv_and_projections`` runs (their parameters get gradients on the recomputing path)."""
        return self.conv1d, self.x_proj, self.dt_proj

    def forward(self, hidden, state=None, mask=None, seq_idx=None):
        """hidden (b, l, d_model) -> (b, l, d_model).

        state: optional (conv_state (b, d, k-1), ssm_state (b, d, n) fp32): the start state, overwritten
        with the final state. mask: optional (b, l) with 0 at padded positions, which leave the state as it
        is. seq_idx: optional (b, l) int32 packed-sequence ids (the state restarts where it changes).
        Training forwards on the Triton scan recompute u and Δ in the backward (``mamba1_recompute.py``).
        """
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x, z = x.transpose(1, 2), z.transpose(1, 2)  # (b, d, l)
        A, D = -torch.exp(self.A_log.float()), self.D.float()
        if mamba1_recompute.applies(self, x, state, mask):
            return self.out_proj(mamba1_recompute.scan_recomputing_inputs(self, x, z, A, D, seq_idx).transpose(1, 2))
        if mask is not None:
            x = x * mask[:, None, :].to(x.dtype)
        conv_state, ssm_state = state if state is not None else (None, None)
        u, delta, B, C = self.conv_and_projections(x, conv_state, seq_idx)
        softplus = True
        if mask is not None:  # Δ = 0 at padding: exp(0·A) = 1 and Δ·B·u = 0 keep the state
            delta, softplus = F.softplus(delta.float()) * mask[:, None, :], False
        y = write_final_state(ops.selective_scan(
            u, delta, A, B, C, D, z, delta_softplus=softplus, initial_state=ssm_state, seq_idx=seq_idx,
            return_final_state=state is not None,
        ), ssm_state)
        return self.out_proj(y.transpose(1, 2))

    def step(self, hidden, conv_state, ssm_state):
        """One token: hidden (b, d_model) -> (b, d_model); conv_state (b, d, k-1), ssm_state (b, d, n) in place."""
        x, z = project(self.in_proj, hidden).chunk(2, dim=-1)
        x = ops.causal_conv1d_update(x, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu")
        delta, B, C = self._project_dt_b_c(x)
        y = ops.selective_state_update(ssm_state, x, delta, self.A_log, B, C, self.D.float(), z, dt_softplus=True,
                                       A_is_log=True)
        return project(self.out_proj, y)

    @property
    def fused_step_projections(self) -> tuple[nn.Module, ...]:
        """The projections whose weights ``fused_step`` reads directly (they must be plain nn.Linear)."""
        return self.in_proj, self.x_proj, self.dt_proj

    def fused_step(self, hidden, residual, pre_norm, conv_state, ssm_state):
        """``step`` with the block's residual add and RMSNorm folded in, through the fused decode ops:
        [pre_norm + in_proj] [conv + x_proj] [conv roll + dt_proj + SSM update] [out_proj].

        hidden, residual: (b, d_model) (residual None in the first layer); pre_norm: the block's RMSNorm;
        conv_state (b, d, k-1), ssm_state (b, d, n) in place. Returns (output, residual_out), (b, d_model) each.
        """
        xz, residual = ops.norm_linear(hidden, residual, pre_norm.weight, pre_norm.eps, self.in_proj.weight,
                                       self.in_proj.bias, residual_in_fp32=pre_norm.residual_in_fp32)
        x, z = xz.chunk(2, dim=-1)
        conv_weight = self.conv1d.weight.squeeze(1)
        x_dbl = ops.mamba1_conv_xproj(x, conv_state, conv_weight, self.conv1d.bias, self.x_proj.weight)
        y = ops.mamba1_ssm_step(x, z, x_dbl, conv_state, conv_weight, self.conv1d.bias, self.dt_proj.weight,
                                self.dt_proj.bias, self.A_log, self.D, ssm_state, bcdt_eps=self.bcdt_rms_eps)
        return project(self.out_proj, y), residual

    def state_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-row shapes of (conv_state, ssm_state)."""
        d_inner = self.A_log.shape[0]
        return (d_inner, self.conv1d.kernel_size[0] - 1), (d_inner, self.d_state)

    @torch.no_grad()
    def reset_parameters(self, dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4):
        """The reference initialisation: S4D-real A, Δ bias spread log-uniformly in [dt_min, dt_max]."""
        d_inner, n = self.A_log.shape
        self.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D.fill_(1.0)
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
