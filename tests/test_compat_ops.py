"""mamba_ssm's functions in mambakit.compat against independent oracles, on mamba_ssm's documented layouts:
outputs, final states and the gradients of every input.

The oracles below are written from mamba_ssm's / causal_conv1d's documented semantics in a different form
from mambakit's reference (einsum decay products, the SSD quadratic form, torch's conv1d), so both
implementations agree only if both are right. On a CUDA machine, ``pytest -m gpu`` runs the gradient
checks again on CUDA tensors (mambakit's Triton kernels) against the oracles on the CPU.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mambakit.compat.causal_conv1d import causal_conv1d_fn, causal_conv1d_update
from mambakit.compat.errors import CompatError
from mambakit.compat.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
from mambakit.compat.ops.triton.selective_state_update import selective_state_update
from mambakit.compat.ops.triton.ssd_combined import mamba_chunk_scan_combined

TOL = dict(rtol=1e-4, atol=1e-5)
KERNEL_TOL = dict(rtol=6e-4, atol=2e-3)  # Triton fp32 (TF32 dots, another summation order)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


# ---- oracles -------------------------------------------------------------------------------------
def per_channel(t, batch, channels, length):
    """B or C in any documented layout ((b, n, l), (b, g, n, l), constant (d, n)) -> (b, d, n, l)."""
    if t.dim() == 2:
        return t[None, :, :, None].expand(batch, -1, -1, length)
    t = t.unsqueeze(1) if t.dim() == 3 else t
    return t.repeat_interleave(channels // t.shape[1], dim=1)


def scan_oracle(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm's selective_scan_ref in closed form: h_t = Σ_{s<=t} exp(A Σ_{s<r<=t} Δ_r) Δ_s B_s u_s."""
    batch, channels, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B, C = (per_channel(t, batch, channels, length) for t in (B, C))
    cum = torch.cumsum(delta, dim=-1)  # (b, d, l)
    gap = cum[..., :, None] - cum[..., None, :]  # (b, d, t, s): Σ_{s<r<=t} Δ_r
    exponent = gap[:, :, None] * A[None, :, :, None, None]  # (b, d, n, t, s)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    decay = torch.exp(exponent.masked_fill(~causal, -math.inf))
    states = torch.einsum("bdnts,bds,bdns->bdnt", decay, delta * u, B)
    y = torch.einsum("bdnt,bdnt->bdt", states, C)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y, states[..., -1]


