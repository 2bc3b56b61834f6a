"""mamba_ssm's Mamba and Mamba2 blocks from mambakit.compat: inside a user's own network they train; their
recurrent step and cached forward equal the parallel forward; names, shapes and constructor options.
``pytest -m gpu`` runs the training and step tests again on CUDA (mambakit's Triton kernels)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mambakit.compat import Mamba, Mamba2, mamba_inner_fn
from mambakit.compat.errors import CompatError
from mambakit.compat.utils.generation import InferenceParams

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
BLOCKS = {
    "mamba": lambda layer_idx=None: Mamba(d_model=16, d_state=8, layer_idx=layer_idx),
    "mamba2": lambda layer_idx=None: Mamba2(d_model=16, d_state=8, headdim=8, ngroups=2, chunk_size=4,
                                            layer_idx=layer_idx),
}


class DelayNet(nn.Module):
    """A user's network: input projection, one mamba_ssm block with a residual, a linear head."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.embed, self.block, self.head = nn.Linear(2, 16), block, nn.Linear(16, 2)

    def forward(self, x):
        hidden = self.embed(x)
        return self.head(hidden + self.block(F.layer_norm(hidden, hidden.shape[-1:])))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", list(BLOCKS))
def test_block_trains_inside_a_user_network(kind, device):
    """Task: output the input of 3 steps earlier, which only a working recurrence (and its gradients) learns."""
    torch.manual_seed(0)
    net = DelayNet(BLOCKS[kind]()).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    inputs = torch.randn(16, 12, 2, device=device)
    targets = F.pad(inputs, (0, 0, 3, 0))[:, :12]
    losses = []
    for _ in range(25):
        loss = F.mse_loss(net(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::5]
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.block.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", list(BLOCKS))
@torch.no_grad()
def test_step_and_cached_forward_equal_forward(kind, device):
    block = BLOCKS[kind](layer_idx=3).to(device).eval()
    x = torch.randn(2, 11, 16, device=device)
    tolerance = dict(rtol=1e-4, atol=1e-5) if device == "cpu" else dict(rtol=6e-4, atol=2e-3)
    expected = block(x)
    conv_state, ssm_state = block.allocate_inference_cache(batch_size=2, max_seqlen=11)
    assert conv_state.shape[-1] == block.d_conv and ssm_state.dtype == torch.float32
    stepped = []
    for t in range(11):
        out, conv_state, ssm_state = block.step(x[:, t:t + 1], conv_state, ssm_state)
        stepped.append(out)
    torch.testing.assert_close(torch.cat(stepped, 1), expected, **tolerance)
    # mamba_ssm's decode protocol: prefill at seqlen_offset 0, then one token per call, then a longer chunk
    params = InferenceParams(max_seqlen=11, max_batch_size=2)
    pieces = [block(x[:, :4], inference_params=params)]
    for t in range(4, 7):
        params.seqlen_offset = t
        pieces.append(block(x[:, t:t + 1], inference_params=params))
    params.seqlen_offset = 7
    pieces.append(block(x[:, 7:], inference_params=params))
    torch.testing.assert_close(torch.cat(pieces, 1), expected, **tolerance)
    cached_conv, cached_ssm = params.key_value_memory_dict[3]
    torch.testing.assert_close(cached_ssm, ssm_state, **tolerance)
    torch.testing.assert_close(cached_conv[..., 1:], conv_state[..., 1:], **tolerance)
    params.seqlen_offset = 0  # a new prefill restarts from zero whatever the cache holds
    torch.testing.assert_close(block(x[:, :4], inference_params=params), expected[:, :4], **tolerance)


def test_mamba_forward_is_mamba_inner_fn_after_in_proj():
    """mamba_ssm's fast path: Mamba.forward == out of mamba_inner_fn on in_proj's output, same weights."""
    block = BLOCKS["mamba"]()
    x = torch.randn(2, 7, 16)
    xz = block.in_proj(x).transpose(1, 2)
    fused = mamba_inner_fn(xz, block.conv1d.weight, block.conv1d.bias, block.x_proj.weight, block.dt_proj.weight,
                           block.out_proj.weight, block.out_proj.bias, -torch.exp(block.A_log.float()), None, None,
                           block.D.float(), delta_bias=block.dt_proj.bias.float(), delta_softplus=True)
    torch.testing.assert_close(fused, block(x), rtol=1e-4, atol=1e-5)


def test_parameter_names_shapes_and_markers_are_mamba_ssm_s():
    mamba = Mamba(d_model=16, d_state=8, d_conv=3, expand=2, dt_rank=4, bias=True)
    assert {k: tuple(v.shape) for k, v in mamba.state_dict().items()} == {
        "in_proj.weight": (64, 16), "in_proj.bias": (64,), "conv1d.weight": (32, 1, 3), "conv1d.bias": (32,),
        "x_proj.weight": (20, 32), "dt_proj.weight": (32, 4), "dt_proj.bias": (32,), "A_log": (32, 8), "D": (32,),
        "out_proj.weight": (16, 32), "out_proj.bias": (16,)}
    mamba2 = Mamba2(d_model=16, d_state=8, headdim=8, ngroups=2)
    assert {k: tuple(v.shape) for k, v in mamba2.state_dict().items()} == {
        "in_proj.weight": (2 * 32 + 2 * 2 * 8 + 4, 16), "conv1d.weight": (32 + 32, 1, 4), "conv1d.bias": (64,),
        "dt_bias": (4,), "A_log": (4,), "D": (4,), "norm.weight": (32,), "out_proj.weight": (16, 32)}
    assert mamba.A_log._no_weight_decay and mamba.D._no_weight_decay and mamba.dt_proj.bias._no_reinit
    assert mamba2.dt_bias._no_weight_decay and mamba2.nheads == 4 and mamba2.d_inner == 32
    assert torch.equal(mamba.A_log, torch.log(torch.arange(1, 9.0)).repeat(32, 1))
    constant = Mamba(d_model=16, dt_init="constant", dt_scale=2.0)
    assert torch.all(constant.dt_proj.weight == 2.0 / 1.0)  # dt_rank = ceil(16 / 16) = 1
    half = Mamba2(d_model=16, headdim=8, d_state=8, dtype=torch.bfloat16, conv_init=0.1)
    assert half.in_proj.weight.dtype == torch.bfloat16 and half.A_log.dtype == torch.float32
    assert bool(half.conv1d.weight.abs().max() <= 0.1)


def test_mamba2_flattened_input_and_cu_seqlens():
    block = BLOCKS["mamba2"]().eval()
    x = torch.randn(1, 10, 16)
    with torch.no_grad():
        seq_idx = torch.tensor([[0] * 4 + [1] * 6], dtype=torch.int32)
        packed = block(x, seq_idx=seq_idx)
        torch.testing.assert_close(block(x, cu_seqlens=torch.tensor([0, 4, 10])), packed)
        torch.testing.assert_close(packed[:, 4:], block(x[:, 4:]), rtol=1e-4, atol=1e-5)
        flat = block(x[0], seqlen=10)
    assert flat.shape == (10, 16)
    torch.testing.assert_close(flat, block(x)[0])


@pytest.mark.parametrize("make, message", [
    (lambda: Mamba2(d_model=16, headdim=8, rmsnorm=False), "rmsnorm=False"),
    (lambda: Mamba2(d_model=16, headdim=8, D_has_hdim=True), "D_has_hdim=True"),
    (lambda: Mamba2(d_model=16, headdim=8, d_ssm=16), "d_ssm=16"),
    (lambda: Mamba(d_model=16, dt_init="normal"), "dt_init='normal'"),
])
def test_unsupported_options_raise_one_clear_error(make, message):
    with pytest.raises(CompatError, match=message):
        make()


def test_cached_forward_needs_layer_idx_and_step_one_token():
    block = BLOCKS["mamba"]()
    with pytest.raises(CompatError, match="layer_idx"):
        block(torch.randn(1, 3, 16), inference_params=InferenceParams(3, 1))
    with pytest.raises(CompatError, match="one token at a time"):
        block.step(torch.randn(1, 2, 16), *block.allocate_inference_cache(1, 2))
