"""The decode step captured in CUDA graphs: one graph per batch-size bucket, reused across calls.

A decode step of a Mamba model is ~5 small kernels per layer; launched one by one from Python, the
launches cost more than the work at batch 1. Replaying a captured graph launches them all at once.

A graph reads and writes fixed memory, so each bucket owns a static token buffer, a static state
(the recurrent state of up to ``bucket`` rows) and static logits. ``DecodeSession`` moves a caller's
state into the bucket's static state once, steps in place, and writes it back when it ends.

A server keeps one persistent state whose rows are request slots; a stepper *bound* to it captures each
bucket's graph directly on that state's leading rows, so a step copies nothing but the tokens
(``step_rows``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from mambakit.model import MambaLM
from mambakit.state import InferenceState

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def capture_graph(fn, pool, state: InferenceState | None):
    """Capture ``fn()``, which advances ``state``, into a new CUDA graph sharing memory pool ``pool`` (None:
    a new pool). Two warm-up calls run first on a side stream (Triton compiles outside the capture);
    ``state`` (None: nothing to restore) is put back as it was before them.

    Returns (graph, what fn returned in the capture, pool bytes): the growth of the reserved memory during
    the capture. A replay allocates nothing, so the allocator's peak statistics never see the memory a
    graph uses; benchmarks add these bytes to them.
    """
    saved = state.clone() if state is not None else None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # what the warm-ups and earlier eager work cached is not the pool's
    reserved = torch.cuda.memory_reserved()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        result = fn()
    if state is not None:
        state.conv.copy_(saved.conv)
        state.ssm.copy_(saved.ssm)
    torch.cuda.synchronize()
    return graph, result, torch.cuda.memory_reserved() - reserved


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    tokens: torch.Tensor  # (bucket,) int64
    state: InferenceState  # bucket rows
    logits: torch.Tensor  # (bucket, padded vocab)


class CudaGraphStepper:
    """``model.step`` as CUDA graphs, one per (batch-size bucket, SSM state dtype): a session decodes in the
    dtype of the state it is given. ``capture_seconds`` records the first-call cost of each."""

    def __init__(self, model: MambaLM, bound_state: InferenceState | None = None):
        """``bound_state``: capture on this persistent state's leading rows instead of private buffers."""
        self.model = model
        self.bound_state = bound_state
        self._graphs: dict[tuple[int, torch.dtype], _Captured] = {}
        self._pool = None
        self.capture_seconds: dict[tuple[int, torch.dtype], float] = {}
        self.pool_bytes = 0  # memory the graphs hold (see capture_graph)

    @staticmethod
    def supported(model: MambaLM) -> bool:
        return model.device.type == "cuda"

    def bucket(self, batch_size: int) -> int:
        limit = self.bound_state.batch_size if self.bound_state is not None else None
        for size in BUCKETS:
            if size >= batch_size:
                return size if limit is None else min(size, limit)
        return batch_size  # beyond the largest bucket: an exact-size graph

    def _capture(self, bucket: int, ssm_dtype: torch.dtype) -> _Captured:
        started = time.perf_counter()
        tokens = torch.zeros(bucket, dtype=torch.long, device=self.model.device)
        if self.bound_state is None:
            state = InferenceState.allocate(self.model, bucket, ssm_dtype=ssm_dtype)
        else:  # the live rows: capture_graph puts them back after its warm-up steps
            state = InferenceState(self.bound_state.conv[:, :bucket], self.bound_state.ssm[:, :bucket])
        with torch.inference_mode():
            graph, logits, pool_bytes = capture_graph(lambda: self.model.step(tokens, state), self._pool, state)
        self._pool = graph.pool()
        self.pool_bytes += pool_bytes
        self.capture_seconds[bucket, ssm_dtype] = time.perf_counter() - started
        return _Captured(graph, tokens, state, logits)

    def _graph(self, rows: int, ssm_dtype: torch.dtype) -> _Captured:
        key = self.bucket(rows), ssm_dtype
        if key not in self._graphs:
            self._graphs[key] = self._capture(*key)
        return self._graphs[key]

    def session(self, state: InferenceState) -> "DecodeSession":
        """Start decoding ``state``'s rows through the graph of their bucket and dtype (unbound steppers)."""
        return DecodeSession(self._graph(state.batch_size, state.ssm.dtype), state)

    def step_rows(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bound steppers: advance the bound state's first ``len(tokens)`` rows by ``tokens`` (b,) -> logits (b, V).

        Rows up to the bucket size also step (their inputs are whatever the token buffer holds); callers
        keep unused rows free and reset a row when a new sequence takes it.
        """
        captured = self._graph(tokens.shape[0], self.bound_state.ssm.dtype)
        captured.tokens[: tokens.shape[0]].copy_(tokens)
        captured.graph.replay()
        return captured.logits[: tokens.shape[0]]


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
