"""The batch scheduler: every running sequence owns one row ("slot") of a fixed-size state, and one
decode step advances all of them together.

A Mamba sequence's whole memory is its state row (fixed size, whatever its length), so continuous
batching is simple: a new request is prefilled on its own state rows, copied into free slots, and from
the next step on decodes with the others; a finished or cancelled sequence frees its slot at once.

Threads: the model runs on one engine thread; the web server's event loop submits ``Request`` objects
and receives their events (text pieces, finishes, errors) through an ``asyncio.Queue`` per request.
The waiting queue is bounded (``QueueFull`` -> HTTP 429). Every decode step goes through ``step``, the
one place to swap in a CUDA-graph-captured step.

Shapes: S slots, V padded vocabulary; state conv (L, S, ...), ssm (L, S, ...); ``tokens`` (S,) long.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import traceback
from dataclasses import dataclass, field

import torch

from mambakit.errors import UserError
from mambakit.generation import Generator, LogitProcessor, SamplingParams
from mambakit.generation.cuda_graph import CudaGraphStepper
from mambakit.generation.row_text import RowText
from mambakit.state import InferenceState

GREEDY = SamplingParams(temperature=0)


class QueueFull(UserError):
    """More requests are waiting than the server queues; the client should retry later (HTTP 429)."""


@dataclass
class Request:
    """One API request: prompts (token ids) x ``n`` choices; choice ``p * n + j`` is prompt p's j-th sample.

    Events put on ``events``: ("text", choice, piece), ("finish", choice, (finish_reason, tokens)),
    ("error", None, message).
    """

    prompts: list[list[int]]
    params: SamplingParams
    n: int = 1
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n

    def cancel(self) -> None:
        """Stop generating for this request (its slots are freed at the next step)."""
        self.cancelled = True

    def emit(self, kind: str, choice: int | None, payload) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, choice, payload))
        except RuntimeError:  # the event loop is gone (server shutting down)
            self.cancelled = True


class Sequence:
    """One choice of one request while it decodes: its slot, sampler, text and token count."""

    def __init__(self, request: Request, choice: int, prompt: list[int], tokenizer, vocab_limit: int, device):
        params = request.params
        if params.seed is not None and request.n > 1:  # n samples from one seed: distinct, reproducible
            params = params.updated(seed=params.seed + choice % request.n)
        self.request, self.choice, self.prompt, self.params = request, choice, prompt, params
        self.processor = LogitProcessor(params, vocab_limit, device)
        self.text = RowText(tokenizer, list(params.stop), None if params.ignore_eos else tokenizer.eos_token_id)
        self.generated = 0
        self.slot = -1

    @property
    def batched_greedy(self) -> bool:
        """Greedy without a repetition penalty: drawn for all such rows in one argmax."""
        return self.params.greedy and self.params.repetition_penalty == 1.0

    def take(self, token: int) -> bool:
        """Consume one drawn token and emit the text it finalises; True when the sequence has finished."""
        self.generated += 1
        piece = self.text.add(token)
        if self.text.finish_reason is None and self.generated >= self.params.max_new_tokens:
            self.text.finish_reason = "length"
            piece += self.text.flush()
        if piece:
            self.request.emit("text", self.choice, piece)
        return self.text.finish_reason is not None

    def emit_finish(self) -> None:
        self.request.emit("finish", self.choice, (self.text.finish_reason, len(self.text.ids)))


class Engine:
    """Runs requests on ``generator``'s model with up to ``max_batch`` sequences decoding at once."""

    def __init__(self, generator: Generator, max_batch: int = 64, max_queue: int = 256):
        if max_batch < 1 or max_queue < 0:
            raise UserError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.generator, self.model = generator, generator.model
        self.max_batch, self.max_queue = max_batch, max_queue
        device = self.model.device
        self.state = InferenceState.allocate(self.model, max_batch)
        self.tokens = torch.zeros(max_batch, dtype=torch.long, device=device)  # next input token of each slot
        self.seen = torch.zeros(max_batch, self.model.config.padded_vocab_size, dtype=torch.bool, device=device)
        self.slots: list[Sequence | None] = [None] * max_batch
        self.waiting: collections.deque[Request] = collections.deque()
        self.greedy = LogitProcessor(GREEDY, generator.vocab_limit, device)
        # decode steps replay CUDA graphs captured on the slot state itself (no copies per step)
        self.graphs = CudaGraphStepper(self.model, bound_state=self.state) \
            if CudaGraphStepper.supported(self.model) else None
        self.counts = collections.Counter()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False

    # ---- the event-loop side -------------------------------------------------------------------------
    def submit(self, request: Request) -> Request:
        """Queue ``request`` (its ``loop`` defaults to the running one); raises QueueFull when the queue is full."""
        if request.choices > self.max_batch:
            raise UserError(f"{request.choices} choices do not fit in the server's {self.max_batch} slots; "
                            "ask for fewer (n x prompts)")
        request.loop = request.loop or asyncio.get_running_loop()
        with self._wake:
            if len(self.waiting) >= self.max_queue:
                self.counts["rejected"] += 1
                raise QueueFull(f"the server is busy: {len(self.waiting)} requests are already waiting; retry later")
            self.waiting.append(request)
            self._wake.notify()
        return request

    def stats(self) -> dict:
        with self._wake:
            return {"slots": self.max_batch, "active": sum(s is not None for s in self.slots),
                    "waiting": len(self.waiting), **self.counts}

    def start(self) -> None:
        if self._thread is None:
            self._running = True
            self._thread = threading.Thread(target=self._run, name="mambakit-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._running = False
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # ---- the engine thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while self._running:
                try:
                    self._drop_cancelled()
                    self._admit()
                    if any(self.slots):
                        self._decode()
                    else:
                        with self._wake:
                            if not self.waiting and self._running:
                                self._wake.wait(timeout=1.0)
                except Exception as exc:  # a bug or device error: fail what runs now, keep serving
                    traceback.print_exc()
                    self._fail_all(f"internal error: {type(exc).__name__}: {exc}")

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One decode step of the first ``b`` slots: tokens (b,) -> logits (b, V); their state advances in place."""
        if self.graphs is not None:
            return self.graphs.step_rows(tokens)
        rows = tokens.shape[0]
        return self.model.step(tokens, InferenceState(self.state.conv[:, :rows], self.state.ssm[:, :rows]))

    def _admit(self) -> None:
        """Prefill waiting requests that fit in the free slots and give each sequence its first token."""
        admitted: list[Sequence] = []
        prompts: list[list[int]] = []  # each prompt once, however many choices it has
        rows: list[int] = []  # per admitted sequence, its prompt's row in ``prompts``
        free = [slot for slot, seq in enumerate(self.slots) if seq is None]
        with self._wake:
            while self.waiting and (self.waiting[0].cancelled or self.waiting[0].choices <= len(free) - len(admitted)):
                request = self.waiting.popleft()
                if request.cancelled:
                    self.counts["cancelled"] += request.choices
                    continue
                for choice in range(request.choices):
                    if choice % request.n == 0:
                        prompts.append(request.prompts[choice // request.n])
                    rows.append(len(prompts) - 1)
                    admitted.append(Sequence(request, choice, prompts[-1], self.generator.tokenizer,
                                             self.generator.vocab_limit, self.tokens.device))
        if not admitted:
            return
        logits, state = self.generator.prefill(prompts)
        slots = free[:len(admitted)]
        self.state.copy_rows_(slots, state.rows(rows))
        self.seen[slots] = False
        for seq, slot in zip(admitted, slots):
            seq.slot = slot
            self.slots[slot] = seq
            if seq.params.repetition_penalty != 1.0:
                self.seen[slot, torch.tensor(seq.prompt, device=logits.device)] = True
        self.counts["peak_active"] = max(self.counts["peak_active"], sum(s is not None for s in self.slots))
        self._take(admitted, logits[rows])

    def _decode(self) -> None:
        """One step for every slot up to the highest one in use."""
        used = 1 + max(slot for slot, seq in enumerate(self.slots) if seq is not None)
        logits = self.step(self.tokens[:used])
        active = [seq for seq in self.slots[:used] if seq is not None]
        self._take(active, logits[[seq.slot for seq in active]])

    def _take(self, sequences: list[Sequence], logits: torch.Tensor) -> None:
        """Draw the next token of each sequence from its row of ``logits`` (one row per sequence, in order)."""
        greedy = [i for i, seq in enumerate(sequences) if seq.batched_greedy]
        drawn = torch.empty(len(sequences), dtype=torch.long, device=logits.device)
        if greedy:
            drawn[greedy] = self.greedy.draw(logits[greedy])
        for i, seq in enumerate(sequences):
            if not seq.batched_greedy:
                seen = self.seen[seq.slot:seq.slot + 1] if seq.params.repetition_penalty != 1.0 else None
                drawn[i] = seq.processor.draw(logits[i:i + 1], seen)[0]
        slots = torch.tensor([seq.slot for seq in sequences], device=drawn.device)
        self.tokens[slots] = drawn
        self.seen[slots, drawn] = True
        for seq, token in zip(sequences, drawn.tolist()):
            if seq.request.cancelled:
                self._free(seq, "cancelled")
            elif seq.take(token):
                self._free(seq, "finished")  # before telling the client, so /health never lags behind it
                seq.emit_finish()

    def _free(self, seq: Sequence, outcome: str) -> None:
        self.slots[seq.slot] = None
        self.state.reset_rows_([seq.slot])
        self.counts[outcome] += 1

    def _drop_cancelled(self) -> None:
        for seq in self.slots:
            if seq is not None and seq.request.cancelled:
                self._free(seq, "cancelled")

    def _fail_all(self, message: str) -> None:
        failed = {id(seq.request): seq.request for seq in self.slots if seq is not None}
        for seq in self.slots:
            if seq is not None:
                self._free(seq, "failed")
        for request in failed.values():
            request.emit("error", None, message)
