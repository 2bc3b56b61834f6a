"""MambaConfig: one dataclass for Mamba-1, Mamba-2, Falcon-Mamba and Codestral-Mamba.

Reads and writes both config.json layouts:
- state-spaces (mamba_ssm): ``d_model``, ``n_layer``, ``vocab_size``, ``ssm_cfg``, ``pad_vocab_size_multiple``, …
- HF transformers: ``model_type`` mamba / mamba2 / falcon_mamba with ``hidden_size``, ``state_size``, …

Unknown fields and inconsistent values raise ``ConfigError`` naming the field.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from mambakit.errors import UserError

MODEL_TYPES = ("mamba", "falcon_mamba", "mamba2")


class ConfigError(UserError):
    """A config.json that mambakit cannot build a model from; the message names the field."""


@dataclass
class MambaConfig:
    """Architecture of a Mamba-family language model.

    ``model_type``: "mamba" (Mamba-1), "falcon_mamba" (Mamba-1 with weightless RMSNorm on B, C and Δ),
    or "mamba2" (Mamba-2 / Codestral-Mamba). ``vocab_size`` is the tokenizer's vocabulary; the embedding
    has ``padded_vocab_size`` rows (a multiple of ``pad_vocab_size_multiple``).
    """

    model_type: str = "mamba"
    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50277
    pad_vocab_size_multiple: int = 8
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"  # Mamba-1 only: "auto" = ceil(d_model / 16)
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj bias
    headdim: int = 64  # Mamba-2 only
    ngroups: int = 1  # Mamba-2 only
    chunk_size: int = 256  # Mamba-2 only
    dt_limit: tuple[float, float] = (0.0, math.inf)  # Mamba-2 only
    mixer_rms_eps: float = 1e-6  # Falcon-Mamba only
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    bos_token_id: int | None = 0
    eos_token_id: int | None = 0
    pad_token_id: int | None = 0
    extra: dict = field(default_factory=dict)  # fields kept only to be written back (e.g. init hyperparameters)

    def __post_init__(self):
        self.validate()

    # ---- derived sizes ---------------------------------------------------------------------------
    @property
    def is_mamba2(self) -> bool:
        return self.model_type == "mamba2"

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def dt_rank_value(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    @property
    def padded_vocab_size(self) -> int:
        multiple = max(1, self.pad_vocab_size_multiple)
        return math.ceil(self.vocab_size / multiple) * multiple

    def validate(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"model_type {self.model_type!r} is not supported; use one of {', '.join(MODEL_TYPES)}")
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "pad_vocab_size_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field {name} must be a positive integer, got {value!r}")
        if self.dt_rank != "auto" and (not isinstance(self.dt_rank, int) or self.dt_rank <= 0):
            raise ConfigError(f"config field dt_rank must be 'auto' or a positive integer, got {self.dt_rank!r}")
        if self.is_mamba2:
            if self.d_inner % self.headdim:
                raise ConfigError(
                    f"config field headdim={self.headdim} does not divide d_inner = expand * d_model = {self.d_inner}"
                )
            if self.nheads % self.ngroups:
                raise ConfigError(f"config field ngroups={self.ngroups} does not divide the {self.nheads} heads")
            if self.chunk_size <= 0:
                raise ConfigError(f"config field chunk_size must be positive, got {self.chunk_size}")

    # ---- state-spaces layout ---------------------------------------------------------------------
    @classmethod
    def from_state_spaces(cls, raw: dict) -> "MambaConfig":
        raw = dict(raw)
        _reject_unknown(raw, _STATE_SPACES_KEYS, "state-spaces")
        ssm_cfg = dict(raw.get("ssm_cfg") or {})
        layer = ssm_cfg.pop("layer", "Mamba1")
        if layer not in ("Mamba1", "Mamba2"):
            raise ConfigError(f"ssm_cfg.layer {layer!r} is not supported; use 'Mamba1' or 'Mamba2'")
        if raw.get("attn_layer_idx"):
            raise ConfigError("config field attn_layer_idx: hybrid attention layers are not supported")
        if raw.get("d_intermediate", 0):
            raise ConfigError("config field d_intermediate: MLP layers between mixers are not supported (use 0)")
        if raw.get("rms_norm", True) is False:
            raise ConfigError("config field rms_norm=false (LayerNorm) is not supported")
        is_mamba2 = layer == "Mamba2"
        allowed = _SSM_CFG_MAMBA2 if is_mamba2 else _SSM_CFG_MAMBA1
        _reject_unknown(ssm_cfg, allowed, "ssm_cfg")
        if ssm_cfg.get("d_ssm") not in (None, ssm_cfg.get("expand", 2) * raw["d_model"]):
            raise ConfigError("ssm_cfg.d_ssm: a partial SSM width (d_ssm < d_inner) is not supported")
        if ssm_cfg.get("norm_before_gate"):
            raise ConfigError("ssm_cfg.norm_before_gate=true is not supported")
        kwargs = dict(
            model_type="mamba2" if is_mamba2 else ("falcon_mamba" if "mixer_rms_eps" in ssm_cfg else "mamba"),
            d_model=raw["d_model"], n_layer=raw["n_layer"], vocab_size=raw["vocab_size"],
            pad_vocab_size_multiple=raw.get("pad_vocab_size_multiple", 8),
            residual_in_fp32=raw.get("residual_in_fp32", True), tie_embeddings=raw.get("tie_embeddings", True),
            d_state=ssm_cfg.get("d_state", 128 if is_mamba2 else 16), d_conv=ssm_cfg.get("d_conv", 4),
            expand=ssm_cfg.get("expand", 2), conv_bias=ssm_cfg.get("conv_bias", True), bias=ssm_cfg.get("bias", False),
        )
        if is_mamba2:
            kwargs.update(
                headdim=ssm_cfg.get("headdim", 64), ngroups=ssm_cfg.get("ngroups", 1),
                chunk_size=ssm_cfg.get("chunk_size", 256),
                dt_limit=_float_pair(ssm_cfg.get("dt_limit", (0.0, math.inf)), "ssm_cfg.dt_limit"),
            )
        else:
            kwargs.update(dt_rank=ssm_cfg.get("dt_rank", "auto"), mixer_rms_eps=ssm_cfg.get("mixer_rms_eps", 1e-6))
        return cls(**kwargs)

    def to_state_spaces(self) -> dict:
        if self.is_mamba2:
            ssm_cfg = dict(layer="Mamba2", d_state=self.d_state, d_conv=self.d_conv, expand=self.expand,
                           headdim=self.headdim, ngroups=self.ngroups, chunk_size=self.chunk_size,
                           conv_bias=self.conv_bias, bias=self.bias)
            if tuple(self.dt_limit) != (0.0, math.inf):
                ssm_cfg["dt_limit"] = list(self.dt_limit)
        else:
            ssm_cfg = dict(layer="Mamba1", d_state=self.d_state, d_conv=self.d_conv, expand=self.expand,
                           dt_rank=self.dt_rank, conv_bias=self.conv_bias, bias=self.bias)
            if self.model_type == "falcon_mamba":
                ssm_cfg["mixer_rms_eps"] = self.mixer_rms_eps  # mambakit's extension: weightless B/C/Δ norms
        return dict(d_model=self.d_model, d_intermediate=0, n_layer=self.n_layer, vocab_size=self.vocab_size,
                    ssm_cfg=ssm_cfg, attn_layer_idx=[], attn_cfg={}, rms_norm=True,
                    residual_in_fp32=self.residual_in_fp32, fused_add_norm=True,
                    pad_vocab_size_multiple=self.pad_vocab_size_multiple, tie_embeddings=self.tie_embeddings)

    # ---- HF transformers layout ------------------------------------------------------------------
    @classmethod
    def from_hf(cls, raw: dict) -> "MambaConfig":
        raw = dict(raw)
        model_type = raw.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ConfigError(f"config field model_type {model_type!r} is not a Mamba model; expected one of "
                              f"{', '.join(MODEL_TYPES)}")
        is_mamba2 = model_type == "mamba2"
        _reject_unknown(raw, _HF_MAMBA2_KEYS if is_mamba2 else _HF_MAMBA1_KEYS, f"HF {model_type}")
        if raw.get("hidden_act", "silu") not in ("silu", "swish"):
            raise ConfigError(f"config field hidden_act={raw['hidden_act']!r} is not supported (only silu)")
        if raw.get("rms_norm", True) is False or raw.get("norm_before_gate", False):
            raise ConfigError("config fields rms_norm=false / norm_before_gate=true are not supported")
        hidden = raw["hidden_size"]
        expand = raw.get("expand", 2)
        if raw.get("intermediate_size") not in (None, expand * hidden):
            raise ConfigError(f"config field intermediate_size={raw['intermediate_size']} is inconsistent with "
                              f"expand * hidden_size = {expand * hidden}")
        kwargs = dict(
            model_type=model_type, d_model=hidden, n_layer=raw["num_hidden_layers"], vocab_size=raw["vocab_size"],
            pad_vocab_size_multiple=1, d_state=raw.get("state_size", 128 if is_mamba2 else 16),
            d_conv=raw.get("conv_kernel", 4), expand=expand, conv_bias=raw.get("use_conv_bias", True),
            bias=raw.get("use_bias", False), norm_epsilon=raw.get("layer_norm_epsilon", 1e-5),
            residual_in_fp32=raw.get("residual_in_fp32", True),
            tie_embeddings=raw.get("tie_word_embeddings", not is_mamba2),
            bos_token_id=_first(raw.get("bos_token_id")), eos_token_id=_first(raw.get("eos_token_id")),
            pad_token_id=raw.get("pad_token_id"),
            extra={k: raw[k] for k in _HF_INIT_KEYS if k in raw},
        )
        if is_mamba2:
            headdim = raw.get("head_dim", 64)
            if "num_heads" in raw and raw["num_heads"] * headdim != expand * hidden:
                raise ConfigError(f"config field num_heads={raw['num_heads']} times head_dim={headdim} must equal "
                                  f"expand * hidden_size = {expand * hidden}")
            kwargs.update(headdim=headdim, ngroups=raw.get("n_groups", 1), chunk_size=raw.get("chunk_size", 256),
                          dt_limit=_float_pair(raw.get("time_step_limit", (0.0, math.inf)), "time_step_limit"))
        else:
            kwargs.update(dt_rank=raw.get("time_step_rank", "auto"), mixer_rms_eps=raw.get("mixer_rms_eps", 1e-6))
        return cls(**kwargs)

    def to_hf(self) -> dict:
        architecture = {"mamba": "MambaForCausalLM", "falcon_mamba": "FalconMambaForCausalLM",
                        "mamba2": "Mamba2ForCausalLM"}[self.model_type]
        out = dict(model_type=self.model_type, architectures=[architecture], vocab_size=self.padded_vocab_size,
                   hidden_size=self.d_model, num_hidden_layers=self.n_layer, state_size=self.d_state,
                   conv_kernel=self.d_conv, expand=self.expand, intermediate_size=self.d_inner,
                   use_conv_bias=self.conv_bias, use_bias=self.bias, hidden_act="silu",
                   layer_norm_epsilon=self.norm_epsilon, residual_in_fp32=self.residual_in_fp32,
                   tie_word_embeddings=self.tie_embeddings, bos_token_id=self.bos_token_id,
                   eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id, **self.extra)
        if self.is_mamba2:
            out.update(num_heads=self.nheads, head_dim=self.headdim, n_groups=self.ngroups,
                       chunk_size=self.chunk_size, time_step_limit=list(self.dt_limit))
            out.pop("intermediate_size")
        else:
            out.update(time_step_rank=self.dt_rank_value)
            if self.model_type == "falcon_mamba":
                out["mixer_rms_eps"] = self.mixer_rms_eps
        return out

    # ---- files -----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict) -> "MambaConfig":
        """Either layout, detected from its fields."""
        if not isinstance(raw, dict):
            raise ConfigError("config.json must hold a JSON object")
        if "model_type" in raw or "hidden_size" in raw:
            return cls.from_hf(raw)
        if "d_model" in raw:
            return cls.from_state_spaces(raw)
        raise ConfigError("config.json is neither HF layout (model_type, hidden_size, …) nor state-spaces layout "
                          "(d_model, n_layer, ssm_cfg, …)")

    @classmethod
    def from_file(cls, path: str | Path) -> "MambaConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no config.json at {path}")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc})") from None
        try:
            return cls.from_dict(raw)
        except KeyError as exc:
            raise ConfigError(f"{path}: required field {exc.args[0]} is missing") from None

    def save(self, path: str | Path, layout: str = "hf") -> None:
        data = self.to_hf() if layout == "hf" else self.to_state_spaces()
        Path(path).write_text(json.dumps(data, indent=2) + "\n")

    def replace(self, **changes) -> "MambaConfig":
        return dataclasses.replace(self, **changes)

    # ---- what transformers' Trainer callbacks (TensorBoard, W&B, MLflow) read from ``model.config`` ----
    def to_dict(self) -> dict:
        return self.to_hf()

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _first(value):
    return value[0] if isinstance(value, list) and value else value


def _float_pair(value, name: str) -> tuple[float, float]:
    """dt_limit as two floats; accepts numbers, "inf" strings and HF 5's {"__float__": "Infinity"}."""
    def one(item):
        if isinstance(item, dict) and "__float__" in item:
            item = item["__float__"]
        return float(item)

    try:
        low, high = (one(item) for item in value)
    except (TypeError, ValueError):
        raise ConfigError(f"config field {name} must be two numbers [min, max], got {value!r}") from None
    return low, high


