"""Fused single-token decode kernels against their plain-PyTorch references (the Triton interpreter here,
the GPU with ``-m gpu``), and the whole model's fused step against the reference step."""
import math

import pytest
import torch
from torch import nn

from mambakit import MambaConfig, MambaLM, ops
from mambakit import model as model_module
from mambakit.layers.mamba1 import Mamba1Mixer
from mambakit.layers.mamba2 import Mamba2Mixer
from mambakit.ops import reference
from mambakit.ops.kernels import decode_fused, decode_fused_ssm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCES = {torch.float32: dict(rtol=6e-4, atol=2e-3), torch.bfloat16: dict(rtol=3e-2, atol=5e-2)}
DTYPES = [torch.float32, torch.bfloat16]
BATCHES = [1, 3]


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles small enough that the tiny shapes here take several programs, K blocks per group, batch blocks
    and shared-roll blocks (the real tile choice gives one of each at these sizes)."""
    if DEVICE == "cuda":
        return
    monkeypatch.setattr(decode_fused, "GEMV_TILE_ELEMENTS", 64)
    monkeypatch.setattr(decode_fused, "GEMV_MAX_BLOCK_K", 16)
    monkeypatch.setattr(decode_fused, "XPROJ_BLOCK_C", 8)
    monkeypatch.setattr(decode_fused, "XPROJ_BLOCK_N", 4)
    monkeypatch.setattr(decode_fused, "MAX_BATCH_BLOCK", 2)
    monkeypatch.setattr(decode_fused_ssm, "MAX_BLOCK_CHANNELS", 4)
    monkeypatch.setattr(decode_fused_ssm, "SHARED_ROLL_BLOCK", 16)


def _randn(*shape, dtype=torch.float32, scale=1.0):
    return scale * torch.randn(*shape, device=DEVICE).to(dtype)


def _assert_close(actual, expected, dtype, name):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
    torch.testing.assert_close(actual.float(), expected.float(), **TOLERANCES[dtype], msg=lambda m: f"{name}: {m}")


def _run_both(name, inputs, in_place=(), **kwargs):
    """(kernel outputs, reference outputs) of op ``name``; tensors named in ``in_place`` are cloned per side
    and appended to the outputs."""
    outputs = []
    for impl in (getattr(ops, name).kernel(), getattr(reference, name)):
        args = {k: v.clone() if k in in_place else v for k, v in inputs.items()}
        out = impl(**args, **kwargs)
        outputs.append((*(out if isinstance(out, tuple) else (out,)), *(args[k] for k in in_place)))
    return outputs


def _compare(name, inputs, dtype, in_place=(), **kwargs):
    actual, expected = _run_both(name, inputs, in_place, **kwargs)
    for index, (a, e) in enumerate(zip(actual, expected)):
        _assert_close(a, e, dtype, f"{name} output {index}")


def norm_linear_inputs(batch, d_model, n, dtype, residual=True, bias=False):
    return dict(hidden=_randn(batch, d_model, dtype=dtype), residual=_randn(batch, d_model) if residual else None,
                norm_weight=1 + _randn(d_model, dtype=dtype, scale=0.1), eps=1e-5,
                weight=_randn(n, d_model, dtype=dtype, scale=d_model ** -0.5),
                bias=_randn(n, dtype=dtype) if bias else None)


def gated_inputs(batch, d_inner, groups, d_model, dtype, bias=False):
    projection = _randn(batch, 3 * d_inner, dtype=dtype)  # y and z as strided slices, as in the model
    return dict(y=projection[:, :d_inner], z=projection[:, 2 * d_inner:], norm_weight=1 + _randn(d_inner, dtype=dtype,
                scale=0.1), eps=1e-5, group_size=d_inner // groups,
                weight=_randn(d_model, d_inner, dtype=dtype, scale=d_inner ** -0.5),
                bias=_randn(d_model, dtype=dtype) if bias else None)


def mamba1_inputs(batch, d_inner, d_state, dt_rank, dtype, state_len=3, conv_bias=True):
    xz = _randn(batch, 2 * d_inner, dtype=dtype)
    return dict(
        x=xz[:, :d_inner], z=xz[:, d_inner:], conv_state=_randn(batch, d_inner, state_len, dtype=dtype),
        conv_weight=_randn(d_inner, 4, dtype=dtype, scale=0.5),
        conv_bias=_randn(d_inner, dtype=dtype) if conv_bias else None,
        x_proj_weight=_randn(dt_rank + 2 * d_state, d_inner, dtype=dtype, scale=d_inner ** -0.5),
        dt_proj_weight=_randn(d_inner, dt_rank, dtype=dtype, scale=dt_rank ** -0.5),
        dt_proj_bias=(torch.rand(d_inner, device=DEVICE) * 4 - 6).to(dtype),
        A_log=torch.log(torch.arange(1, d_state + 1, device=DEVICE, dtype=torch.float32)).repeat(d_inner, 1)
        + 0.1 * _randn(d_inner, d_state), D=_randn(d_inner), ssm_state=_randn(batch, d_inner, d_state),
    )


def mamba2_inputs(batch, heads, headdim, d_state, ngroups, dtype, state_len=3):
    d_inner = heads * headdim
    channels = d_inner + 2 * ngroups * d_state
    projection = _randn(batch, d_inner + channels + heads, dtype=dtype)  # z, xbc, dt slices, as in the model
    return dict(
        xbc=projection[:, d_inner:d_inner + channels], dt=projection[:, d_inner + channels:],
        conv_state=_randn(batch, channels, state_len, dtype=dtype),
        conv_weight=_randn(channels, 4, dtype=dtype, scale=0.5),
        conv_bias=_randn(channels, dtype=dtype), dt_bias=torch.rand(heads, device=DEVICE) * 4 - 5,
        A_log=torch.log(torch.rand(heads, device=DEVICE) * 15 + 1), D=_randn(heads),
        ssm_state=_randn(batch, heads, headdim, d_state), ngroups=ngroups, headdim=headdim,
    )


def _mamba1_step_inputs(inputs, x_dbl):
    return dict({k: v for k, v in inputs.items() if k != "x_proj_weight"}, x_dbl=x_dbl)


def test_kernels_are_registered():
    for name, module in (("norm_linear", decode_fused), ("gated_norm_linear", decode_fused),
                         ("mamba1_conv_xproj", decode_fused), ("mamba1_ssm_step", decode_fused_ssm),
                         ("mamba2_conv_ssm_step", decode_fused_ssm)):
        op = getattr(ops, name)
        assert op in ops.ALL_OPS and op.kernel() is getattr(module, name)


@pytest.mark.usefixtures("small_tiles")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("residual, bias", [(False, False), (True, False), (True, True)])
def test_norm_linear(dtype, batch, residual, bias):
    _compare("norm_linear", norm_linear_inputs(batch, 37, 21, dtype, residual, bias), dtype)


@pytest.mark.usefixtures("small_tiles")
def test_norm_linear_residual_in_model_dtype():
    inputs = norm_linear_inputs(3, 37, 21, torch.bfloat16)
    inputs["residual"] = inputs["residual"].to(torch.bfloat16)
    _compare("norm_linear", inputs, torch.bfloat16, residual_in_fp32=False)


@pytest.mark.usefixtures("small_tiles")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("groups, bias", [(1, True), (2, False)])
def test_gated_norm_linear(dtype, batch, groups, bias):
    _compare("gated_norm_linear", gated_inputs(batch, 60, groups, 19, dtype, bias), dtype)


@pytest.mark.usefixtures("small_tiles")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("state_len, conv_bias", [(3, True), (4, False)])  # 4: mamba_ssm's (b, d, k) layout
@pytest.mark.parametrize("max_splits", [64, 2])  # 2: the channel block grows to keep 2 splits
def test_mamba1_conv_xproj(dtype, batch, state_len, conv_bias, max_splits, monkeypatch):
    monkeypatch.setattr(decode_fused, "XPROJ_MAX_SPLITS", max_splits)
    inputs = mamba1_inputs(batch, 37, 5, 3, dtype, state_len, conv_bias)
    names = ("x", "conv_state", "conv_weight", "conv_bias", "x_proj_weight")
    conv_state = inputs["conv_state"].clone()
    _compare("mamba1_conv_xproj", {k: inputs[k] for k in names}, dtype)
    assert torch.equal(inputs["conv_state"], conv_state)  # left for mamba1_ssm_step to roll
    assert decode_fused.arrival_counter(torch.device(DEVICE)).item() == 0  # ready for the next call


@pytest.mark.usefixtures("small_tiles")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("bcdt_eps, state_len", [(None, 3), (1e-6, 3), (None, 4)])
def test_mamba1_ssm_step(dtype, batch, bcdt_eps, state_len):
    inputs = mamba1_inputs(batch, 18, 5, 3, dtype, state_len)
    x_dbl = _randn(batch, 3 + 2 * 5, dtype=dtype)
    _compare("mamba1_ssm_step", _mamba1_step_inputs(inputs, x_dbl), dtype, in_place=("conv_state", "ssm_state"),
             bcdt_eps=bcdt_eps)


@pytest.mark.usefixtures("small_tiles")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dt_limit, state_len", [((0.0, math.inf), 3), ((0.01, 0.2), 3), ((0.0, math.inf), 4)])
def test_mamba2_conv_ssm_step(dtype, batch, dt_limit, state_len):
    inputs = mamba2_inputs(batch, 4, 6, 8, 2, dtype, state_len)
    _compare("mamba2_conv_ssm_step", inputs, dtype, in_place=("conv_state", "ssm_state"), dt_limit=dt_limit)
    assert decode_fused.arrival_counter(torch.device(DEVICE)).item() == 0  # ready for the next call


TINY_MODELS = {
    "mamba": MambaConfig(model_type="mamba", d_model=16, n_layer=2, vocab_size=40, d_state=4),
    "falcon_mamba": MambaConfig(model_type="falcon_mamba", d_model=16, n_layer=2, vocab_size=40, d_state=4,
                                tie_embeddings=False),
    "mamba2": MambaConfig(model_type="mamba2", d_model=16, n_layer=2, vocab_size=40, d_state=8, headdim=8,
                          ngroups=2, dt_limit=(0.001, 0.5)),
}


def _forbid_unfused_mixer_step(monkeypatch):
    def unfused(*args, **kwargs):
        raise AssertionError("the per-op mixer step ran where the fused one should")
    monkeypatch.setattr(Mamba1Mixer, "step", unfused)
    monkeypatch.setattr(Mamba2Mixer, "step", unfused)


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter comparison; test_gpu_* covers CUDA")
@pytest.mark.parametrize("kind", list(TINY_MODELS))
@torch.no_grad()
def test_model_step_with_kernels_equals_reference_step(kind, monkeypatch):
    model = MambaLM.from_config(TINY_MODELS[kind], seed=0).eval()
    ids = torch.randint(0, 40, (2, 2))
    expected_state = model.allocate_state(2)
    expected = [model.step(ids[:, t], expected_state, fused=False) for t in range(ids.shape[1])]
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    monkeypatch.setattr(model_module, "FUSED_STEP_MAX_BATCH", 8)  # the kernels take 8 rows; policy says 1
    _forbid_unfused_mixer_step(monkeypatch)
    state = model.allocate_state(2)
    for t, logits in enumerate(expected):
        _assert_close(model.step(ids[:, t], state), logits, torch.float32, f"logits at step {t}")
    _assert_close(state.ssm, expected_state.ssm, torch.float32, "ssm state")
    _assert_close(state.conv, expected_state.conv, torch.float32, "conv state")


class _ScaledLinear(nn.Module):
    """A stand-in for an adapter-wrapped projection: not a plain nn.Linear, so no kernel may bypass it."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return 1.5 * self.linear(x)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@torch.no_grad()
