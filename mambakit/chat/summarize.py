"""Summarize (or answer a question about) a long document: feed it in chunks, then ask.

The document is one user message and the request a second one, so the state after the document is a
conversation prefix: with a prefix cache, asking several questions about one document prefills it once.
Prefill runs in chunks of ``generator.prefill_chunk_size`` tokens; the state carries everything between
chunks, so memory stays flat however long the document is.
"""
from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from mambakit.chat.session import ChatSession
from mambakit.errors import UserError

DEFAULT_REQUEST = "Summarize the document above in a few sentences."


@dataclass
class DocumentReport:
    """What feeding the document cost."""

    document_tokens: int  # tokens of the rendered document message
    context_tokens: int  # every token fed so far (system prompt and document)
    prefill_seconds: float  # feeding the system prompt and the document (or reading them from the cache)
    peak_memory_bytes: int  # CUDA: peak allocated during the prefill; CPU: the process's peak resident set
    peak_memory_kind: str


def read_document(path: str | Path) -> str:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"no document at {path}; give a text file to summarize")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise UserError(f"{path} is empty; give a text file with something to summarize")
    return text


def feed_document(session: ChatSession, document: str) -> DocumentReport:
    """Add ``document`` as a user message to ``session`` and measure it (tokens, time, peak memory)."""
    device = session.generator.model.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    fed_before = len(session.fed_ids)
    started = time.perf_counter()
    session.add([{"role": "user", "content": document}])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak, kind = torch.cuda.max_memory_allocated(device), "CUDA allocated"
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "process peak RSS"
    elapsed = time.perf_counter() - started
    return DocumentReport(len(session.fed_ids) - fed_before, len(session.fed_ids), elapsed, peak, kind)


def summarize(session: ChatSession, document: str, question: str | None = None
              ) -> tuple[DocumentReport, Iterator[str]]:
    """Feed ``document``, then stream the answer to ``question`` (default: a request for a summary).

    Returns (the document's report, the reply's text pieces); ``session.last_turn`` has the reply's counts
    once the pieces are consumed.
    """
    report = feed_document(session, document)
    return report, session.respond(question or DEFAULT_REQUEST)
