"""Mamba-2 mixer (SSD: scalar decay per head), also Codestral-Mamba's (8 groups).

Shapes: b batch, l length, d = d_inner, h heads, p = headdim (h·p = d), g = ngroups, n = d_state,
k = d_conv, c = d + 2·g·n conv channels (x, B and C go through the conv together).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mambakit import ops
from mambakit.config import MambaConfig
from mambakit.layers.norm import GatedRMSNorm, KeepsFp32Params
from mambakit.layers.projection import project
from mambakit.state import write_final_state


class Mamba2Mixer(KeepsFp32Params):
    fp32_params = ("A_log", "D", "dt_bias")

    def __init__(self, config: MambaConfig):
        super().__init__()
        d_inner, g, n, h = config.d_inner, config.ngroups, config.d_state, config.nheads
        self.d_inner, self.ngroups, self.d_state, self.nheads, self.headdim = d_inner, g, n, h, config.headdim
        self.chunk_size = config.chunk_size
        self.dt_limit = tuple(config.dt_limit)
        self.conv_channels = d_inner + 2 * g * n
        self.in_proj = nn.Linear(config.d_model, 2 * d_inner + 2 * g * n + h, bias=config.bias)
        self.conv1d = nn.Conv1d(self.conv_channels, self.conv_channels, config.d_conv, groups=self.conv_channels,
                                padding=config.d_conv - 1, bias=config.conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(h))
        self.A_log = nn.Parameter(torch.empty(h))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = GatedRMSNorm(d_inner, group_size=d_inner // g, eps=config.norm_epsilon)
        self.out_proj = nn.Linear(d_inner, config.d_model, bias=config.bias)

    @property
    def _limits_dt(self) -> bool:
        return self.dt_limit != (0.0, math.inf)

    def _step_size(self, dt: torch.Tensor) -> torch.Tensor:
        """Δ = clamp(softplus(dt + dt_bias), dt_limit), fp32; dt (..., h)."""
        return F.softplus(dt.float() + self.dt_bias.float()).clamp(*self.dt_limit)

    def forward(self, hidden, state=None, mask=None, seq_idx=None):
        """hidden (b, l, d_model) -> (b, l, d_model).

        state: optional (conv_state (b, c, k-1), ssm_state (b, h, p, n) fp32), overwritten with the final
        state. mask: optional (b, l), 0 at padding (the state is left as it is there). seq_idx: (b, l) int32.
        """
        batch, length, _ = hidden.shape
        z, xbc, dt = self.in_proj(hidden).split([self.d_inner, self.conv_channels, self.nheads], dim=-1)
        xbc = xbc.transpose(1, 2)  # (b, c, l)
        if mask is not None:
            xbc = xbc * mask[:, None, :].to(xbc.dtype)
        conv_state, ssm_state = state if state is not None else (None, None)
        xbc = write_final_state(ops.causal_conv1d(
            xbc, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu", initial_state=conv_state, seq_idx=seq_idx,
            return_final_state=state is not None), conv_state).transpose(1, 2)
        x, B, C = xbc.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        dt_kwargs = dict(dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.dt_limit)
        if mask is not None:  # Δ = 0 at padding keeps the state
            dt = self._step_size(dt) * mask[..., None]
            dt_kwargs = dict(dt_bias=None, dt_softplus=False)
        y = write_final_state(ops.ssd_scan(
            x.reshape(batch, length, self.nheads, self.headdim), dt, -torch.exp(self.A_log.float()),
            B.reshape(batch, length, self.ngroups, self.d_state), C.reshape(batch, length, self.ngroups, self.d_state),
            chunk_size=self.chunk_size, D=self.D.float(), initial_state=ssm_state, seq_idx=seq_idx,
            return_final_state=state is not None, **dt_kwargs,
        ), ssm_state)
        return self.out_proj(self.norm(y.reshape(batch, length, self.d_inner), z))

    def step(self, hidden, conv_state, ssm_state):
        """One token: hidden (b, d_model) -> (b, d_model); conv_state (b, c, k-1), ssm_state (b, h, p, n) in place."""
        batch = hidden.shape[0]
        h, p, n, g = self.nheads, self.headdim, self.d_state, self.ngroups
        z, xbc, dt = project(self.in_proj, hidden).split([self.d_inner, self.conv_channels, h], dim=-1)
        xbc = ops.causal_conv1d_update(xbc, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu")
        x, B, C = xbc.split([self.d_inner, g * n, g * n], dim=-1)
        if self._limits_dt:
            dt, dt_bias, softplus = self._step_size(dt), None, False
        else:
            dt_bias, softplus = self.dt_bias.float()[:, None].expand(h, p), True
        y = ops.selective_state_update(
            ssm_state, x.reshape(batch, h, p), dt[:, :, None].expand(batch, h, p),
            self.A_log[:, None, None].expand(h, p, n), B.reshape(batch, g, n), C.reshape(batch, g, n),
            self.D.float()[:, None].expand(h, p), dt_bias=dt_bias, dt_softplus=softplus, A_is_log=True,
        )
        return project(self.out_proj, self.norm(y.reshape(batch, self.d_inner), z))

    @property
    def fused_step_projections(self) -> tuple[nn.Module, ...]:
        """The projections whose weights ``fused_step`` reads directly (they must be plain nn.Linear)."""
        return self.in_proj, self.out_proj

    def fused_step(self, hidden, residual, pre_norm, conv_state, ssm_state):
        """``step`` with the block's residual add and RMSNorm folded in, through the fused decode ops:
        [pre_norm + in_proj] [conv + SSM update] [gated norm + out_proj].

        hidden, residual: (b, d_model) (residual None in the first layer); pre_norm: the block's RMSNorm;
        conv_state (b, c, k-1), ssm_state (b, h, p, n) in place. Returns (output, residual_out), (b, d_model) each.
        """
        zxbcdt, residual = ops.norm_linear(hidden, residual, pre_norm.weight, pre_norm.eps, self.in_proj.weight,
                                           self.in_proj.bias, residual_in_fp32=pre_norm.residual_in_fp32)
        z, xbc, dt = zxbcdt.split([self.d_inner, self.conv_channels, self.nheads], dim=-1)
        y = ops.mamba2_conv_ssm_step(xbc, dt, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                     self.dt_bias, self.A_log, self.D, ssm_state, self.ngroups, self.headdim,
                                     self.dt_limit)
        out = ops.gated_norm_linear(y, z, self.norm.weight, self.norm.eps, self.norm.group_size,
                                    self.out_proj.weight, self.out_proj.bias)
        return out, residual

    def state_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-row shapes of (conv_state, ssm_state)."""
        return (self.conv_channels, self.conv1d.kernel_size[0] - 1), (self.nheads, self.headdim, self.d_state)

    @torch.no_grad()
    def reset_parameters(self, dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4, A_init_range=(1.0, 16.0)):
        """The reference initialisation: A uniform in A_init_range, Δ bias log-uniform in [dt_min, dt_max]."""
        self.A_log.copy_(torch.log(torch.empty(self.nheads).uniform_(*A_init_range)))
        self.D.fill_(1.0)
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
