"""The OpenAI wire format: request bodies -> validated engine requests, and results -> response bodies.

Supported: ``/v1/completions`` (``prompt``: a string or a list of strings) and ``/v1/chat/completions``
(``messages`` rendered with the model's chat template), with ``max_tokens`` (or
``max_completion_tokens``), ``temperature``, ``top_p``, ``stop``, ``seed``, ``n``, ``stream``,
``stream_options.include_usage``, and the extra fields ``top_k``, ``min_p``, ``repetition_penalty`` and
``ignore_eos``. Unknown fields are ignored (clients and web UIs send many); fields that would change the
answer's meaning and are not supported (``logprobs``, ``echo``, ``tools``, ``suffix``) are refused.
Every refusal is an ``APIError`` carrying its HTTP status and the OpenAI error body.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from mambakit.chat.templates import ChatTemplate, ChatTemplateError
from mambakit.errors import UserError
from mambakit.generation import SamplingError, SamplingParams

UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "tools", "functions", "suffix")
SAMPLING_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                   "repetition_penalty": "repetition_penalty", "seed": "seed", "ignore_eos": "ignore_eos"}


class APIError(UserError):
    """A request the API refuses: HTTP ``status`` and the OpenAI error fields."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ServeConfig:
    """What the server serves and its limits."""

    model_name: str
    template: ChatTemplate
    max_prompt_tokens: int = 32768
    max_new_tokens: int = 4096  # the most ``max_tokens`` a request may ask for
    default_completion_tokens: int = 16  # OpenAI's default for /v1/completions
    default_chat_tokens: int = 512
    max_n: int = 16


@dataclass
class ParsedRequest:
    prompts: list[str]
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError("the request body must be a JSON object", code="invalid_json")
    return body


def _typed(body: dict, name: str, kinds: tuple, what: str, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise APIError(f"{name} must be {what}, got {value!r}", param=name, code="invalid_type")
    return value


def _common(body: dict, config: ServeConfig, default_tokens: int, extra_stop: tuple[str, ...] = ()):
    """Fields shared by both endpoints -> (SamplingParams, n, stream, include_usage)."""
    model = _typed(body, "model", (str,), "a string", config.model_name)
    if model != config.model_name:
        raise APIError(f"the model {model!r} does not exist; this server serves {config.model_name!r}",
                       status=404, param="model", code="model_not_found")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, False, 0, [], ""):
            raise APIError(f"{name} is not supported by this server", param=name, code="unsupported_parameter")
    n = _typed(body, "n", (int,), "an integer", 1)
    if not 1 <= n <= config.max_n:
        raise APIError(f"n must be between 1 and {config.max_n}, got {n}", param="n")
    stream = _typed(body, "stream", (bool,), "true or false", False)
    options = _typed(body, "stream_options", (dict,), "an object", {})
    include_usage = _typed(options, "include_usage", (bool,), "true or false", False)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = default_tokens if max_tokens is None else max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= config.max_new_tokens:
        raise APIError(f"max_tokens must be an integer from 1 to {config.max_new_tokens}, got {max_tokens!r}",
                       param="max_tokens")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise APIError(f"stop must be a string or a list of strings, got {body.get('stop')!r}", param="stop")
    values = {field: body[key] for key, field in SAMPLING_FIELDS.items() if body.get(key) is not None}
    try:
        params = SamplingParams(max_new_tokens=max_tokens, stop=[s for s in stop if s] + list(extra_stop), **values)
    except SamplingError as exc:
        raise APIError(str(exc), param=str(exc).split(" ", 1)[0]) from None
    return params, n, stream, include_usage


def parse_completion(body: dict, config: ServeConfig) -> ParsedRequest:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise APIError("prompt must be a non-empty string or a list of non-empty strings (token ids are not "
                       "supported)", param="prompt")
    params, n, stream, include_usage = _common(body, config, config.default_completion_tokens)
    return ParsedRequest(prompts, params, n, stream, include_usage)


def _message(index: int, message) -> dict:
    """One chat message -> {"role", "content": str}; content may be OpenAI's list of text parts."""
    if not isinstance(message, dict):
        raise APIError(f"messages[{index}] must be an object with role and content", param="messages")
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                   for part in content):
            raise APIError(f"messages[{index}].content parts must be text parts ({{\"type\": \"text\", "
                           "\"text\": ...}})", param="messages")
        content = "".join(part["text"] for part in content)
    if content is None and message.get("role") == "assistant":
        content = ""
    return {"role": message.get("role"), "content": content}


def parse_chat(body: dict, config: ServeConfig, tokenizer) -> ParsedRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError("messages must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    messages = [_message(i, m) for i, m in enumerate(messages)]
    params, n, stream, include_usage = _common(body, config, config.default_chat_tokens, config.template.stop)
    template = config.template
    try:
        text = template.render(template.conversation(messages), tokenizer, add_generation_prompt=True)
    except ChatTemplateError as exc:
        raise APIError(str(exc), param="messages") from None
    except Exception as exc:  # a checkpoint's own Jinja template may raise on what it does not accept
        raise APIError(f"the chat template cannot render these messages: {exc}", param="messages") from None
    return ParsedRequest([text], params, n, stream, include_usage)


def encode_prompts(prompts: list[str], tokenizer, config: ServeConfig) -> list[list[int]]:
    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    for ids in encoded:
        if not ids:
            raise APIError("the prompt encodes to no tokens", param="prompt")
        if len(ids) > config.max_prompt_tokens:
            raise APIError(f"the prompt has {len(ids)} tokens, more than this server's limit of "
                           f"{config.max_prompt_tokens}; shorten it", param="prompt", code="context_length_exceeded")
    return encoded


class Reply:
    """Builds the response bodies and stream chunks of one request (``chat``: chat or text completion)."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _envelope(self, obj: str, choices: list, usage: dict | None = None) -> dict:
        body = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return body

    @staticmethod
    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def full(self, texts: list[str], finish_reasons: list[str], usage: dict) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                        "finish_reason": reason} for i, (text, reason) in enumerate(zip(texts, finish_reasons))]
        else:
            choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                       for i, (text, reason) in enumerate(zip(texts, finish_reasons))]
        return self._envelope(self.object, choices, usage)

    def chunk(self, index: int, text: str | None = None, finish_reason: str | None = None,
              role: bool = False) -> dict:
        """One streamed piece of choice ``index`` (``role``: the chat stream's opening chunk)."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return self._envelope("chat.completion.chunk", [choice])
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return self._envelope("text_completion", [choice])

    def usage_chunk(self, usage: dict) -> dict:
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [], usage)
