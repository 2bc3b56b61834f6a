"""Chat templates: how a conversation (a list of ``{"role", "content"}`` messages) becomes the model's text.

Every template is a Jinja source with Hugging Face's chat-template conventions (``messages``,
``add_generation_prompt``, the tokenizer's special tokens such as ``eos_token``), rendered by the
tokenizer's own ``apply_chat_template``, so a checkpoint's template and the built-in ones behave alike:

    plain    the seed's "A conversation between a user and a smart AI assistant." + "### User:" / "### Assistant:"
    urial    the URIAL preamble and few-shot examples (arXiv 2312.01552), then "# Query:" / "# Answer:" blocks
    chatml   OpenAssistant oasst_top1: "<|im_start|>role\\n…<|im_end|>\\n"
    zephyr   mamba-chat: "<|user|>\\n…<|endoftext|>\\n<|assistant|>\\n"
    tokenizer  the checkpoint's own ``chat_template`` (the default when it has one)

A stateful chat feeds the model one *segment* at a time: the rendered text cut after each message
(``segments``). That needs templates whose rendering of a conversation starts with the rendering of
any earlier part of it ("prefix-stable"); all built-ins are, and a checkpoint template that is not is
reported by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mambakit.chat.urial_prompt import URIAL_PREAMBLE
from mambakit.errors import UserError

ROLES = ("system", "user", "assistant")
PLAIN_SYSTEM = "A conversation between a user and a smart AI assistant."
# End-of-turn markers a checkpoint's own template may use; those present in its source become its stops.
KNOWN_TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>", "<|endoftext|>")


class ChatTemplateError(UserError):
    """An unknown template name, a bad message list, or a template that cannot be used statefully."""


@dataclass(frozen=True)
class ChatTemplate:
    """A named Jinja chat template with the strings that end a reply.

    ``default_system``: the system message used when the user gives none (None: no system message).
    ``reply_suffix``: text the template itself writes after a reply (URIAL's closing fence), which a
    model often generates before the stop string; ``clean_reply`` removes it.
    """

    name: str
    source: str
    stop: tuple[str, ...]
    default_system: str | None = None
    reply_suffix: str = ""

    def render(self, messages: list[dict], tokenizer, add_generation_prompt: bool = False) -> str:
        """The conversation as text; with ``add_generation_prompt`` it ends where the assistant's reply starts."""
        check_messages(messages)
        return tokenizer.apply_chat_template(messages, chat_template=self.source, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    def segments(self, messages: list[dict], tokenizer, add_generation_prompt: bool = False) -> list[str]:
        """``render(messages)`` cut after each message: one text per message, concatenating to the whole.

        A user message that an assistant message follows (or the last one, with ``add_generation_prompt``)
        carries the generation prompt, so a reply's segment holds just the reply and what closes it.
        """
        cuts = [""]
        for end in range(1, len(messages) + 1):
            following = messages[end]["role"] if end < len(messages) else None
            prompt = messages[end - 1]["role"] == "user" and (
                following == "assistant" or (following is None and add_generation_prompt))
            cuts.append(self.render(messages[:end], tokenizer, add_generation_prompt=prompt))
        for before, after in zip(cuts, cuts[1:]):
            if not after.startswith(before):
                raise ChatTemplateError(
                    f"chat template {self.name!r} is not prefix-stable (rendering more messages changes the text of "
                    "earlier ones), so the conversation state cannot be carried from turn to turn; choose one of "
                    f"--template {', '.join(BUILTIN)}")
        return [after[len(before):] for before, after in zip(cuts, cuts[1:])]

    def clean_reply(self, text: str) -> str:
        """A generated reply as the conversation keeps it: without surrounding blanks or ``reply_suffix``."""
        text = text.strip()
        if self.reply_suffix and text.endswith(self.reply_suffix):
            text = text[: -len(self.reply_suffix)].rstrip()
        return text

    def conversation(self, messages: list[dict], system: str | None = None) -> list[dict]:
        """``messages`` preceded by the system message (``system``, else this template's default) when there
        is one and ``messages`` has none."""
        system = self.default_system if system is None else system
        if system and not (messages and messages[0]["role"] == "system"):
            return [{"role": "system", "content": system}, *messages]
        return list(messages)


def check_messages(messages) -> None:
    """Raise ChatTemplateError unless ``messages`` is a list of {"role": system|user|assistant, "content": str}."""
    if not isinstance(messages, list) or not messages:
        raise ChatTemplateError("messages must be a non-empty list of {\"role\", \"content\"} objects")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES \
                or not isinstance(message.get("content"), str):
            raise ChatTemplateError(f"messages[{index}] must be {{\"role\": one of {', '.join(ROLES)}, "
                                    f"\"content\": a string}}, got {message!r}")


def _each(system: str, user: str, assistant: str, generation_prompt: str) -> str:
    """A Jinja source writing each message as ``prefix + content + suffix`` by role (pairs as Jinja expressions)."""
    return ("{% for message in messages %}"
            "{% if message['role'] == 'system' %}{{ " + system + " }}"
            "{% elif message['role'] == 'user' %}{{ " + user + " }}"
            "{% else %}{{ " + assistant + " }}{% endif %}"
            "{% endfor %}"
            "{% if add_generation_prompt %}{{ " + generation_prompt + " }}{% endif %}")


BUILTIN: dict[str, ChatTemplate] = {
    "plain": ChatTemplate(
        "plain",
        _each(r"message['content'] + '\n\n'", r"'### User: ' + message['content'] + '\n'",
              r"'### Assistant: ' + message['content'] + '\n'", "'### Assistant:'"),
        stop=("### User:", "\n### "), default_system=PLAIN_SYSTEM),
    "urial": ChatTemplate(
        "urial",
        _each("message['content']", r"'\n\n# Query:\n```\n' + message['content'] + '\n```\n'",
              r"'\n\n# Answer:\n```\n' + message['content'] + '\n```\n'", r"'\n\n# Answer:\n```\n'"),
        stop=("# Query:",), default_system=URIAL_PREAMBLE, reply_suffix="```"),
    "chatml": ChatTemplate(
        "chatml",
        _each(*[r"'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'"] * 3,
              r"'<|im_start|>assistant\n'"),
        stop=("<|im_end|>", "<|im_start|>")),
    "zephyr": ChatTemplate(
        "zephyr",
        _each(r"'<|system|>\n' + message['content'] + eos_token + '\n'",
              r"'<|user|>\n' + message['content'] + eos_token + '\n'",
              r"'<|assistant|>\n' + message['content'] + eos_token + '\n'", r"'<|assistant|>\n'"),
        stop=("<|user|>", "<|endoftext|>")),
}


def get_template(name: str | None, tokenizer_template: str | None = None) -> ChatTemplate:
    """The template called ``name``: a built-in, ``tokenizer`` (the checkpoint's own) or a .jinja file.

    ``name`` None: the checkpoint's own template when it has one, else ``plain``.
    """
    if name is None:
        name = "tokenizer" if tokenizer_template else "plain"
    if name in BUILTIN:
        return BUILTIN[name]
    if name == "tokenizer":
        if not tokenizer_template:
            raise ChatTemplateError("this checkpoint's tokenizer has no chat_template; choose --template "
                                    + ", ".join(BUILTIN))
        return from_source("tokenizer", tokenizer_template)
    path = Path(name)
    if path.suffix == ".jinja" and path.is_file():
        return from_source(path.stem, path.read_text())
    raise ChatTemplateError(f"unknown chat template {name!r}; choose {', '.join(BUILTIN)}, tokenizer (the "
                            "checkpoint's own) or a path to a .jinja file")


def from_source(name: str, source: str) -> ChatTemplate:
    """A template from Jinja source; its stop strings are the known end-of-turn markers it writes."""
    return ChatTemplate(name, source, stop=tuple(marker for marker in KNOWN_TURN_ENDS if marker in source))
