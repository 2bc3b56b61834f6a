"""Exact perplexity of long text, and the loss by token position (does the model hold up past 2k tokens?).

Each text is scored from the BOS/EOS token to its end in one pass over the recurrent state, chunk by chunk
(``mambakit.eval.scoring``): every token is predicted from everything before it, however long the text.
The per-position losses of all texts are averaged in bins of token positions and plotted, with the
model's training length marked.

Shapes: n tokens of a text; nll (n,) fp32, nll[i] = -log p(token_i | prefix token, tokens < i).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from mambakit.errors import UserError
from mambakit.eval.scoring import DEFAULT_BATCH_SIZE, DEFAULT_TOKENS_PER_FORWARD, ContinuationScorer, prefix_token_id
from mambakit.generation import Generator

DEFAULT_BIN_SIZE = 256
DEFAULT_TRAIN_LENGTH = 2048  # the state-spaces Mamba checkpoints were trained on 2k-token sequences


class PerplexityError(UserError):
    """A text that cannot be scored (empty), or a bad report option."""


@dataclass
class TextLoss:
    name: str
    nll: torch.Tensor  # (n,) fp32 per-token negative log-likelihood

    @property
    def tokens(self) -> int:
        return self.nll.numel()

    @property
    def mean_nll(self) -> float:
        return float(self.nll.double().mean())

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)


def text_losses(generator: Generator, texts: dict[str, str], max_tokens: int | None = None,
                batch_size: int = DEFAULT_BATCH_SIZE, tokens_per_forward: int = DEFAULT_TOKENS_PER_FORWARD
                ) -> list[TextLoss]:
    """Per-token losses of each text (name -> text), each cut to its first ``max_tokens`` tokens if given."""
    tokenizer = generator.tokenizer
    encoded = {}
    for name, text in texts.items():
        ids = tokenizer.encode(text, add_special_tokens=False)[:max_tokens]
        if not ids:
            raise PerplexityError(f"{name} has no text to score; give a non-empty file")
        encoded[name] = ids
    scorer = ContinuationScorer(generator, batch_size=batch_size, tokens_per_forward=tokens_per_forward)
    prefix = [prefix_token_id(tokenizer)]
    scores = scorer.score([(prefix, ids) for ids in encoded.values()])
    return [TextLoss(name, -scored.logprobs) for name, scored in zip(encoded, scores)]


def overall_perplexity(losses: list[TextLoss]) -> float:
    """exp of the mean loss over every token of every text (longer texts weigh more)."""
    total = sum(float(loss.nll.double().sum()) for loss in losses)
    return math.exp(total / sum(loss.tokens for loss in losses))


def loss_by_position(losses: list[TextLoss], bin_size: int = DEFAULT_BIN_SIZE) -> list[dict]:
    """Mean loss of the tokens at positions [start, end) over all texts that reach them, one dict per bin."""
    if bin_size < 1:
        raise PerplexityError(f"the bin size must be >= 1 token, got {bin_size}")
    bins = []
    for start in range(0, max(loss.tokens for loss in losses), bin_size):
        pieces = [loss.nll[start:start + bin_size] for loss in losses if loss.tokens > start]
        values = torch.cat(pieces).double()
        bins.append({"start": start, "end": start + bin_size, "mean_nll": float(values.mean()),
                     "tokens": values.numel(), "texts": len(pieces)})
    return bins


def plot_loss_by_position(bins: list[dict], path: Path, train_length: int | None, title: str) -> Path:
    """Line plot of mean loss against token position (bin centres), the training length as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    axes.plot([(b["start"] + b["end"]) / 2 for b in bins], [b["mean_nll"] for b in bins], marker=".")
    if train_length:
        axes.axvline(train_length, color="grey", linestyle="--", label=f"training length ({train_length})")
        axes.legend()
    axes.set_xlabel("token position")
    axes.set_ylabel("mean loss (nats / token)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(losses: list[TextLoss], out_dir: Path, model_name: str, bin_size: int = DEFAULT_BIN_SIZE,
                 train_length: int | None = DEFAULT_TRAIN_LENGTH) -> tuple[Path, Path]:
    """Write ``perplexity.json`` (per text and per position bin) and ``loss_by_position.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bins = loss_by_position(losses, bin_size)
    report = {
        "model": model_name,
        "perplexity": overall_perplexity(losses),
        "texts": [{"name": loss.name, "tokens": loss.tokens, "mean_nll": loss.mean_nll,
                   "perplexity": loss.perplexity} for loss in losses],
        "bin_size": bin_size,
        "train_length": train_length,
        "loss_by_position": bins,
    }
    json_path = out_dir / "perplexity.json"
    json_path.write_text(json.dumps(report, indent=2))
    png_path = plot_loss_by_position(bins, out_dir / "loss_by_position.png", train_length,
                                     f"{model_name}: loss by token position")
    return json_path, png_path
