"""mamba_ssm.models.config_mamba: ``MambaConfig``, the state-spaces config.json fields as a dataclass."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mambakit import config as core


@dataclass
class MambaConfig:
    """mamba_ssm's model config (same fields and defaults); ``MambaConfig(**json.load(open("config.json")))``.

    mambakit supports the pure-Mamba models: d_intermediate=0, no attention layers, rms_norm=True;
    ``to_mambakit`` raises ConfigError (a UserError) naming any other value.
    """

    d_model: int = 2560
    d_intermediate: int = 0
    n_layer: int = 64
    vocab_size: int = 50277
    ssm_cfg: dict = field(default_factory=dict)
    attn_layer_idx: list = field(default_factory=list)
    attn_cfg: dict = field(default_factory=dict)
    rms_norm: bool = True
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True

    def to_mambakit(self) -> core.MambaConfig:
        """The same architecture as mambakit's MambaConfig (read as a state-spaces config.json)."""
        return core.MambaConfig.from_state_spaces(dataclasses.asdict(self))
