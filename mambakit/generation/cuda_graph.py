"""The decode step captured in CUDA graphs: one graph per batch-size bucket, reused across calls.

A decode step of a Mamba model is ~5 small kernels per layer; launched one by one from Python, the
launches cost more than the work at batch 1. Replaying a captured graph launches them all at once.

A graph reads and writes fixed memory, so each bucket owns a static token buffer, a static state
(the recurrent state of up to ``bucket`` rows) and static logits. ``DecodeSession`` moves a caller's
state into the bucket's static state once, steps in place, and writes it back when it ends.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from mambakit.model import MambaLM
from mambakit.state import InferenceState

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    tokens: torch.Tensor  # (bucket,) int64
    state: InferenceState  # bucket rows
    logits: torch.Tensor  # (bucket, padded vocab)


class CudaGraphStepper:
    """``model.step`` as CUDA graphs. ``capture_seconds`` records the first-call cost per bucket."""

    def __init__(self, model: MambaLM):
        self.model = model
        self._graphs: dict[int, _Captured] = {}
        self._pool = None
        self.capture_seconds: dict[int, float] = {}

    @staticmethod
    def supported(model: MambaLM) -> bool:
        return model.device.type == "cuda"

    def bucket(self, batch_size: int) -> int:
        for size in BUCKETS:
            if size >= batch_size:
                return size
        return batch_size  # beyond the largest bucket: an exact-size graph

    def _capture(self, bucket: int) -> _Captured:
        started = time.perf_counter()
        tokens = torch.zeros(bucket, dtype=torch.long, device=self.model.device)
        state = InferenceState.allocate(self.model, bucket)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):  # warm-up: Triton compiles/autotunes outside the capture
                self.model.step(tokens, state)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool), torch.inference_mode():
            logits = self.model.step(tokens, state)
        self._pool = graph.pool()
        torch.cuda.synchronize()
        self.capture_seconds[bucket] = time.perf_counter() - started
        return _Captured(graph, tokens, state, logits)

    def session(self, state: InferenceState) -> "DecodeSession":
        """Start decoding ``state``'s rows through the graph of their bucket."""
        bucket = self.bucket(state.batch_size)
        if bucket not in self._graphs:
            self._graphs[bucket] = self._capture(bucket)
        return DecodeSession(self._graphs[bucket], state)


class DecodeSession:
    """Steps ``state``'s rows through a captured graph; ``close()`` writes the advanced state back."""

    def __init__(self, captured: _Captured, state: InferenceState):
        self.captured, self.state = captured, state
        self.rows = state.batch_size
        captured.state.reset_rows_(slice(None))
        captured.state.copy_rows_(slice(0, self.rows), state)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (b,) -> logits (b, padded vocab) (a view of the static buffer, valid until the next step)."""
        self.captured.tokens[: self.rows].copy_(tokens)
        self.captured.graph.replay()
        return self.captured.logits[: self.rows]

    def close(self) -> None:
        self.state.conv.copy_(self.captured.state.conv[:, : self.rows])
        self.state.ssm.copy_(self.captured.state.ssm[:, : self.rows])
