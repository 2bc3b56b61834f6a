"""The batch scheduler in-process: requests join a running batch, the queue is bounded (HTTP 429)."""
import asyncio

import httpx
import pytest

import mambakit
from mambakit.chat.templates import BUILTIN
from mambakit.generation import Generator, SamplingParams
from mambakit.serve import Engine, QueueFull, Request, ServeConfig, build_app
from test_chat_session import chat_checkpoint


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    model, tokenizer, _ = mambakit.load(chat_checkpoint(tmp_path_factory.mktemp("engine-model")), device="cpu")
    return Generator(model, tokenizer)


async def collect(request: Request, name: str, log: list) -> list[str]:
    """Texts per choice until every choice has finished; ``log`` records (name, kind) of each event in order."""
    texts, finished = [""] * request.choices, 0
    while finished < request.choices:
        kind, choice, payload = await request.events.get()
        log.append((name, kind))
        if kind == "text":
            texts[choice] += payload
        finished += kind == "finish"
    return texts


def test_a_new_request_joins_the_running_batch(generator):
    encode = generator.tokenizer.encode
    long_params = SamplingParams(max_new_tokens=120, temperature=0, ignore_eos=True)
    short_params = SamplingParams(max_new_tokens=10, temperature=0, repetition_penalty=1.2)
    log = []

    async def main():
        engine = Engine(generator, max_batch=4)
        engine.start()
        try:
            first = engine.submit(Request([encode("A long answer:")], long_params))
            await first.events.get()  # the first request is decoding
            second = engine.submit(Request([encode("Short"), encode("Two prompts")], short_params, n=1))
            texts, _ = await asyncio.gather(collect(second, "second", log), collect(first, "first", log))
        finally:
            engine.stop()
        return texts, engine.stats()

    texts, stats = asyncio.run(main())
    assert texts == [r.text for r in generator.generate(["Short", "Two prompts"], short_params)]
    assert stats["peak_active"] == 3 and stats["active"] == 0 and stats["finished"] == 3
    # the short request decoded alongside the long one: it finished first, while the long one went on
    assert log.index(("second", "finish")) < log.index(("first", "finish"))
    assert ("first", "text") in log[log.index(("second", "finish")):]


def test_the_queue_is_bounded_and_full_means_429(generator):
    engine = Engine(generator, max_batch=1, max_queue=1)  # not started: nothing leaves the queue
    app = build_app(engine, ServeConfig("tiny", BUILTIN["plain"]))
    params = SamplingParams(max_new_tokens=4)

    async def main():
        engine.submit(Request([[1, 2, 3]], params))
        with pytest.raises(QueueFull, match="already waiting"):
            engine.submit(Request([[1, 2, 3]], params))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            busy = await http.post("/v1/completions", json={"prompt": "hello"})
            too_many = await http.post("/v1/completions", json={"prompt": "hello", "n": 2})
            health = await http.get("/health")
        return busy, too_many, health

    busy, too_many, health = asyncio.run(main())
    assert busy.status_code == 429 and busy.json()["error"]["type"] == "rate_limit_error"
    assert too_many.status_code == 400 and "do not fit in the server's 1 slots" in too_many.json()["error"]["message"]
    assert health.json()["waiting"] == 1 and health.json()["rejected"] == 2
