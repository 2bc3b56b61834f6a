"""The ASGI app (Starlette): OpenAI-compatible routes over the batch ``Engine``.

    GET  /health                 {"status": "ok", "model", slots, active, waiting, finished, cancelled, ...}
    GET  /v1/models              the one served model
    POST /v1/completions         text completion
    POST /v1/chat/completions    chat, rendered with the model's template

``stream: true`` answers with server-sent events (``data: {chunk}``), ending with ``data: [DONE]``.
A client that disconnects cancels its request, which frees its slots at the engine's next step.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from mambakit.errors import UserError
from mambakit.serve.engine import Engine, QueueFull, Request
from mambakit.serve.openai_api import (APIError, ParsedRequest, Reply, ServeConfig, encode_prompts, parse_chat,
                                       parse_completion, parse_json)

DISCONNECT_POLL_SECONDS = 0.5


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def _sse(payload) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


class Generation:
    """One submitted request: its events, folded into texts, finish reasons and token counts."""

    def __init__(self, request: Request, prompt_tokens: int):
        self.request, self.prompt_tokens = request, prompt_tokens
        self.texts = [""] * request.choices
        self.finish_reasons: list[str | None] = [None] * request.choices
        self.completion_tokens = 0

    @property
    def done(self) -> bool:
        return all(self.finish_reasons)

    async def events(self, http: HTTPRequest | None = None) -> AsyncIterator[tuple[str, int, object]]:
        """Yields ("text", choice, piece) and ("finish", choice, reason) until every choice has finished.

        With ``http`` (non-streaming responses), a client that went away cancels the request.
        """
        while not self.done:
            try:
                kind, choice, payload = await asyncio.wait_for(self.request.events.get(), DISCONNECT_POLL_SECONDS)
            except asyncio.TimeoutError:
                if http is not None and await http.is_disconnected():
                    self.request.cancel()
                    return
                continue
            if kind == "error":
                raise APIError(str(payload), status=500, kind="server_error")
            if kind == "text":
                self.texts[choice] += payload
                yield kind, choice, payload
            else:
                reason, tokens = payload
                self.finish_reasons[choice] = reason
                self.completion_tokens += tokens
                yield kind, choice, reason

    def usage(self) -> dict:
        return Reply.usage(self.prompt_tokens, self.completion_tokens)


def build_app(engine: Engine, config: ServeConfig) -> Starlette:
    """The Starlette app serving ``engine``; its lifespan starts and stops the engine thread."""
    tokenizer = engine.generator.tokenizer

    async def health(_: HTTPRequest) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": config.model_name, **engine.stats()})

    async def models(_: HTTPRequest) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": config.model_name, "object": "model",
                                                         "created": 0, "owned_by": "mambakit"}]})

    async def completions(http: HTTPRequest):
        return await _serve(http, chat=False)

    async def chat_completions(http: HTTPRequest):
        return await _serve(http, chat=True)

    async def _serve(http: HTTPRequest, chat: bool):
        try:
            body = parse_json(await http.body())
            parsed = parse_chat(body, config, tokenizer) if chat else parse_completion(body, config)
            encoded = encode_prompts(parsed.prompts, tokenizer, config)
            request = engine.submit(Request(encoded, parsed.params, parsed.n))
        except QueueFull as exc:
            return error_response(APIError(str(exc), status=429, code="rate_limit_exceeded", kind="rate_limit_error"))
        except APIError as exc:
            return error_response(exc)
        except UserError as exc:
            return error_response(APIError(str(exc)))
        generation = Generation(request, sum(len(ids) for ids in encoded))
        reply = Reply(chat, config.model_name)
        if parsed.stream:
            return StreamingResponse(_stream(generation, reply, parsed), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            async for _ in generation.events(http):
                pass
        except APIError as exc:
            return error_response(exc)
        finally:
            request.cancel()  # no-op when finished; frees the slots when the client went away
        return JSONResponse(reply.full(generation.texts, generation.finish_reasons, generation.usage()))

    async def _stream(generation: Generation, reply: Reply, parsed: ParsedRequest) -> AsyncIterator[str]:
        try:
            if reply.chat:
                for choice in range(generation.request.choices):
                    yield _sse(reply.chunk(choice, role=True))
            async for kind, choice, value in generation.events():
                if kind == "text":
                    yield _sse(reply.chunk(choice, text=value))
                else:
                    yield _sse(reply.chunk(choice, finish_reason=value))
            if parsed.include_usage:
                yield _sse(reply.usage_chunk(generation.usage()))
        except APIError as exc:
            yield _sse(exc.body())
        finally:  # also when the client disconnects (the response task is cancelled)
            generation.request.cancel()
        yield _sse("[DONE]")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    async def http_error(_: HTTPRequest, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(APIError(str(exc.detail), status=exc.status_code, kind=kind))

    routes = [Route("/health", health), Route("/v1/models", models),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
