"""Prefill through CUDA graphs: a single prompt's forwards replayed from graphs captured once per length.

A prefill forward launches ~16 kernels per layer, and Python needs longer to launch them than the GPU
needs to run them unless the forward is long: on the H200, a 2,048-token mamba-1.4b forward took 64.6 ms
of wall time for ~21 ms of kernels (benchmarks/step_profile.py). Replaying a captured graph launches a
whole forward at once.

A graph has fixed shapes, so a prompt of ``length`` tokens is cut into pieces (``split_prompt``): full
chunks of ``chunk_size`` tokens, then powers of two, largest first, down to ``MIN_GRAPH_PIECE``, then a
last piece shorter than that. Every piece but the last short one replays the graph of its length, so a
prompt needs at most log2(chunk_size / MIN_GRAPH_PIECE) + 2 different graphs; the short piece runs
eagerly, its launches overlapping the GPU work of the graphs queued before it. The state carries
everything between pieces, as between chunks.

Only batch-1 prompts without padding take graphs (``PrefillGraphs`` owns a static one-row state; the
caller's state is copied in and out around the pieces). The graphs share one memory pool, about the
activations of one chunk-sized forward, kept while the ``PrefillGraphs`` lives.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from mambakit.generation.cuda_graph import capture_graph
from mambakit.model import MambaLM
from mambakit.state import InferenceState

MIN_GRAPH_PIECE = 256


def split_prompt(length: int, chunk_size: int, min_piece: int = MIN_GRAPH_PIECE) -> list[int]:
    """Piece lengths, in order, summing to ``length``: full chunks, then descending powers of two of at
    least ``min_piece`` tokens, then what is left (< ``min_piece``), if anything."""
    pieces = [chunk_size] * (length // chunk_size)
    rest = length % chunk_size
    while rest >= min_piece:
        piece = 1 << (rest.bit_length() - 1)
        pieces.append(piece)
        rest -= piece
    if rest:
        pieces.append(rest)
    return pieces


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    ids: torch.Tensor  # (1, length) int64, the graph's input
    logits: torch.Tensor  # (1, padded vocab), the last position's logits


class PrefillGraphs:
    """Batch-1 prefill forwards of ``model`` as CUDA graphs, one per (piece length, SSM state dtype), captured
    on first use; the pieces run on a state of the dtype of the caller's (as eager chunks would).

    ``capture_seconds`` records each length's first-call cost (warm-up, kernel compilation, capture);
    ``pool_bytes`` the memory the graphs hold (see ``capture_graph``).
    """

    def __init__(self, model: MambaLM):
        self.model = model
        self._graphs: dict[tuple[int, torch.dtype], _Captured] = {}
        self._pool = None
        self._states: dict[torch.dtype, InferenceState] = {}  # the graphs' input/output state, per dtype
        self.capture_seconds: dict[tuple[int, torch.dtype], float] = {}
        self.pool_bytes = 0

    @staticmethod
    def supported(model: MambaLM) -> bool:
        return model.device.type == "cuda"

    @torch.inference_mode()
    def run(self, ids: torch.Tensor, state: InferenceState, chunk_size: int) -> torch.Tensor:
        """ids (1, length) on the model's device, cut by ``split_prompt(length, chunk_size)``; ``state``
        (one row) advances in place. Returns the last position's logits (1, padded vocab)."""
        dtype = state.ssm.dtype
        if dtype not in self._states:
            self._states[dtype] = InferenceState.allocate(self.model, 1, ssm_dtype=dtype)
        static = self._states[dtype]
        static.copy_rows_(slice(None), state)
        start, logits = 0, None
        for piece in split_prompt(ids.shape[1], chunk_size):
            if piece >= MIN_GRAPH_PIECE:
                captured = self._graph(piece, dtype)
                captured.ids.copy_(ids[:, start:start + piece])
                captured.graph.replay()
                logits = captured.logits
            else:
                logits = self.model(ids[:, start:start + piece], state=static, logits_to_keep=1).logits[:, -1]
            start += piece
        state.conv.copy_(static.conv)
        state.ssm.copy_(static.ssm)
        return logits.clone()  # the graph's buffer is overwritten by its next replay

    def _graph(self, length: int, dtype: torch.dtype) -> _Captured:
        if (length, dtype) not in self._graphs:
            self._graphs[length, dtype] = self._capture(length, dtype)
        return self._graphs[length, dtype]

    def _capture(self, length: int, dtype: torch.dtype) -> _Captured:
        started = time.perf_counter()
        state = self._states[dtype]
        ids = torch.zeros(1, length, dtype=torch.long, device=self.model.device)
        graph, logits, pool_bytes = capture_graph(
            lambda: self.model(ids, state=state, logits_to_keep=1).logits[:, -1], self._pool, state)
        self._pool = graph.pool()
        self.pool_bytes += pool_bytes
        self.capture_seconds[length, dtype] = time.perf_counter() - started
        return _Captured(graph, ids, logits)
