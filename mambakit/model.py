"""MambaLM: embedding -> [RMSNorm -> mixer, residual add] x n_layer -> norm_f -> lm_head.

Module names follow the state-spaces checkpoints (``backbone.embedding``, ``backbone.layers.{i}.norm``,
``backbone.layers.{i}.mixer.*``, ``backbone.norm_f``, ``lm_head``). The residual stream is kept in fp32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.utils import ModelOutput

from mambakit import ops
from mambakit.config import MambaConfig
from mambakit.layers.mamba1 import Mamba1Mixer
from mambakit.layers.mamba2 import Mamba2Mixer
from mambakit.layers.norm import RMSNorm
from mambakit.layers.projection import project
from mambakit.state import InferenceState

# Largest batch the fused decode step takes. Measured on the H200 (benchmarks/decode_probe.py, mamba-1.4b
# shape, one graphed step): batch 1 fused 1823 us vs per-op 1946 us; batch 8 fused 7985 us vs per-op
# 2161 us (its CUDA-core GEMVs fall to ~370 GB/s with 8 rows), so only batch 1 takes it.
FUSED_STEP_MAX_BATCH = 1


def _fused_step_allowed(fused: bool, batch: int, projections) -> bool:
    """Whether a step may take the fused decode ops: asked for, a small batch, and only plain nn.Linear
    projections (the fused kernels read their weights directly; a LoRA-wrapped or quantised layer keeps
    its own forward, as in layers/projection.py)."""
    return fused and batch <= FUSED_STEP_MAX_BATCH and all(type(layer) is nn.Linear for layer in projections)


@dataclass
class MambaLMOutput(ModelOutput):
    """loss: scalar (with labels); logits: (b, l', padded vocab) fp32-compatible; state: InferenceState."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    state: InferenceState | None = None


class MambaBlock(nn.Module):
    """x <- x + mixer(RMSNorm(x)), written as the fused (add, norm) of the reference implementation."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_epsilon, config.residual_in_fp32)
        self.mixer = (Mamba2Mixer if config.is_mamba2 else Mamba1Mixer)(config)

    def forward(self, hidden, residual, state=None, mask=None, seq_idx=None):
        """hidden, residual: (b, l, d_model) -> (mixer output, new residual); residual None for the first block."""
        normed, residual = self.norm(hidden, residual)
        return self.mixer(normed, state=state, mask=mask, seq_idx=seq_idx), residual

    def step(self, hidden, residual, conv_state, ssm_state, fused: bool = True):
        """One token: hidden, residual (b, d_model) -> (mixer output, new residual); ``fused``: through the
        mixer's fused decode step where allowed (see ``_fused_step_allowed``), else op by op."""
        if _fused_step_allowed(fused, hidden.shape[0], self.mixer.fused_step_projections):
            return self.mixer.fused_step(hidden, residual, self.norm, conv_state, ssm_state)
        normed, residual = self.norm(hidden, residual)
        return self.mixer.step(normed, conv_state, ssm_state), residual


class Backbone(nn.Module):
    def __init__(self, config: MambaConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(MambaBlock(config) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.norm_epsilon, config.residual_in_fp32)


class MambaLM(nn.Module):
    """A Mamba-family causal language model (Mamba-1, Mamba-2, Falcon-Mamba, Codestral-Mamba)."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight
        self.gradient_checkpointing = False
        # dtype of the SSM states that ``allocate_state`` makes: fp32 by default; bf16 halves the state traffic
        # of a decode step (mamba_ssm's choice), with rounding that accumulates over long generations
        self.ssm_state_dtype = torch.float32

    @classmethod
    def from_config(cls, config: MambaConfig, device=None, dtype=None, seed: int | None = None) -> "MambaLM":
        """A randomly initialised model (the reference initialisation), deterministic for a given ``seed``."""
        if seed is not None:
            torch.manual_seed(seed)
        model = cls(config)
        model.reset_parameters()
        return model.to(device=device, dtype=dtype)

    @torch.no_grad()
    def reset_parameters(self, initializer_range: float = 0.02):
        nn.init.normal_(self.backbone.embedding.weight, std=initializer_range)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=initializer_range)
        for block in self.backbone.layers:
            mixer = block.mixer
            for linear in (mixer.in_proj, mixer.out_proj):
                nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
            mixer.out_proj.weight /= math.sqrt(self.config.n_layer)  # GPT-2 style prenorm-residual rescale
            mixer.reset_parameters()

    # ---- Hugging Face Trainer / PEFT conveniences ------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        """Recompute each block in the backward pass instead of storing its activations."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self):
        self.gradient_checkpointing = False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.backbone.embedding

    @property
    def device(self) -> torch.device:
        return self.backbone.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.embedding.weight.dtype

    def allocate_state(self, batch_size: int) -> InferenceState:
        return InferenceState.allocate(self, batch_size)

    # ---- forward (parallel over the sequence) ----------------------------------------------------
    def forward(self, input_ids, labels=None, attention_mask=None, state: InferenceState | None = None,
                seq_idx=None, return_state: bool = False, logits_to_keep: int = 0,
                return_logits: bool | None = None) -> MambaLMOutput:
        """input_ids (b, l) -> MambaLMOutput.

        labels (b, l): next-token targets, shifted inside (labels[:, t+1] is the target of position t),
        -100 ignored; the loss never materialises the (b·l, vocab) logits, and logits are then only
        computed when ``return_logits=True``. attention_mask (b, l): 0 at (left) padding, which leaves the
        state untouched. state: start state, updated in place and returned (``return_state`` allocates a
        zero one). seq_idx (b, l) int32: packed-sequence ids, the state restarts where it changes.
        logits_to_keep: only the last that many positions get logits (0 = all).
        """
        hidden = self.backbone.embedding(input_ids)
        if state is None and return_state:
            state = self.allocate_state(input_ids.shape[0])
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.to(torch.float32)
        if seq_idx is not None:
            seq_idx = seq_idx.to(torch.int32)
        residual = None
        for index, block in enumerate(self.backbone.layers):
            layer_state = state.layer(index) if state is not None else None
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden, residual = checkpoint(block, hidden, residual, layer_state, mask, seq_idx,
                                              use_reentrant=False)
            else:
                hidden, residual = block(hidden, residual, layer_state, mask, seq_idx)
        hidden, _ = self.backbone.norm_f(hidden, residual)
        loss = None
        if labels is not None:
            loss = self.loss(hidden, labels)
            if return_logits is None:
                return_logits = False
        logits = None
        if return_logits is not False:
            logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        return MambaLMOutput(loss=loss, logits=logits, state=state)

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy: hidden (b, l, d_model) at t predicts labels (b, l) at t+1."""
        targets = labels[:, 1:].reshape(-1).to(hidden.device)
        return ops.linear_cross_entropy(hidden[:, :-1].reshape(-1, hidden.shape[-1]), self.lm_head.weight, targets)

    # ---- recurrent step (one token per row) ------------------------------------------------------
    def step(self, input_ids: torch.Tensor, state: InferenceState, fused: bool = True) -> torch.Tensor:
        """input_ids (b,) -> logits (b, padded vocab); ``state`` advances by one token in place.

        ``fused`` (default): each layer's step and norm_f + lm_head go through the fused decode ops where
        allowed (a few kernels per layer); False: op by op (same numbers on CPU, for comparison).
        """
        hidden = self.backbone.embedding(input_ids)
        residual = None
        for index, block in enumerate(self.backbone.layers):
            hidden, residual = block.step(hidden, residual, *state.layer(index), fused=fused)
        norm_f = self.backbone.norm_f
        if _fused_step_allowed(fused, hidden.shape[0], (self.lm_head,)):
            logits, _ = ops.norm_linear(hidden, residual, norm_f.weight, norm_f.eps, self.lm_head.weight,
                                        self.lm_head.bias, residual_in_fp32=norm_f.residual_in_fp32)
            return logits
        hidden, _ = norm_f(hidden, residual)
        return project(self.lm_head, hidden)

    def save_pretrained(self, folder, tokenizer=None, layout: str = "hf"):
        """Write the model (safetensors in HF layout, or state-spaces layout) and, if given, the tokenizer."""
        from mambakit.checkpoint import save_model

        folder = save_model(self, folder, layout=layout)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))
        return folder

    @classmethod
    def from_pretrained(cls, name_or_path, device="auto", dtype="auto") -> "MambaLM":
        """The model alone from a folder, hub id or preset (see ``mambakit.load`` for model + tokenizer)."""
        from mambakit.loading import load_model

        return load_model(name_or_path, device=device, dtype=dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
