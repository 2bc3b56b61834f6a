"""``mambakit convert``: rewrite a checkpoint in HF or state-spaces layout, then prove it by its logits."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from mambakit import checkpoint
from mambakit.loading import resolve_dtype
from mambakit.tokenizer import TOKENIZER_FILES

CHECK_TOKENS = 64
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
EXTRA_FILES = (*TOKENIZER_FILES, "special_tokens_map.json", "chat_template.jinja", "generation_config.json")


def convert(src, dst, layout: str, dtype=None, overwrite: bool = False) -> dict:
    """Write ``src`` to folder ``dst`` in ``layout`` ('hf' or 'state-spaces'), copying its tokenizer files.

    The written checkpoint is loaded back and its logits on random tokens compared with the source's;
    a mismatch raises CheckpointError. Returns {'max_abs_diff': float}.
    """
    source = checkpoint.resolve(src)
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise checkpoint.CheckpointError(f"destination {dst} is a file; give a folder")
    if dst.resolve() == source.resolve():
        raise checkpoint.CheckpointError("destination is the source folder; give another folder")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise checkpoint.CheckpointError(f"destination {dst} is not empty; choose a new folder or pass --overwrite")
    model = checkpoint.load_model(source, dtype=resolve_dtype(dtype, torch.device("cpu")))
    model.save_pretrained(dst, layout=layout)
    for name in EXTRA_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, dst / name)
    reloaded = checkpoint.load_model(dst)
    ids = torch.randint(0, model.config.vocab_size, (1, CHECK_TOKENS), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits.float()
        actual = reloaded(ids).logits.float()
    diff = (expected - actual).abs().max().item()
    if diff > TOLERANCE.get(model.dtype, 1e-4):
        raise checkpoint.CheckpointError(f"converted checkpoint's logits differ from the source by {diff:.3g}")
    return {"max_abs_diff": diff}