def ssd_oracle(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf),
               initial_states=None, seq_idx=None):
    """SSD's quadratic (attention-like) form: y_t = Σ_s [same seq] exp(A Σ_{s<r<=t} Δ_r) (C_t·B_s) Δ_s x_s + …"""
    batch, length, heads, _ = x.shape
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    dt = dt.clamp(*dt_limit)
    B, C = (t.repeat_interleave(heads // t.shape[2], dim=2) for t in (B, C))  # (b, l, h, n)
    cum = torch.cumsum(dt * A, dim=1)  # (b, l, h)
    segment = cum[:, :, None] - cum[:, None, :]  # (b, t, s, h)
    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None, :, :, None]
    if seq_idx is not None:
        allowed = allowed & (seq_idx[:, :, None] == seq_idx[:, None, :])[..., None]
    weights = torch.exp(segment.masked_fill(~allowed, -math.inf)) * torch.einsum("bthn,bshn->btsh", C, B)
    y = torch.einsum("btsh,bsh,bshp->bthp", weights, dt, x)
    from_start = torch.exp(cum)  # (b, l, h): decay from the initial state, first sequence only
    if seq_idx is not None:
        from_start = from_start * (seq_idx == seq_idx[:, :1])[..., None]
    final_weights = torch.exp(cum[:, -1:, :] - cum) * dt  # (b, s, h)
    if seq_idx is not None:
        final_weights = final_weights * (seq_idx == seq_idx[:, -1:])[..., None]
    final = torch.einsum("bsh,bshp,bshn->bhpn", final_weights, x, B)
    if initial_states is not None:
        y = y + torch.einsum("bth,bthn,bhpn->bthp", from_start, C, initial_states)
        carried = torch.exp(cum[:, -1])[:, :, None, None] * initial_states  # (b, h, p, n)
        if seq_idx is not None:  # only rows whose last sequence is their first one keep it
            carried = carried * (seq_idx[:, -1] == seq_idx[:, 0])[:, None, None, None]
        final = final + carried
    if D is not None:
        y = y + (D[:, None] if D.dim() == 1 else D) * x
    if z is not None:
        y = y * F.silu(z)
    return y, final


def conv_oracle(x, weight, bias=None, initial_states=None, activation=None):
    """torch's depthwise conv1d over [initial_states, x] (zeros when absent), keeping the causal outputs."""
    width = weight.shape[-1]
    history = initial_states if initial_states is not None else x.new_zeros(*x.shape[:2], width - 1)
    padded = torch.cat([history, x], dim=-1)
    y = F.conv1d(padded, weight[:, None, :], bias, groups=x.shape[1])
    return (F.silu(y) if activation == "silu" else y), padded[..., -(width - 1):]


def inner_oracle(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias,
                 A, D, delta_bias):
    x, z = xz.chunk(2, dim=1)
    x = conv_oracle(x, conv1d_weight[:, 0], conv1d_bias, activation="silu")[0]
    rank, n = delta_proj_weight.shape[1], A.shape[1]
    x_dbl = torch.einsum("od,bdl->bol", x_proj_weight, x)
    delta = torch.einsum("dr,brl->bdl", delta_proj_weight, x_dbl[:, :rank])
    y = scan_oracle(x, delta, A, x_dbl[:, rank:rank + n], x_dbl[:, -n:], D, z, delta_bias, True)[0]
    return torch.einsum("ed,bdl->ble", out_proj_weight, y) + out_proj_bias


# ---- helpers -------------------------------------------------------------------------------------
def check_against(fn, oracle, tensors, device="cpu"):
    """fn(**tensors) on ``device`` == oracle(**tensors) on the CPU, in value and in the gradient of every
    floating tensor input."""
    runs = []
    for impl, where in ((fn, device), (oracle, "cpu")):
        leaves = {k: v.detach().to(where).requires_grad_(v.is_floating_point()) for k, v in tensors.items()}
        out = impl(**leaves)
        runs.append((out if isinstance(out, tuple) else (out,), leaves))
    (outs, leaves), (expected, expected_leaves) = runs
    tolerance = TOL if device == "cpu" else KERNEL_TOL
    torch.manual_seed(1)
    upstream = [torch.randn_like(o) for o in expected[:len(outs)]]
    for got, want in zip(outs, expected):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got.cpu(), want, **tolerance)
    sum((o * u.to(device)).sum() for o, u in zip(outs, upstream)).backward()
    sum((o * u).sum() for o, u in zip(expected, upstream)).backward()
    for name, leaf in leaves.items():
        if leaf.is_floating_point():
            torch.testing.assert_close(leaf.grad.cpu(), expected_leaves[name].grad, **tolerance,
                                       msg=lambda m: f"d{name}: {m}")


# ---- selective_scan_fn / mamba_inner_fn ----------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bc_layout", ["(b n l)", "(b g n l)", "(d n)"])
@pytest.mark.parametrize("options", [dict(), dict(gated=True, delta_softplus=True)])
def test_selective_scan_fn(bc_layout, options, device):
    b, d, n, l, g = 2, 8, 4, 11, 2
    shape = {"(b n l)": (b, n, l), "(b g n l)": (b, g, n, l), "(d n)": (d, n)}[bc_layout]
    tensors = dict(u=torch.randn(b, d, l), delta=torch.rand(b, d, l) * 0.5, A=-torch.rand(d, n) - 0.5,
                   B=torch.randn(shape), C=torch.randn(shape), D=torch.randn(d), delta_bias=torch.randn(d) * 0.1)
    if options.get("gated"):
        tensors["z"] = torch.randn(b, d, l)
    softplus = options.get("delta_softplus", False)
    check_against(lambda **t: selective_scan_fn(**t, delta_softplus=softplus, return_last_state=True),
                  lambda **t: scan_oracle(**t, delta_softplus=softplus), tensors, device)
    assert selective_scan_fn(**tensors).shape == (b, d, l)