def _reject_unknown(raw: dict, allowed: frozenset, where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"unknown {where} config field {unknown[0]!r}"
                          + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                          + "; remove it or check that this is a Mamba checkpoint")


_STATE_SPACES_KEYS = frozenset({
    "d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx", "attn_cfg", "rms_norm",
    "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings",
})
_SSM_CFG_COMMON = {"d_state", "d_conv", "expand", "conv_bias", "bias", "dt_min", "dt_max", "dt_init_floor",
                   "use_fast_path", "layer_idx", "device", "dtype"}
_SSM_CFG_MAMBA1 = frozenset(_SSM_CFG_COMMON | {"dt_rank", "dt_init", "dt_scale", "mixer_rms_eps"})
_SSM_CFG_MAMBA2 = frozenset(_SSM_CFG_COMMON | {
    "headdim", "ngroups", "chunk_size", "dt_limit", "d_ssm", "A_init_range", "D_has_hdim", "rmsnorm",
    "norm_before_gate", "learnable_init_states", "activation", "sequence_parallel", "process_group",
})
# Generic PretrainedConfig fields and init-time hyperparameters: accepted, do not change the network.
_HF_GENERIC_KEYS = {
    "_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "torch_dtype", "id2label", "label2id",
    "is_encoder_decoder", "output_attentions", "output_hidden_states", "problem_type", "return_dict",
    "transformers_version", "use_cache", "model_type", "n_layer", "d_model", "bos_token_id", "eos_token_id",
    "pad_token_id", "tie_word_embeddings", "hidden_act", "initializer_range", "rescale_prenorm_residual",
    "use_mambapy", "use_associative_scan", "residual_in_fp32", "layer_norm_epsilon", "vocab_size", "hidden_size",
    "num_hidden_layers", "state_size", "conv_kernel", "expand", "use_bias", "use_conv_bias", "intermediate_size",
    "time_step_floor", "time_step_max", "time_step_min", "time_step_rank", "rms_norm", "norm_before_gate",
    "emb_initializer_range", "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings",
}
_HF_INIT_KEYS = ("initializer_range", "rescale_prenorm_residual", "time_step_floor", "time_step_max",
                 "time_step_min", "time_step_scale", "time_step_init_scheme")
_HF_MAMBA1_KEYS = frozenset(_HF_GENERIC_KEYS | {"time_step_scale", "time_step_init_scheme", "mixer_rms_eps"})
_HF_MAMBA2_KEYS = frozenset(_HF_GENERIC_KEYS | {"num_heads", "head_dim", "n_groups", "chunk_size",
                                                "time_step_limit"})
