"""Checkpoints: find them (local folder, hub id, built-in preset), read them (.bin / .safetensors, sharded
or not, state-spaces or HF key layout) and write them (safetensors, tied weights handled).

mambakit's own parameter names are the state-spaces ones; HF's only differ in ``backbone.embeddings``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from mambakit.config import ConfigError, MambaConfig
from mambakit.errors import UserError
from mambakit.model import MambaLM

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_BIN, TORCH_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN, TORCH_BIN_INDEX)
HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.jinja"]
MAX_SHARD_SIZE = "5GB"


class CheckpointError(UserError):
    """A checkpoint that cannot be found, read or matched to its config; the message says which and why."""


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local folder for ``name_or_path``: the folder itself, or a hub snapshot (cached; HF_HUB_OFFLINE honoured)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the checkpoint folder that holds config.json")
        return path
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise CheckpointError(f"no checkpoint folder at {path} (and {name!r} is not a hub id like 'owner/model')")
    return _download(name)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except RepositoryNotFoundError:
        raise CheckpointError(f"no model {repo_id!r} on the hub (check the name, or pass a local folder)") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{repo_id!r} is not in the local cache and cannot be downloaded (offline or HF_HUB_OFFLINE=1); "
            "download it once with network access, or pass a local folder"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise CheckpointError(f"downloading {repo_id!r} failed: {exc}") from None


def read_config(folder: Path) -> MambaConfig:
    return MambaConfig.from_file(folder / "config.json")


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint in ``folder`` (CPU, memory-mapped where the format allows)."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            break
    else:
        raise CheckpointError(f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}")
    if name.endswith(".index.json"):
        try:
            weight_map = json.loads((folder / name).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{folder / name} is not a valid shard index ({exc})") from None
        files = sorted(set(weight_map.values()))
    else:
        files = [name]
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(_read_weights_file(folder / file))
    return tensors


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing (named in the shard index)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # corrupt or truncated files raise many exception types
        raise CheckpointError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    if isinstance(data.get("state_dict"), dict):  # training-framework checkpoints nest the weights
        data = data["state_dict"]
    return data


def to_mambakit_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename HF keys to mambakit's (= state-spaces') keys."""
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith("backbone.embeddings."):
            key = "backbone.embedding." + key[len("backbone.embeddings."):]
        renamed[key] = value
    return renamed


def build_model(config: MambaConfig, state_dict: dict[str, torch.Tensor], device=None, dtype=None) -> MambaLM:
    """A MambaLM holding ``state_dict``'s weights; every key and shape is checked first."""
    state_dict = to_mambakit_keys(state_dict)
    with torch.device("meta"):
        model = MambaLM(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        state_dict.pop("lm_head.weight", None)
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing:
        raise CheckpointError(f"the weights lack {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1
                              else "") + " that config.json asks for; config and weights do not belong together")
    if unexpected:
        raise CheckpointError(f"unexpected weight {unexpected[0]}" + (f" and {len(unexpected) - 1} more"
                              if len(unexpected) > 1 else "") + "; config and weights do not belong together")
    for key, shape in expected.items():
        if state_dict[key].shape != shape:
            raise CheckpointError(f"weight {key} has shape {tuple(state_dict[key].shape)} but config.json implies "
                                  f"{tuple(shape)}")
    if dtype is None:
        dtype = state_dict["backbone.embedding.weight"].dtype
    if config.tie_embeddings:
        state_dict["lm_head.weight"] = state_dict["backbone.embedding.weight"]
    model.load_state_dict(state_dict, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.backbone.embedding.weight
    return model.to(device=device or "cpu", dtype=dtype)


def load_model(folder: Path, device=None, dtype=None) -> MambaLM:
    try:
        config = read_config(folder)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return build_model(config, read_state_dict(folder), device=device, dtype=dtype)


def save_model(model: MambaLM, folder: str | os.PathLike, layout: str = "hf") -> Path:
    """Write config.json and the weights: ``hf`` -> model.safetensors (sharded past 5 GB, tied head left out,
    HF key names); ``state-spaces`` -> pytorch_model.bin with every key, as mamba_ssm reads it."""
    if layout not in ("hf", "state-spaces"):
        raise CheckpointError(f"layout must be 'hf' or 'state-spaces', got {layout!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save(folder / "config.json", layout=layout)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if layout == "state-spaces":
        if model.config.tie_embeddings:
            state["lm_head.weight"] = state["backbone.embedding.weight"]
        torch.save(state, folder / TORCH_BIN)
        return folder
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")
    state = {("backbone.embeddings." + k[len("backbone.embedding."):]) if k.startswith("backbone.embedding.") else k: v
             for k, v in state.items()}
    _save_safetensors(state, folder)
    return folder


def _save_safetensors(state: dict[str, torch.Tensor], folder: Path) -> None:
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=MAX_SHARD_SIZE)
    for stale in [*folder.glob("model*.safetensors"), folder / SAFETENSORS_INDEX]:
        stale.unlink(missing_ok=True)
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state[k] for k in keys}, str(folder / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))