def test_selective_scan_fn_rejects_complex_A():
    u = torch.randn(1, 2, 3)
    with pytest.raises(CompatError, match="complex A"):
        selective_scan_fn(u, u, torch.randn(2, 4, dtype=torch.complex64), torch.randn(1, 4, 3), torch.randn(1, 4, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_mamba_inner_fn(device):
    b, d_model, d, n, r, k, l = 2, 6, 8, 4, 2, 4, 9
    tensors = dict(xz=torch.randn(b, 2 * d, l), conv1d_weight=torch.randn(d, 1, k) * 0.5,
                   conv1d_bias=torch.randn(d), x_proj_weight=torch.randn(r + 2 * n, d) * 0.3,
                   delta_proj_weight=torch.randn(d, r) * 0.3, out_proj_weight=torch.randn(d_model, d) * 0.3,
                   out_proj_bias=torch.randn(d_model), A=-torch.rand(d, n) - 0.5, D=torch.randn(d),
                   delta_bias=torch.randn(d) * 0.1)
    check_against(mamba_inner_fn, inner_oracle, tensors, device)


# ---- mamba_chunk_scan_combined -------------------------------------------------------------------
@pytest.mark.parametrize("options", [
    dict(),
    dict(z=True, dt_bias=True, dt_softplus=True, D_per_channel=True),
    dict(initial_states=True, dt_limit=(0.01, 0.3), dt_softplus=True),
    dict(seq_idx=True, initial_states=True),
])
@pytest.mark.parametrize("device", DEVICES)
def test_mamba_chunk_scan_combined(options, device):
    b, l, h, p, g, n = 2, 13, 4, 3, 2, 5
    tensors = dict(x=torch.randn(b, l, h, p), dt=torch.rand(b, l, h) * 0.5, A=-torch.rand(h) - 0.5,
                   B=torch.randn(b, l, g, n), C=torch.randn(b, l, g, n),
                   D=torch.randn(h, p) if options.get("D_per_channel") else torch.randn(h))
    if options.get("z"):
        tensors["z"] = torch.randn(b, l, h, p)
    if options.get("dt_bias"):
        tensors["dt_bias"] = torch.randn(h) * 0.1
    if options.get("initial_states"):
        tensors["initial_states"] = torch.randn(b, h, p, n)
    if options.get("seq_idx"):
        tensors["seq_idx"] = torch.tensor([[0] * 5 + [1] * 8, [0] * 9 + [1] * 2 + [2] * 2], dtype=torch.int32)
    common = dict(dt_softplus=options.get("dt_softplus", False), dt_limit=options.get("dt_limit", (0.0, math.inf)))
    check_against(lambda **t: mamba_chunk_scan_combined(chunk_size=4, return_final_states=True, **t, **common),
                  lambda **t: ssd_oracle(**t, **common), tensors, device)


def test_mamba_chunk_scan_combined_varlen_states_are_refused():
    x = torch.randn(1, 4, 2, 2)
    with pytest.raises(CompatError, match="return_varlen_states"):
        mamba_chunk_scan_combined(x, torch.rand(1, 4, 2), -torch.rand(2), torch.randn(1, 4, 1, 3),
                                  torch.randn(1, 4, 1, 3), chunk_size=2, return_varlen_states=True)


# ---- selective_state_update ----------------------------------------------------------------------
def state_update_oracle(state, x, dt, A, B, C, D, z, dt_bias):
    """One step of the recurrence, from the scan oracle on a length-1 sequence."""
    if state.dim() == 3:  # (b, d, n)
        dt = F.softplus(dt + dt_bias)
        new_state = torch.exp(dt[..., None] * A) * state + (dt * x)[..., None] * B[:, None, :]
        return ((new_state * C[:, None, :]).sum(-1) + D * x) * F.silu(z), new_state
    heads, groups = state.shape[1], B.shape[1]
    Bh, Ch = (t.repeat_interleave(heads // groups, dim=1)[:, :, None, :] for t in (B, C))  # (b, h, 1, n)
    dt = F.softplus(dt + dt_bias)
    new_state = torch.exp(dt[..., None] * A) * state + (dt * x)[..., None] * Bh
    return ((new_state * Ch).sum(-1) + D * x) * F.silu(z), new_state


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["mamba1", "mamba2"])
def test_selective_state_update(layout, device):
    b, n = 3, 4
    if layout == "mamba1":
        d = 6
        shapes = dict(state=(b, d, n), x=(b, d), A=(d, n), B=(b, n), D=(d,), dt_bias=(d,))
    else:
        h, p, g = 4, 3, 2
        shapes = dict(state=(b, h, p, n), x=(b, h, p), A=(h, p, n), B=(b, g, n), D=(h, p), dt_bias=(h, p))
    tensors = {name: torch.randn(shape) for name, shape in shapes.items()}
    tensors.update(dt=torch.randn(shapes["x"]), z=torch.randn(shapes["x"]), C=torch.randn(shapes["B"]))
    tensors["A"] = -tensors["A"].abs()
    state = tensors.pop("state")
    expected_y, expected_state = state_update_oracle(state, **tensors)
    state = state.to(device)  # a decoding op: no backward, as in mamba_ssm
    y = selective_state_update(state, **{k: v.to(device) for k, v in tensors.items()}, dt_softplus=True)
    tolerance = TOL if device == "cpu" else KERNEL_TOL
    torch.testing.assert_close(y.cpu(), expected_y, **tolerance)
    torch.testing.assert_close(state.cpu(), expected_state, **tolerance)


def test_selective_state_update_with_state_batch_indices():
    slots, d, n = 5, 4, 3
    state = torch.randn(slots, d, n)
    rows = torch.tensor([3, 0])
    x, dt, z = torch.randn(2, d), torch.randn(2, d), torch.randn(2, d)
    A, B, C, D, bias = -torch.rand(d, n), torch.randn(2, n), torch.randn(2, n), torch.randn(d), torch.randn(d)
    expected_y, expected_rows = state_update_oracle(state[rows], x, dt, A, B, C, D, z, bias)
    untouched = state[[1, 2, 4]].clone()
    y = selective_state_update(state, x, dt, A, B, C, D, z, bias, dt_softplus=True, state_batch_indices=rows)
    torch.testing.assert_close(y, expected_y, **TOL)
    torch.testing.assert_close(state[rows], expected_rows, **TOL)
    assert torch.equal(state[[1, 2, 4]], untouched)


# ---- causal_conv1d -------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("with_state", [False, True])
def test_causal_conv1d_fn(width, with_state, device):
    b, d, l = 2, 5, 9
    tensors = dict(x=torch.randn(b, d, l), weight=torch.randn(d, width), bias=torch.randn(d))
    if with_state:
        tensors["initial_states"] = torch.randn(b, d, width - 1)
    check_against(lambda **t: causal_conv1d_fn(**t, return_final_states=True, activation="silu"),
                  lambda **t: conv_oracle(**t, activation="silu"), tensors, device)
    out_buffer = torch.empty(b, d, width - 1)
    _, final = causal_conv1d_fn(**tensors, return_final_states=True, final_states_out=out_buffer)
    assert final.data_ptr() == out_buffer.data_ptr()


def test_causal_conv1d_fn_seq_idx_restarts_the_window():
    x, weight = torch.randn(1, 3, 8), torch.randn(3, 4)
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]], dtype=torch.int32)
    out = causal_conv1d_fn(x, weight, seq_idx=seq_idx)
    torch.testing.assert_close(out[..., :3], conv_oracle(x[..., :3], weight)[0], **TOL)
    torch.testing.assert_close(out[..., 3:], conv_oracle(x[..., 3:], weight)[0], **TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("state_width", [3, 4])  # k-1 (causal_conv1d) and k (mamba_ssm's conv_state)
def test_causal_conv1d_update_equals_the_convolution(state_width, device):
    b, d, l, width = 2, 5, 6, 4
    x, weight, bias = torch.randn(b, d, l), torch.randn(d, width), torch.randn(d)
    expected, final = conv_oracle(x, weight, bias, activation="silu")
    x, weight, bias = x.to(device), weight.to(device), bias.to(device)
    conv_state = torch.zeros(b, d, state_width, device=device)
    one_by_one = torch.stack([causal_conv1d_update(x[..., t], conv_state, weight, bias, "silu") for t in range(3)], -1)
    rest = causal_conv1d_update(x[..., 3:], conv_state, weight, bias, "silu")  # (b, d, l) form
    tolerance = TOL if device == "cpu" else KERNEL_TOL
    torch.testing.assert_close(torch.cat([one_by_one, rest], -1).cpu(), expected, **tolerance)
    torch.testing.assert_close(conv_state[..., -(width - 1):].cpu(), final, **tolerance)


def test_causal_conv1d_update_slots_and_refusals():
    slots, d, width = 4, 3, 4
    conv_state = torch.randn(slots, d, width - 1)
    before = conv_state.clone()
    x, weight = torch.randn(2, d), torch.randn(d, width)
    rows = torch.tensor([2, 0])
    expected = (torch.cat([before[rows], x[..., None]], -1) * weight).sum(-1)
    torch.testing.assert_close(causal_conv1d_update(x, conv_state, weight, conv_state_indices=rows), expected, **TOL)
    assert torch.equal(conv_state[rows][..., -1], x) and torch.equal(conv_state[[1, 3]], before[[1, 3]])
    with pytest.raises(CompatError, match="cache_seqlens"):
        causal_conv1d_update(x, conv_state, weight, cache_seqlens=torch.zeros(2, dtype=torch.int32))
