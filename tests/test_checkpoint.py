"""Checkpoint I/O: round trips, conversion both ways, sharding, and one clear error per bad input."""
import json

import pytest
import torch

import mambakit
from mambakit import checkpoint
from mambakit.tokenizer import TokenizerError
from mambakit.checkpoint import CheckpointError
from mambakit.config import ConfigError, MambaConfig
from mambakit.convert import convert
from tiny_models import hf_model, save_hf, save_state_spaces


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return save_hf(hf_model("mamba"), tmp_path_factory.mktemp("hf"))


def _logits(model, seed=0):
    ids = torch.randint(0, 200, (1, 17), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("kind", ["mamba", "falcon_mamba", "mamba2_groups"])
@pytest.mark.parametrize("layout", ["hf", "state-spaces"])
def test_save_load_round_trip_is_exact(tmp_path, kind, layout):
    model = mambakit.load_model(save_hf(hf_model(kind), tmp_path / "src"), device="cpu")
    model.save_pretrained(tmp_path / "out", layout=layout)
    again = mambakit.load_model(tmp_path / "out", device="cpu")
    assert torch.equal(_logits(model), _logits(again))
    if model.config.tie_embeddings:
        assert again.lm_head.weight is again.backbone.embedding.weight


def test_saved_hf_layout_loads_in_transformers(tmp_path, hf_folder):
    import transformers

    model = mambakit.load_model(hf_folder, device="cpu")
    model.save_pretrained(tmp_path / "out")
    hf = transformers.MambaForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 200, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


def test_convert_both_ways(tmp_path, hf_folder):
    assert convert(hf_folder, tmp_path / "ss", layout="state-spaces")["max_abs_diff"] == 0
    assert "d_model" in json.loads((tmp_path / "ss" / "config.json").read_text())
    assert (tmp_path / "ss" / "pytorch_model.bin").is_file()
    assert convert(tmp_path / "ss", tmp_path / "back", layout="hf")["max_abs_diff"] == 0
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == "mamba"
    with pytest.raises(CheckpointError, match="not empty"):
        convert(hf_folder, tmp_path / "back", layout="hf")


def test_sharded_safetensors_and_index(tmp_path, hf_folder, monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_SHARD_SIZE", "20KB")
    model = mambakit.load_model(hf_folder, device="cpu")
    model.save_pretrained(tmp_path / "sharded")
    assert (tmp_path / "sharded" / checkpoint.SAFETENSORS_INDEX).is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    assert torch.equal(_logits(model), _logits(mambakit.load_model(tmp_path / "sharded", device="cpu")))


def test_state_spaces_config_with_unpadded_vocab(tmp_path):
    raw = dict(d_model=16, n_layer=1, vocab_size=50277, ssm_cfg={}, pad_vocab_size_multiple=8)
    config = MambaConfig.from_dict(raw)
    assert config.padded_vocab_size == 50280 and config.model_type == "mamba"
    assert MambaConfig.from_dict(config.to_state_spaces()) == config
    assert MambaConfig.from_dict(config.to_hf()).padded_vocab_size == 50280


def test_config_round_trips():
    for config in (MambaConfig(model_type="mamba2", d_model=64, n_layer=2, vocab_size=100, ngroups=8, headdim=16),
                   MambaConfig(model_type="falcon_mamba", d_model=64, n_layer=2, vocab_size=100,
                               tie_embeddings=False)):
        again = MambaConfig.from_dict(config.to_state_spaces())
        assert (again.model_type, again.ngroups, again.tie_embeddings) == (config.model_type, config.ngroups,
                                                                          config.tie_embeddings)
        hf = MambaConfig.from_dict(config.to_hf())
        assert (hf.model_type, hf.ngroups, hf.d_inner) == (config.model_type, config.ngroups, config.d_inner)


@pytest.mark.parametrize("raw, field", [
    (dict(model_type="mamba", hidden_size=16, num_hidden_layers=1, vocab_size=10, frobnicate=1), "frobnicate"),
    (dict(model_type="gpt2", hidden_size=16), "model_type"),
    (dict(model_type="mamba2", hidden_size=16, num_hidden_layers=1, vocab_size=10, num_heads=3, head_dim=8),
     "num_heads"),
    (dict(model_type="mamba", hidden_size=16, num_hidden_layers=1, vocab_size=10, intermediate_size=5),
     "intermediate_size"),
    (dict(d_model=16, n_layer=1, vocab_size=10, ssm_cfg={"layer": "Mamba3"}), "ssm_cfg.layer"),
    (dict(d_model=16, n_layer=1, vocab_size=10, attn_layer_idx=[1]), "attn_layer_idx"),
    (dict(d_model=16, n_layer=0, vocab_size=10), "n_layer"),
    (dict(model_type="mamba", num_hidden_layers=1, vocab_size=10), "hidden_size"),
    (dict(foo=1), "neither"),
])
def test_bad_config_names_the_field(tmp_path, raw, field):
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=field):
        MambaConfig.from_file(tmp_path / "config.json")


def _broken_copy(tmp_path, hf_folder):
    target = tmp_path / "broken"
    target.mkdir()
    for item in hf_folder.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


def test_bad_checkpoints_get_one_clear_error(tmp_path, hf_folder):
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        mambakit.load_model(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="is not in the local cache"):
        mambakit.load_model("state-spaces/mamba-130m")  # HF_HUB_OFFLINE=1 in tests
    with pytest.raises(CheckpointError, match="unknown preset"):
        mambakit.load_model("mambakit:nope")
    broken = _broken_copy(tmp_path, hf_folder)
    (broken / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        mambakit.load_model(broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        mambakit.load_model(broken)
    (broken / "config.json").write_text((hf_folder / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        mambakit.load_model(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        mambakit.load_model(broken)


def test_key_and_shape_mismatches_are_named(tmp_path, hf_folder):
    model = mambakit.load_model(hf_folder, device="cpu")
    state = model.state_dict()
    folder = tmp_path / "bad"
    folder.mkdir()
    model.config.save(folder / "config.json", layout="state-spaces")
    missing = {k: v for k, v in state.items() if k != "backbone.layers.1.mixer.D"}
    torch.save(missing, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="lack backbone.layers.1.mixer.D"):
        mambakit.load_model(folder)
    torch.save({**state, "backbone.layers.0.mixer.extra": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="unexpected weight backbone.layers.0.mixer.extra"):
        mambakit.load_model(folder)
    torch.save({**state, "backbone.layers.0.mixer.A_log": torch.zeros(3, 3)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"A_log has shape \(3, 3\)"):
        mambakit.load_model(folder)


def test_load_returns_model_tokenizer_and_template(tmp_path, hf_folder, shared_data):
    tokenizer_dir = shared_data / "tokenizers" / "gpt-neox-20b"
    loaded = mambakit.load("mambakit:tiny-random", device="cpu")
    assert loaded.model.config.vocab_size == len(loaded.tokenizer) == 257
    assert loaded.chat_template is None
    with pytest.raises(CheckpointError, match="tokenizer has 50277 tokens"):
        mambakit.load(hf_folder, device="cpu", tokenizer=tokenizer_dir)
    save_state_spaces(hf_model("mamba"), tmp_path / "ss")
    with pytest.raises(TokenizerError, match="--tokenizer"):
        mambakit.load(tmp_path / "ss", device="cpu")  # no tokenizer in the folder, default not reachable offline