def test_wrapped_projection_keeps_the_per_op_step(kind):
    model = MambaLM.from_config(TINY_MODELS[kind], seed=0).eval()
    mixer = model.backbone.layers[1].mixer
    mixer.in_proj = _ScaledLinear(mixer.in_proj)
    ids = torch.randint(0, 40, (2, 5))
    state = model.allocate_state(2)
    stepped = torch.stack([model.step(ids[:, t], state) for t in range(ids.shape[1])], dim=1)
    torch.testing.assert_close(stepped, model(ids).logits, rtol=1e-4, atol=1e-5)


# ---- the real layer shapes on the GPU (bf16): mamba-1.4b and mamba2-1.3b ---------------------------------
GPU_BATCHES = [1, 8]


@pytest.mark.gpu
@pytest.mark.parametrize("batch", GPU_BATCHES)
@pytest.mark.parametrize("n", [8192, 8512, 50280])  # Mamba-1 / Mamba-2 in_proj, lm_head
def test_gpu_norm_linear(batch, n):
    _compare("norm_linear", norm_linear_inputs(batch, 2048, n, torch.bfloat16), torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", GPU_BATCHES)
def test_gpu_gated_norm_linear(batch):
    _compare("gated_norm_linear", gated_inputs(batch, 4096, 1, 2048, torch.bfloat16), torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", GPU_BATCHES)
def test_gpu_mamba1_layer_ops(batch):
    inputs = mamba1_inputs(batch, 4096, 16, 128, torch.bfloat16)
    names = ("x", "conv_state", "conv_weight", "conv_bias", "x_proj_weight")
    _compare("mamba1_conv_xproj", {k: inputs[k] for k in names}, torch.bfloat16)
    x_dbl = _randn(batch, 128 + 2 * 16, dtype=torch.bfloat16)
    _compare("mamba1_ssm_step", _mamba1_step_inputs(inputs, x_dbl), torch.bfloat16,
             in_place=("conv_state", "ssm_state"))


@pytest.mark.gpu
@pytest.mark.parametrize("batch", GPU_BATCHES)
def test_gpu_mamba2_conv_ssm_step(batch):
    _compare("mamba2_conv_ssm_step", mamba2_inputs(batch, 64, 64, 128, 1, torch.bfloat16), torch.bfloat16,
             in_place=("conv_state", "ssm_state"))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@torch.inference_mode()
def test_gpu_fused_step_in_a_cuda_graph_equals_per_op_step(kind, monkeypatch):
    """Real widths, 2 layers, bf16, batch 3: the fused step replayed from a CUDA graph (programmatic
    dependent launch included) tracks the per-op step over several tokens."""
    config = MambaConfig(model_type=kind, d_model=2048, n_layer=2, vocab_size=50277,
                         d_state=128 if kind == "mamba2" else 16)
    model = MambaLM.from_config(config, device="cuda", dtype=torch.bfloat16, seed=0).eval()
    monkeypatch.setattr(model_module, "FUSED_STEP_MAX_BATCH", 8)  # batch 3 through the fused kernels
    tokens = torch.zeros(3, dtype=torch.long, device="cuda")
    state = model.allocate_state(3)
    for _ in range(2):  # warm-up: compile outside the capture
        model.step(tokens, state)
    state.reset_rows_(slice(None))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits = model.step(tokens, state)
    expected_state = model.allocate_state(3)
    for t in range(4):
        tokens.copy_(torch.randint(0, 50277, (3,), device="cuda"))
        graph.replay()
        expected = model.step(tokens, expected_state, fused=False)
        torch.testing.assert_close(logits.float(), expected.float(), rtol=0.05, atol=0.1,
                                   msg=lambda m: f"step {t}: {m}")
    torch.testing.assert_close(state.ssm, expected_state.ssm, rtol=0.05, atol=0.05)
