"""The interactive chat loop: read a line, stream the reply, show what the turn cost; slash commands.

Ctrl-C during a reply stops it (the partial reply stays in the conversation) and keeps the session;
Ctrl-C at the prompt clears the line; Ctrl-D or /quit leaves.
"""
from __future__ import annotations

import json
import sys
from dataclasses import fields
from typing import Callable, TextIO

from mambakit.chat.session import ChatSession
from mambakit.errors import UserError
from mambakit.generation import SamplingParams

HELP = """commands:
  /reset             start the conversation over (keeps the system message)
  /system [TEXT]     show the system message, or set it and start over
  /set [NAME VALUE]  show the sampling options, or change one (e.g. /set temperature 0.7, /set stop "###")
  /save FILE         write the conversation and its state to FILE
  /load FILE         continue a conversation saved with /save
  /help              this list
  /quit              leave (also Ctrl-D)
Ctrl-C stops a reply and keeps the session."""


class ReplError(UserError):
    """A slash command that cannot be run (unknown name, missing argument)."""


def parse_option(name: str, text: str, params: SamplingParams) -> SamplingParams:
    """``params`` with option ``name`` set from the command-line text ``text`` (JSON literals, else a string)."""
    name = name.replace("-", "_")
    known = {f.name for f in fields(SamplingParams)}
    if name not in known:
        raise ReplError(f"unknown sampling option {name!r}; known: {', '.join(sorted(known))}")
    try:
        value = json.loads(text)
    except ValueError:
        value = {"none": None, "off": None}.get(text.lower(), text)
    if name == "stop":
        value = [] if value is None else [value] if isinstance(value, str) else value
    elif isinstance(getattr(params, name), float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return params.updated(**{name: value})


class Repl:
    """Runs a ChatSession in a terminal; ``read`` is ``input``-like, ``out`` a text stream."""

    def __init__(self, session: ChatSession, read: Callable[[str], str] = input, out: TextIO = sys.stdout):
        self.session, self.read, self.out = session, read, out

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def run(self) -> int:
        session = self.session
        self.say(f"chat with template {session.template.name!r}; system prompt {len(session.fed_ids)} tokens. "
                 "/help for commands, Ctrl-D to leave.")
        while True:
            try:
                line = self.read(">>> ")
            except EOFError:
                self.say("")
                return 0
            except KeyboardInterrupt:
                self.say("")
                continue
            if not line.strip():
                continue
            try:
                if not line.startswith("/"):
                    self.chat(line)
                elif not self.command(line.strip()):
                    return 0
            except UserError as exc:
                self.say(f"error: {exc}")

    def chat(self, text: str) -> None:
        """Stream one reply, then its token counts and speed."""
        stream = self.session.respond(text)
        try:
            for piece in stream:
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            stream.close()  # keeps the turn with what was shown
        turn = self.session.last_turn
        speed = f"{turn.tokens_per_second:.1f} tok/s" if turn.tokens_per_second else "- tok/s"
        note = ", interrupted" if turn.finish_reason == "interrupted" else ""
        self.say(f"\n[{turn.prompt_tokens} prompt + {turn.reply_tokens} reply tokens, prefill "
                 f"{turn.prefill_seconds * 1000:.0f} ms, {speed}; {len(self.session.fed_ids)} in the state{note}]")

    def command(self, line: str) -> bool:
        """Run one slash command; False means leave."""
        name, _, argument = line[1:].partition(" ")
        argument = argument.strip()
        session = self.session
        if name in ("quit", "exit"):
            return False
        if name == "help":
            self.say(HELP)
        elif name == "reset":
            session.reset()
            self.say(f"[conversation reset; system prompt {len(session.fed_ids)} tokens]")
        elif name == "system":
            if not argument:
                self.say(session.system or "[no system message]")
            else:
                session.reset(system=argument)
                self.say(f"[system message set, conversation reset; {len(session.fed_ids)} tokens]")
        elif name == "set":
            if not argument:
                self.say(", ".join(f"{f.name}={getattr(session.params, f.name)!r}" for f in fields(SamplingParams)))
            else:
                option, _, value = argument.partition(" ")
                if not value.strip():
                    raise ReplError(f"/set {option} needs a value, e.g. /set temperature 0.7")
                session.params = parse_option(option, value.strip(), session.params)
                option = option.replace("-", "_")
                self.say(f"[{option} = {getattr(session.params, option)!r}]")
        elif name in ("save", "load"):
            if not argument:
                raise ReplError(f"/{name} needs a file name, e.g. /{name} chat.safetensors")
            if name == "save":
                self.say(f"[saved {len(session.messages)} messages and the state to {session.save(argument)}]")
            else:
                session.load(argument)
                self.say(f"[loaded {len(session.messages)} messages; {len(session.fed_ids)} tokens in the state]")
        else:
            raise ReplError(f"unknown command /{name}; /help lists the commands")
        return True
