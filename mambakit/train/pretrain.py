"""A new model for pretraining: its tokenizer (bytes, or a byte-level BPE trained on the data) and its
randomly initialised MambaLM built from the recipe's ``model_config``."""
from __future__ import annotations

import re

from mambakit.config import ConfigError, MambaConfig
from mambakit.model import MambaLM
from mambakit.tokenizer import EOS_TOKEN, byte_tokenizer, load_tokenizer
from mambakit.train.recipes import RecipeError

BPE_SPEC = re.compile(r"bpe-(\d+)")


def new_tokenizer(spec: str | None, texts: list[str]):
    """``bytes`` (default): the 257-token byte tokenizer; ``bpe-N``: a byte-level BPE of N tokens trained on
    ``texts`` (id 0 = <|endoftext|>); anything else: an existing tokenizer (folder, tokenizer.json, hub id)."""
    if spec in (None, "bytes"):
        return byte_tokenizer()
    match = BPE_SPEC.fullmatch(spec)
    if match:
        return train_bpe(texts, int(match.group(1)))
    return load_tokenizer(spec)


def train_bpe(texts: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style: any text round-trips) with ``vocab_size`` tokens, trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 258:
        raise RecipeError(f"tokenizer bpe-{vocab_size}: a byte-level BPE needs at least 258 tokens")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                   pad_token=EOS_TOKEN, unk_token=None)


def new_model(model_config: dict | None, tokenizer, seed: int) -> MambaLM:
    """A MambaLM of the recipe's architecture over ``tokenizer``'s vocabulary (reference initialisation)."""
    if not model_config:
        raise RecipeError("pretraining needs model_config in the recipe (e.g. d_model: 256, n_layer: 8)")
    eos = tokenizer.eos_token_id
    try:
        config = MambaConfig(**{"vocab_size": len(tokenizer), "bos_token_id": eos, "eos_token_id": eos,
                                "pad_token_id": eos, **model_config})
    except TypeError as exc:
        raise RecipeError(f"model_config: {exc} (see mambakit.MambaConfig for the fields)") from None
    except ConfigError as exc:
        raise RecipeError(f"model_config: {exc}") from None
    if config.vocab_size < len(tokenizer):
        raise RecipeError(f"model_config.vocab_size={config.vocab_size} is smaller than the tokenizer "
                          f"({len(tokenizer)} tokens)")
    return MambaLM.from_config(config, seed=seed)
