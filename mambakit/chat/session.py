"""A chat whose recurrent state is carried from turn to turn: a new turn costs only its own tokens.

The conversation is a list of messages; the model has been fed exactly the token ids of its rendered
segments (``ChatTemplate.segments``), encoded one segment at a time. A turn:

1. encodes the new segments (the user message and the generation prompt) and feeds all but their last
   token into the state;
2. decodes the reply from a copy of that state (the last prompt token goes in first);
3. feeds the last prompt token and the reply's canonical segment (the cleaned reply and what closes it)
   into the state.

So the state always equals the state after re-encoding the whole conversation segment by segment, and
the next reply is the one re-encoding would give (tests/test_chat_session.py shows it turn after turn).
The reply's tokens go through the model twice, once decoded one at a time and once prefilled in
parallel, which is cheap next to decoding and keeps the state canonical even when a stop string ended
the reply in the middle of a token or Ctrl-C cut it short.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from safetensors import safe_open

from mambakit.chat.prefix_cache import PrefixCache, model_fingerprint
from mambakit.chat.templates import ChatTemplate
from mambakit.errors import UserError
from mambakit.generation import Generator, SamplingParams
from mambakit.generation.row_text import RowText
from mambakit.state import InferenceState

SAVE_FORMAT = "mambakit-chat-1"


class ChatSessionError(UserError):
    """A conversation file that cannot be loaded into this session."""


@dataclass
class TurnStats:
    """What one turn cost: tokens fed before the reply, the reply's token ids, and the time of each phase."""

    prompt_tokens: int
    reply_ids: list[int]  # every token decoded (including an end-of-text or stop-string token)
    prefill_seconds: float
    decode_seconds: float
    finish_reason: str  # "stop", "length" or "interrupted"

    @property
    def reply_tokens(self) -> int:
        return len(self.reply_ids)

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed after the first token (which the prefill time covers)."""
        steps = self.reply_tokens - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else None


class ChatSession:
    """A multi-turn chat with one model, one template and a one-row state carried across turns."""

    def __init__(self, generator: Generator, template: ChatTemplate, params: SamplingParams | None = None,
                 system: str | None = None, prefix_cache: PrefixCache | None = None):
        self.generator, self.template = generator, template
        self.params = params or SamplingParams()
        self.prefix_cache = prefix_cache
        self.last_turn: TurnStats | None = None
        self.system = template.default_system if system is None else system
        self.reset()

    # ---- conversation and state --------------------------------------------------------------------
    def reset(self, system: str | None = None) -> None:
        """Start over, with the system message ``system`` if given (else the current one; "" for none)."""
        if system is not None:
            self.system = system
        self.messages: list[dict] = []
        self.state = self.generator.model.allocate_state(1)
        self.fed_ids: list[int] = []  # every token id the state has consumed, in order
        self.fed_segments = 0  # how many segments of the rendered conversation those ids are
        self.add(self.template.conversation([], self.system))

    def add(self, messages: list[dict]) -> None:
        """Append messages without replying (a system prompt, a document to ask about) and feed them.

        With a prefix cache, the state after them is read from it when this exact conversation prefix was
        fed before, else computed and stored.
        """
        if not messages:
            return
        conversation = self.messages + list(messages)
        ids = self._pending_ids(conversation, add_generation_prompt=False)
        if self.prefix_cache is not None:
            self.state = self.prefix_cache.state_for(self.generator, self.fed_ids + ids, self.state,
                                                     len(self.fed_ids))
            self.fed_ids.extend(ids)
        else:
            self._feed(ids)
        self.messages, self.fed_segments = conversation, len(conversation)

    def _segments(self, messages: list[dict], add_generation_prompt: bool) -> list[str]:
        return self.template.segments(messages, self.generator.tokenizer, add_generation_prompt)

    def _pending_ids(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        """Token ids of the segments of ``messages`` not fed yet, each segment encoded on its own."""
        ids: list[int] = []
        for segment in self._segments(messages, add_generation_prompt)[self.fed_segments:]:
            ids.extend(self.generator.tokenizer.encode(segment, add_special_tokens=False))
        return ids

    def _feed(self, ids: list[int]) -> None:
        if ids:
            self.generator.prefill([ids], self.state)
            self.fed_ids.extend(ids)

    def token_ids(self) -> list[int]:
        """What re-encoding the conversation gives: its rendered segments, encoded one by one."""
        ids: list[int] = []
        for segment in self._segments(self.messages, add_generation_prompt=False):
            ids.extend(self.generator.tokenizer.encode(segment, add_special_tokens=False))
        return ids

    # ---- one turn ------------------------------------------------------------------------------------
    def respond(self, text: str) -> Iterator[str]:
        """Streams the reply to the user message ``text``; the turn is kept even when the caller stops early
        (closing the iterator or Ctrl-C): the reply then holds what was shown, ``last_turn`` says "interrupted".
        """
        messages = self.messages + [{"role": "user", "content": text}]
        started = time.perf_counter()
        prompt_ids = self._pending_ids(messages, add_generation_prompt=True)
        self._feed(prompt_ids[:-1])
        tokenizer, params = self.generator.tokenizer, self.params
        row = RowText(tokenizer, list(params.stop) + list(self.template.stop),
                      None if params.ignore_eos else tokenizer.eos_token_id)
        reply_ids, first_token_at = [], None
        try:
            for tokens in self.generator.decode([prompt_ids[-1:]], params, self.state.clone(), [self.fed_ids]):
                reply_ids.append(int(tokens[0]))
                first_token_at = first_token_at or time.perf_counter()
                piece = row.add(reply_ids[-1])
                if piece:
                    yield piece
                if row.finish_reason:
                    break
            if row.finish_reason is None:
                row.finish_reason = "length"
                piece = row.flush()
                if piece:
                    yield piece
        finally:
            finished = time.perf_counter()
            reply = row.text if row.finish_reason else row.text[:row.emitted]
            self._commit(messages, prompt_ids, reply)
            first_token_at = first_token_at or finished
            self.last_turn = TurnStats(len(prompt_ids), reply_ids, first_token_at - started, finished - first_token_at,
                                       row.finish_reason or "interrupted")

    def _commit(self, messages: list[dict], prompt_ids: list[int], reply: str) -> None:
        """Add the turn to the conversation, and its last prompt token and reply segment to the state."""
        self.messages = messages + [{"role": "assistant", "content": self.template.clean_reply(reply)}]
        self.fed_segments = len(messages)
        ids = prompt_ids[-1:] + self._pending_ids(self.messages, add_generation_prompt=False)
        self.generator.prefill([ids], self.state)
        self.fed_ids.extend(ids)
        self.fed_segments = len(self.messages)

    def reply(self, text: str) -> str:
        """The whole reply to ``text`` (``respond`` without streaming)."""
        return "".join(self.respond(text))

    # ---- save / load -----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the conversation and its state to one safetensors file."""
        path = Path(path).expanduser()
        if path.parent and not path.parent.is_dir():
            raise ChatSessionError(f"cannot save to {path}: folder {path.parent} does not exist")
        record = {"format": SAVE_FORMAT, "template": self.template.name, "system": self.system,
                  "messages": self.messages, "fed_ids": self.fed_ids, "fed_segments": self.fed_segments,
                  "model": model_fingerprint(self.generator.model)}
        self.state.save(path, metadata={"conversation": json.dumps(record)})
        return path

    def load(self, path: str | Path) -> None:
        """Replace the conversation and state by those saved in ``path`` (same model and template only)."""
        path = Path(path).expanduser()
        model = self.generator.model
        state = InferenceState.load(path, device=model.device)
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        try:
            record = json.loads(metadata["conversation"])
            assert record["format"] == SAVE_FORMAT
        except (KeyError, ValueError, TypeError, AssertionError):
            raise ChatSessionError(f"{path} is a state file but not a saved chat (use /save to make one)") from None
        if record["model"] != model_fingerprint(model):
            raise ChatSessionError(f"{path} was saved with another model; load it with the model it was made with")
        if record["template"] != self.template.name:
            raise ChatSessionError(f"{path} was saved with template {record['template']!r}; restart with "
                                   f"--template {record['template']}")
        self.state = state.for_model(model)
        self.system, self.messages = record["system"], record["messages"]
        self.fed_ids, self.fed_segments = record["fed_ids"], record["fed_segments"]
