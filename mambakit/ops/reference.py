"""Plain-PyTorch reference for every op: any device, autograd, fp32 arithmetic. The test oracle.

Glossary (the Mamba papers' symbols, used in every shape below):
    b  batch size                 l  sequence length            d  channels (d_inner, or conv channels)
    n  state size (d_state)       k  conv kernel width          g  groups sharing B and C (ngroups)
    h  heads (Mamba-2)            p  head dim (Mamba-2)         v  vocabulary size
    Δ (delta, dt)  input-dependent step size         A  state decay (negative; A = -exp(A_log))
    B  input -> state projection  C  state -> output projection  D  skip connection
    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t ;  y_t = C_t h_t + D x_t

Conventions shared with the Triton kernels (same signatures, same results):
- Inputs may be fp32/fp16/bf16; arithmetic and recurrent states are fp32; outputs take the input dtype.
- ``seq_idx`` (b, l) int32 marks which packed sequence each position belongs to: wherever it changes
  from one position to the next, the recurrent state (and the conv window) starts again from zero.
- ``initial_state`` belongs to the first sequence of each row.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _sequence_starts(seq_idx: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """(b, l) bool: True where a new packed sequence starts inside the row (never at position 0)."""
    if seq_idx is None:
        return None
    starts = torch.zeros_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return starts


def _expand_groups(t: torch.Tensor, channels: int, dim: int) -> torch.Tensor:
    """Repeat the group axis ``dim`` of B or C so that each of ``channels`` gets its group's values."""
    groups = t.shape[dim]
    if channels % groups:
        raise ValueError(f"{channels} channels cannot be split into {groups} groups")
    return t.repeat_interleave(channels // groups, dim=dim)


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, seq_idx=None, return_final_state=False,
):
    """Mamba-1 selective scan (S6).

    u, delta: (b, d, l); A: (d, n); B, C: (b, n, l) or (b, g, n, l); D: (d,); z: (b, d, l) gate;
    delta_bias: (d,); initial_state: (b, d, n); seq_idx: (b, l).
    Returns y (b, d, l) in u's dtype, y = (C h + D u) * silu(z), and with ``return_final_state`` also the
    final state (b, d, n) fp32.
    """
    out_dtype = u.dtype
    batch, channels, length = u.shape
    u, delta, A = u.float(), delta.float(), A.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B = _expand_groups(B.float().unsqueeze(1) if B.dim() == 3 else B.float(), channels, 1)  # (b, d, n, l)
    C = _expand_groups(C.float().unsqueeze(1) if C.dim() == 3 else C.float(), channels, 1)
    decay = torch.exp(delta.unsqueeze(2) * A.unsqueeze(-1))  # (b, d, n, l)
    drive = (delta * u).unsqueeze(2) * B  # (b, d, n, l)
    starts = _sequence_starts(seq_idx, length)
    state = u.new_zeros(batch, channels, A.shape[1]) if initial_state is None else initial_state.float()
    ys = []
    # unbind (not [..., t]): its backward stacks the step gradients once instead of one full-size zero
    # tensor per step, which made the backward pass quadratic in the length
    for t, (decay_t, drive_t, C_t) in enumerate(zip(decay.unbind(-1), drive.unbind(-1), C.unbind(-1))):
        if starts is not None and t > 0:
            state = torch.where(starts[:, t, None, None], torch.zeros_like(state), state)
        state = decay_t * state + drive_t
        ys.append((state * C_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.float()[:, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(out_dtype)
    return (y, state) if return_final_state else y


def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None, seq_idx=None, return_final_state=False):
    """Depthwise causal convolution over time, optionally followed by SiLU.

    x: (b, d, l); weight: (d, k); bias: (d,); initial_state: (b, d, k-1) (the k-1 inputs before x);
    seq_idx: (b, l). Returns y (b, d, l) in x's dtype and, with ``return_final_state``, the last k-1
    inputs (b, d, k-1) in x's dtype (entries from an earlier packed sequence zeroed).
    """
    _check_activation(activation)
    batch, channels, length = x.shape
    width = weight.shape[-1]
    history = x.new_zeros(batch, channels, width - 1) if initial_state is None else initial_state.to(x.dtype)
    padded = torch.cat([history, x], dim=-1).float()  # (b, d, k-1+l)
    windows = padded.unfold(-1, width, 1)  # (b, d, l, k): window t ends at input t
    if seq_idx is not None:
        padded_idx = torch.cat([seq_idx[:, :1].expand(batch, width - 1), seq_idx], dim=-1)
        same = padded_idx.unfold(-1, width, 1) == seq_idx.unsqueeze(-1)  # (b, l, k)
        windows = windows * same.unsqueeze(1)
    y = (windows * weight.float()[:, None, :]).sum(-1)
    if bias is not None:
        y = y + bias.float()[:, None]
    if activation is not None:
        y = F.silu(y)
    y = y.to(x.dtype)
    if not return_final_state:
        return y
    final = padded[..., -(width - 1):] if width > 1 else padded[..., :0]
    if seq_idx is not None and width > 1:
        tail_idx = torch.cat([seq_idx[:, :1].expand(batch, width - 1), seq_idx], dim=-1)[:, -(width - 1):]
        final = final * (tail_idx == seq_idx[:, -1:]).unsqueeze(1)
    return y, final.to(x.dtype)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """One decoding step of the causal conv. Updates ``conv_state`` in place.

    x: (b, d); conv_state: (b, d, s) with s >= k-1 (the latest inputs, oldest first); weight: (d, k).
    Returns y (b, d) in x's dtype.
    """
    _check_activation(activation)
    width = weight.shape[-1]
    window = torch.cat([conv_state[..., conv_state.shape[-1] - (width - 1):], x.unsqueeze(-1)], dim=-1)
    y = (window.float() * weight.float()).sum(-1)
    if bias is not None:
        y = y + bias.float()
    if activation is not None:
        y = F.silu(y)
    conv_state.copy_(torch.cat([conv_state[..., 1:], x.unsqueeze(-1).to(conv_state.dtype)], dim=-1))
    return y.to(x.dtype)


def mamba1_as_heads(state, x, dt, A, B, C, D, z, dt_bias):
    """Mamba-1's single-step arguments in Mamba-2's layout: each channel a head of head dim 1
    (state (b, d, n) -> (b, d, 1, n); x, dt, z (b, d) -> (b, d, 1); A (d, n) -> (d, 1, n); D, dt_bias -> (d, 1))."""
    def lift(t):
        return None if t is None else t.unsqueeze(-1)

    return state.unsqueeze(2), lift(x), lift(dt), A.unsqueeze(1), B, C, lift(D), lift(z), lift(dt_bias)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, A_is_log=False):
    """One decoding step of the SSM recurrence, for both mixers. Updates ``state`` in place.

    Mamba-1 layout: state (b, d, n); x, dt, z: (b, d); A: (d, n); B, C: (b, n) or (b, g, n); D, dt_bias: (d,).
    Mamba-2 layout: state (b, h, p, n); x, dt, z: (b, h, p); A: (h, p, n); B, C: (b, g, n); D, dt_bias: (h, p).
    ``A_is_log``: A holds the mixers' A_log parameter and the decay rate is -exp(A_log) (the Triton kernel
    takes it in registers, so that a decoding step launches no kernels for it). Returns y like x:
    y = (C h + D x) * silu(z).
    """
    if state.dim() == 3:
        return selective_state_update(*mamba1_as_heads(state, x, dt, A, B, C, D, z, dt_bias), dt_softplus,
                                      A_is_log).squeeze(-1)
    if A_is_log:
        A = -torch.exp(A.float())
    heads = state.shape[1]
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    B = _expand_groups(B.float() if B.dim() == 3 else B.float().unsqueeze(1), heads, 1).unsqueeze(2)  # (b, h, 1, n)
    C = _expand_groups(C.float() if C.dim() == 3 else C.float().unsqueeze(1), heads, 1).unsqueeze(2)
    new_state = torch.exp(dt.unsqueeze(-1) * A.float()) * state.float() + (dt * x.float()).unsqueeze(-1) * B
    state.copy_(new_state)
    y = (new_state * C).sum(-1)
    if D is not None:
        y = y + D.float() * x.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def ssd_scan(
    x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
    dt_limit=(0.0, math.inf), initial_state=None, seq_idx=None, return_final_state=False,
):
    """Mamba-2 state-space dual (SSD) scan: scalar decay per head.

    x: (b, l, h, p); dt: (b, l, h); A: (h,); B, C: (b, l, g, n); D: (h,) or (h, p); z: (b, l, h, p);
    dt_bias: (h,); initial_state: (b, h, p, n); seq_idx: (b, l).
    ``chunk_size`` only tiles the work in the kernels; this recurrence gives the same numbers.
    Returns y (b, l, h, p) in x's dtype and, with ``return_final_state``, the state (b, h, p, n) fp32.
    """
    batch, length, heads, head_dim = x.shape
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != (0.0, math.inf):
        dt = dt.clamp(dt_limit[0], dt_limit[1])
    Bh = _expand_groups(B.float(), heads, 2)  # (b, l, h, n)
    Ch = _expand_groups(C.float(), heads, 2)
    decay = torch.exp(dt * A.float())  # (b, l, h)
    xf = x.float()
    starts = _sequence_starts(seq_idx, length)
    state = (x.new_zeros(batch, heads, head_dim, B.shape[-1], dtype=torch.float32)
             if initial_state is None else initial_state.float())
    ys = []
    steps = zip(dt.unbind(1), xf.unbind(1), Bh.unbind(1), Ch.unbind(1), decay.unbind(1))  # unbind: see selective_scan
    for t, (dt_t, x_t, B_t, C_t, decay_t) in enumerate(steps):
        if starts is not None and t > 0:
            state = torch.where(starts[:, t, None, None, None], torch.zeros_like(state), state)
        drive = (dt_t[:, :, None] * x_t).unsqueeze(-1) * B_t[:, :, None, :]  # (b, h, p, n)
        state = decay_t[:, :, None, None] * state + drive
        ys.append((state * C_t[:, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)  # (b, l, h, p)
    if D is not None:
        y = y + (D.float()[:, None] if D.dim() == 1 else D.float()) * xf
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(x.dtype)
    return (y, state) if return_final_state else y


def rms_norm(x, weight=None, eps=1e-5, residual=None, residual_in_fp32=True):
    """Residual add + RMSNorm over the last axis.

    x: (..., d); weight: (d,) or None (weightless, as Falcon-Mamba's B/C/Δ norms); residual: like x.
    Returns (y, residual_out): residual_out = x + residual (fp32 when ``residual_in_fp32``), and
    y = weight * normalize(residual_out) in weight's dtype (x's when weightless).
    """
    summed = x.float() if residual is None else x.float() + residual.float()
    out_dtype = weight.dtype if weight is not None else x.dtype
    normed = (summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + eps)).to(out_dtype)
    y = normed if weight is None else weight * normed
    residual_out = summed if residual_in_fp32 else summed.to(x.dtype)
    return y, residual_out


def gated_rms_norm(x, z, weight, eps=1e-5, group_size=None):
    """Mamba-2's gated group RMSNorm: y = weight * rmsnorm_per_group(x * silu(z)).

    x, z: (..., d); weight: (d,); group_size divides d (default d). Returns y in x's dtype.
    """
    gated = x.float() * F.silu(z.float())
    group_size = group_size or gated.shape[-1]
    grouped = gated.unflatten(-1, (-1, group_size))
    normed = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.flatten(-2).to(x.dtype)


def linear_cross_entropy(hidden, weight, labels, ignore_index=-100):
    """Mean next-token cross-entropy of ``hidden @ weight.T`` against ``labels``.

    hidden: (t, d); weight: (v, d); labels: (t,) int64 with ``ignore_index`` for positions that do not
    count. Returns a scalar fp32 loss (NaN-free: 0 when no position counts).
    """
    logits = (hidden @ weight.T).float()
    counted = (labels != ignore_index).sum()
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / counted.clamp(min=1)


def _check_activation(activation):
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")


def linear(x, weight, bias=None):
    """y = x @ weight.T + bias: x (..., k); weight (n, k); bias (n,). The decode path's projections."""
    return torch.nn.functional.linear(x, weight, bias)


# ---- fused single-token decode ops: one kernel each on CUDA (kernels/decode_fused*.py), composed here from
# the ops above, so that the CPU decode path gives the numbers of the per-op path ---------------------------
def norm_linear(hidden, residual, norm_weight, eps, weight, bias=None, residual_in_fp32=True):
    """Residual add + RMSNorm + projection of one token: every layer's in_proj, and norm_f + lm_head.

    hidden, residual: (b, d_model) (residual None for the first layer); norm_weight: (d_model,);
    weight: (n, d_model); bias: (n,). Returns (y (b, n), residual_out (b, d_model)): residual_out =
    hidden + residual (fp32 when ``residual_in_fp32``), y = linear(rmsnorm(residual_out) * norm_weight).
    """
    normed, residual_out = rms_norm(hidden, norm_weight, eps, residual=residual, residual_in_fp32=residual_in_fp32)
    return linear(normed, weight, bias), residual_out


def mamba1_conv_xproj(x, conv_state, conv_weight, conv_bias, x_proj_weight):
    """Mamba-1's conv + x_proj for one token, leaving ``conv_state`` as it is (``mamba1_ssm_step`` rolls it).

    x: (b, d); conv_state: (b, d, s), s >= k-1; conv_weight: (d, k); conv_bias: (d,) or None;
    x_proj_weight: (r + 2n, d). Returns x_dbl (b, r + 2n) = x_proj(silu(conv(conv_state, x))): the
    low-rank Δ, B and C.
    """
    return linear(causal_conv1d_update(x, conv_state.clone(), conv_weight, conv_bias, "silu"), x_proj_weight)


def mamba1_ssm_step(x, z, x_dbl, conv_state, conv_weight, conv_bias, dt_proj_weight, dt_proj_bias, A_log, D,
                    ssm_state, bcdt_eps=None):
    """Mamba-1's conv (rolling ``conv_state``), dt_proj and SSM update (``ssm_state``) for one token.

    x, z: (b, d) (the in_proj halves); x_dbl: (b, r + 2n) from ``mamba1_conv_xproj``; conv_state: (b, d, s);
    conv_weight: (d, k); conv_bias: (d,) or None; dt_proj_weight: (d, r); dt_proj_bias: (d,); A_log: (d, n);
    D: (d,); ssm_state: (b, d, n) fp32. ``bcdt_eps``: Falcon-Mamba's weightless RMSNorm of Δ, B and C (None:
    off). Returns y (b, d) in x's dtype: y = (C h + D silu(conv)) * silu(z),
    h <- exp(Δ A) h + Δ B silu(conv), Δ = softplus(dt_proj(Δ_low)), A = -exp(A_log).
    """
    x_conv = causal_conv1d_update(x, conv_state, conv_weight, conv_bias, "silu")
    dt, B, C = x_dbl.split([dt_proj_weight.shape[1], A_log.shape[1], A_log.shape[1]], dim=-1)
    if bcdt_eps is not None:
        dt, B, C = (rms_norm(t, None, bcdt_eps)[0] for t in (dt, B, C))
    return selective_state_update(ssm_state, x_conv, linear(dt, dt_proj_weight, dt_proj_bias),
                                  -torch.exp(A_log.float()), B, C, D.float(), z, dt_softplus=True)


def mamba2_conv_ssm_step(xbc, dt, conv_state, conv_weight, conv_bias, dt_bias, A_log, D, ssm_state, ngroups,
                         headdim, dt_limit=(0.0, math.inf)):
    """Mamba-2's conv (rolling ``conv_state``) and SSM update (``ssm_state``) for one token, without the gate.

    xbc: (b, c) with c = d + 2·g·n (x, B, C); dt: (b, h); conv_state: (b, c, s), s >= k-1; conv_weight: (c, k);
    conv_bias: (c,) or None; dt_bias, A_log, D: (h,); ssm_state: (b, h, p, n) fp32. Returns y (b, d) in
    xbc's dtype: y = C h + D x over x, B, C = silu(conv), with Δ = clamp(softplus(dt + dt_bias), dt_limit).
    """
    batch = xbc.shape[0]
    heads, _, state_size = ssm_state.shape[1:]
    xbc = causal_conv1d_update(xbc, conv_state, conv_weight, conv_bias, "silu")
    x, B, C = xbc.split([heads * headdim, ngroups * state_size, ngroups * state_size], dim=-1)
    if tuple(dt_limit) != (0.0, math.inf):
        dt, dt_bias, softplus = F.softplus(dt.float() + dt_bias.float()).clamp(*dt_limit), None, False
    else:
        dt_bias, softplus = dt_bias.float()[:, None].expand(heads, headdim), True
    y = selective_state_update(
        ssm_state, x.reshape(batch, heads, headdim), dt[:, :, None].expand(batch, heads, headdim),
        -torch.exp(A_log.float())[:, None, None].expand(heads, headdim, state_size),
        B.reshape(batch, ngroups, state_size), C.reshape(batch, ngroups, state_size),
        D.float()[:, None].expand(heads, headdim), dt_bias=dt_bias, dt_softplus=softplus,
    )
    return y.reshape(batch, heads * headdim)


def gated_norm_linear(y, z, norm_weight, eps, group_size, weight, bias=None):
    """Mamba-2's output for one token: linear(rmsnorm_per_group(y * silu(z)) * norm_weight, weight, bias).

    y, z: (b, d); norm_weight: (d,); group_size divides d; weight: (d_model, d); bias: (d_model,).
    Returns (b, d_model).
    """
    return linear(gated_rms_norm(y, z, norm_weight, eps, group_size), weight, bias)
