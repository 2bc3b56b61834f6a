"""Prefix caching: the recurrent state after a fixed prefix, computed once and kept on disk.

A Mamba model's whole memory of a prefix (the URIAL preamble, a system prompt, a long document) is one
fixed-size state, so caching it costs the same few megabytes whatever the prefix length, and resuming
from it gives exactly the state that prefilling the prefix gives. Entries are keyed by the model's
fingerprint and the prefix's token ids; a file is ``<key>.safetensors`` holding one state row.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from mambakit.errors import UserError
from mambakit.state import InferenceState


def model_fingerprint(model) -> str:
    """A short hash of a model's config, dtypes and a sample of every weight (tells checkpoints apart)."""
    digest = hashlib.sha256(repr(sorted(model.config.__dict__.items())).encode())
    for name, param in model.named_parameters():
        sample = param.detach().reshape(-1)[:64].float().cpu()
        digest.update(f"{name}{tuple(param.shape)}{param.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:24]


class PrefixCache:
    """States after token prefixes, one safetensors file per (model, SSM state dtype, prefix) in ``folder``."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--prefix-cache {self.folder} cannot be created ({exc.strerror}); "
                            "give a writable folder") from None
        self._fingerprints: dict[int, str] = {}
        self.hits = self.misses = 0

    def path(self, model, ids: list[int]) -> Path:
        if id(model) not in self._fingerprints:
            self._fingerprints[id(model)] = model_fingerprint(model)
        digest = hashlib.sha256(self._fingerprints[id(model)].encode())
        digest.update(str(model.ssm_state_dtype).encode())  # a bf16 state is not the fp32 state rounded later
        digest.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
        return self.folder / f"{digest.hexdigest()[:32]}.safetensors"

    def state_for(self, generator, ids: list[int], state: InferenceState | None = None, known: int = 0
                  ) -> InferenceState:
        """The one-row state after ``ids``: read from the cache, else computed with ``generator`` and stored.

        ``state`` (optional) is the state after ``ids[:known]``, from where a miss continues (it is advanced
        in place); without it a miss prefills all of ``ids`` from a zero state.
        """
        model = generator.model
        path = self.path(model, ids)
        if path.is_file():
            cached = InferenceState.load(path, device=model.device).for_model(model)
            self.hits += 1
            return cached
        if state is None:
            state, known = model.allocate_state(1), 0
        if known < len(ids):
            generator.prefill([ids[known:]], state)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        state.save(partial, metadata={"prefix_tokens": str(len(ids))})
        os.replace(partial, path)  # whole files only, even with several processes sharing the folder
        self.misses += 1
        return state
