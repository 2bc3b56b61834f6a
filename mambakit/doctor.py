"""``mambakit doctor``: versions, devices, and which backend each op takes on each device and why."""
from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import torch

from mambakit import ops

PACKAGES = ("mambakit", "torch", "triton", "transformers", "tokenizers", "safetensors", "huggingface_hub",
            "accelerate", "peft", "datasets", "lm_eval")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def triton_cache_dir() -> Path:
    """Where Triton keeps compiled kernels between runs (TRITON_CACHE_DIR, else under TRITON_HOME or ~)."""
    try:
        import triton

        return Path(triton.knobs.cache.dir)
    except (ImportError, AttributeError):  # no Triton, or one older than its knobs module
        home = Path(os.environ.get("TRITON_HOME", Path.home()))
        return Path(os.environ.get("TRITON_CACHE_DIR") or home / ".triton" / "cache")


def _cache_line() -> str:
    folder = triton_cache_dir()
    files = [f for f in folder.rglob("*") if f.is_file()] if folder.is_dir() else []
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    return (f"triton cache     {folder} ({len(files)} files, {size_mb:.1f} MB; "
            "kernels compile once, then load from here)")


def report() -> str:
    lines = [f"python {platform.python_version()} on {platform.platform()}"]
    lines += [f"{name:16s} {_version(name)}" for name in PACKAGES]
    devices = ["cpu"]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            lines.append(f"cuda:{index}          {props.name}, {props.total_memory / 2**30:.0f} GiB, "
                         f"sm_{props.major}{props.minor}")
        devices.append("cuda")
    else:
        lines.append("cuda             not available (ops run on the CPU reference)")
    lines.append(_cache_line())
    lines.append(f"backend request  {ops.BACKEND_ENV}={ops.requested_backend()}")
    for device in devices:
        lines.append(f"ops on {device}:")
        for name, backend, reason in ops.describe_backends(device):
            lines.append(f"  {name:24s} {backend:9s} {reason}")
    return "\n".join(lines)
