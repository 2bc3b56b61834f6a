"""The recurrent state of a whole model for a batch: per-layer conv and SSM states in two tensors.

A Mamba model's entire memory of the past is this fixed-size state (it does not grow with the
context). Stacking the layers makes a batch row a "slot" that can be copied, reset, saved and loaded.

Shapes: L layers, b batch rows; Mamba-1: conv (L, b, d, k-1), ssm (L, b, d, n);
Mamba-2: conv (L, b, d + 2·g·n, k-1), ssm (L, b, h, p, n). The conv state is in the model's dtype; the SSM
state in ``model.ssm_state_dtype`` (fp32 unless asked otherwise). Every op computes the recurrence in fp32
and rounds only when it stores the state.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mambakit.errors import UserError


@dataclass
class InferenceState:
    conv: torch.Tensor
    ssm: torch.Tensor

    @classmethod
    def allocate(cls, model, batch_size: int, device=None, dtype=None, ssm_dtype=None) -> "InferenceState":
        """Zero state for ``batch_size`` rows of ``model`` (a MambaLM), on its device; conv in its dtype (or
        ``dtype``), SSM in its ``ssm_state_dtype`` (or ``ssm_dtype``)."""
        first = model.backbone.layers[0].mixer
        conv_shape, ssm_shape = first.state_shapes()
        n_layer = len(model.backbone.layers)
        ref = model.backbone.embedding.weight
        device = device or ref.device
        conv = torch.zeros(n_layer, batch_size, *conv_shape, device=device, dtype=dtype or ref.dtype)
        ssm = torch.zeros(n_layer, batch_size, *ssm_shape, device=device, dtype=ssm_dtype or model.ssm_state_dtype)
        return cls(conv, ssm)

    @property
    def batch_size(self) -> int:
        return self.conv.shape[1]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(conv_state, ssm_state) views of one layer; writing to them writes to this state."""
        return self.conv[index], self.ssm[index]

    def clone(self) -> "InferenceState":
        return InferenceState(self.conv.clone(), self.ssm.clone())

    def rows(self, index) -> "InferenceState":
        """A new state holding the selected batch rows (index: int list, slice or bool/long tensor)."""
        return InferenceState(self.conv[:, index].clone(), self.ssm[:, index].clone())

    def copy_rows_(self, rows, source: "InferenceState") -> None:
        """Write ``source``'s rows into ``rows`` of this state (slots in a serving batch)."""
        self.conv[:, rows] = source.conv.to(self.conv.dtype)
        self.ssm[:, rows] = source.ssm

    def reset_rows_(self, rows) -> None:
        self.conv[:, rows] = 0
        self.ssm[:, rows] = 0

    def expand(self, batch_size: int) -> "InferenceState":
        """A one-row state repeated to ``batch_size`` rows (e.g. one cached prefix for many prompts)."""
        if self.batch_size != 1:
            raise ValueError(f"expand needs a one-row state, this one has {self.batch_size} rows")
        return InferenceState(self.conv.expand(-1, batch_size, *self.conv.shape[2:]).clone(),
                              self.ssm.expand(-1, batch_size, *self.ssm.shape[2:]).clone())

    def save(self, path: str | Path, metadata: dict | None = None) -> None:
        """Write to a safetensors file (``metadata``: str -> str, e.g. the prefix text and model name)."""
        save_file({"conv": self.conv.contiguous(), "ssm": self.ssm.contiguous()}, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path, device=None) -> "InferenceState":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no saved state at {path}")
        tensors = load_file(str(path), device=str(device or "cpu"))
        if set(tensors) != {"conv", "ssm"}:
            raise UserError(f"{path} is not a mambakit state file (expected tensors 'conv' and 'ssm')")
        return cls(tensors["conv"], tensors["ssm"])

    def check_compatible(self, model) -> None:
        """Raise UserError when this state was not made for ``model``'s shapes."""
        expected = InferenceState.allocate(model, 1, device="meta")
        if self.conv.shape[2:] != expected.conv.shape[2:] or self.ssm.shape[2:] != expected.ssm.shape[2:] \
                or self.conv.shape[0] != expected.conv.shape[0]:
            raise UserError(
                f"state shapes conv {tuple(self.conv.shape)} / ssm {tuple(self.ssm.shape)} do not fit this model "
                f"(conv (L, b, {expected.conv.shape[2:]}), ssm (L, b, {expected.ssm.shape[2:]})); "
                "it was saved for another model"
            )

    def for_model(self, model) -> "InferenceState":
        """This (loaded) state checked against ``model``'s shapes and cast to its conv and SSM state dtypes."""
        self.check_compatible(model)
        return InferenceState(self.conv.to(model.dtype), self.ssm.to(model.ssm_state_dtype))


def write_final_state(result, destination: torch.Tensor | None):
    """An op's result, for a mixer that may carry a state: with ``destination`` (the op was called with
    ``return_final_state=True``) its final state is copied into ``destination`` in place and the output
    alone is returned; without one, ``result`` is the output."""
    if destination is None:
        return result
    output, final = result
    destination.copy_(final)
    return output
