"""Tokenizers: the checkpoint's own, the GPT-NeoX-20B default of the state-spaces models, or bytes.

Everything is a ``transformers`` fast tokenizer, so encode/decode, special tokens, chat templates and
``save_pretrained`` behave the same whatever the model.
"""
from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mambakit.errors import UserError

DEFAULT_TOKENIZER = "EleutherAI/gpt-neox-20b"  # what the state-spaces Mamba checkpoints were trained with
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
EOS_TOKEN = "<|endoftext|>"


class TokenizerError(UserError):
    """A tokenizer that cannot be found or loaded."""


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """A tokenizer from a local folder, a tokenizer.json file, or a hub id (cached; HF_HUB_OFFLINE honoured)."""
    path = Path(name_or_path).expanduser()
    try:
        if path.is_file() and path.suffix == ".json":
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_path) if not path.exists() else str(path))
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokenizerError(
            f"cannot load tokenizer {str(name_or_path)!r}: {first_line}. Pass --tokenizer with a local folder "
            "holding tokenizer.json (offline machines cannot fetch it from the hub)"
        ) from None
    if tokenizer.eos_token is None and EOS_TOKEN in tokenizer.get_vocab():
        tokenizer.eos_token = EOS_TOKEN
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: id 0 is ``<|endoftext|>``, ids 1..256 are the 256 bytes (no merges).

    Any text round-trips exactly; built in code, so it needs no file and no network.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_symbols = sorted(alphabet, key=lambda symbol: _BYTE_OF_SYMBOL[symbol])
    vocab = {EOS_TOKEN: 0, **{symbol: index + 1 for index, symbol in enumerate(byte_symbols)}}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([EOS_TOKEN])
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                   pad_token=EOS_TOKEN, unk_token=None)


def _byte_symbols() -> dict[str, int]:
    """GPT-2's byte -> printable symbol map, inverted (symbol -> byte value)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


_BYTE_OF_SYMBOL = _byte_symbols()
