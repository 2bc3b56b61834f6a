"""``mambakit serve`` as a live process on 127.0.0.1, driven by the official ``openai`` client and raw HTTP:
answers equal the library's greedy ones, alone or 32 streaming clients at once with bad requests mixed in."""
import asyncio
import json
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

import mambakit
from mambakit.chat.templates import BUILTIN
from mambakit.generation import Generator, SamplingParams
from test_chat_session import chat_checkpoint

MAX_PROMPT_TOKENS = 300
STARTUP_SECONDS = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return chat_checkpoint(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """Base URL of a live ``mambakit serve`` process (stopped after the module's tests)."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("serve-log") / "server.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "mambakit.cli", "serve", "--model", str(checkpoint), "--device", "cpu",
         "--port", str(port), "--template", "chatml", "--served-model-name", "tiny", "--max-batch", "40",
         "--max-prompt-tokens", str(MAX_PROMPT_TOKENS), "--max-new-tokens", "100000"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"the server did not start:\n{log.read()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def generator(checkpoint):
    model, tokenizer, _ = mambakit.load(checkpoint, device="cpu")
    return Generator(model, tokenizer)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def expected_completion(generator, prompt, max_tokens, stop=()):
    result = generator.generate(prompt, SamplingParams(max_new_tokens=max_tokens, temperature=0, stop=list(stop)))[0]
    return result.text, result.finish_reason, len(result.token_ids)


def chat_prompt(generator, messages):
    return BUILTIN["chatml"].render(messages, generator.tokenizer, add_generation_prompt=True)


def test_models_and_health(client, server):
    assert [model.id for model in client.models.list()] == ["tiny"]
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["slots"] == 40


def test_completion_equals_the_library(client, generator):
    response = client.completions.create(model="tiny", prompt="The cat sat on", max_tokens=20, temperature=0)
    text, reason, tokens = expected_completion(generator, "The cat sat on", 20)
    assert response.choices[0].text == text and response.choices[0].finish_reason == reason
    assert response.usage.prompt_tokens == len("The cat sat on") and response.usage.completion_tokens == tokens
    stream = client.completions.create(model="tiny", prompt="The cat sat on", max_tokens=20, temperature=0,
                                       stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == text


def test_stop_strings_cut_the_text(client, generator):
    full, _, _ = expected_completion(generator, "Once upon", 30)
    stop = full[8:11]
    text, reason, _ = expected_completion(generator, "Once upon", 30, stop=[stop])
    response = client.completions.create(model="tiny", prompt="Once upon", max_tokens=30, temperature=0, stop=[stop])
    assert response.choices[0].text == text and len(text) <= 8 and full.startswith(text)
    assert response.choices[0].finish_reason == reason == "stop"


def test_chat_streaming_and_not(client, generator):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    expected, reason, tokens = expected_completion(generator, chat_prompt(generator, messages), 24,
                                                   BUILTIN["chatml"].stop)
    response = client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0)
    assert response.choices[0].message.content == expected and response.choices[0].finish_reason == reason
    assert response.usage.completion_tokens == tokens
    assert response.usage.prompt_tokens == len(chat_prompt(generator, messages))
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reason
    assert chunks[-1].usage.completion_tokens == tokens


def test_n_choices_with_a_seed_are_reproducible(client):
    def ask():
        response = client.completions.create(model="tiny", prompt="Random:", max_tokens=12, temperature=0.9,
                                             n=3, seed=1234, extra_body={"top_k": 50, "min_p": 0.01})
        return [choice.text for choice in sorted(response.choices, key=lambda c: c.index)]

    first = ask()
    assert len(first) == 3 and len(set(first)) == 3
    assert ask() == first


def test_32_concurrent_streaming_clients_equal_sequential_answers(server, generator):
    prompts = [f"Client {i} says: {'hello ' * (i % 5)}" for i in range(32)]
    expected = [expected_completion(generator, prompt, 16)[0] for prompt in prompts]
    bad_requests = [(b"{not json", 400), (json.dumps({"model": "gpt-4", "prompt": "x"}).encode(), 404),
                    (json.dumps({"prompt": "x", "temperature": "hot"}).encode(), 400),
                    (json.dumps({"prompt": "x", "max_tokens": "many"}).encode(), 400),
                    (json.dumps({"prompt": "x" * (MAX_PROMPT_TOKENS + 1)}).encode(), 400),
                    (json.dumps({"prompt": ["ok", 3]}).encode(), 400),
                    (json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), 400)]

    async def stream_one(client, prompt):
        stream = await client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0,
                                                 stream=True)
        return "".join([chunk.choices[0].text async for chunk in stream])

    async def bad_one(http, body, status):
        path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
        response = await http.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) >= {"message", "type", "param", "code"}

    async def main():
        client = openai.AsyncOpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)
        async with httpx.AsyncClient(base_url=server, timeout=60) as http:
            streams = [stream_one(client, prompt) for prompt in prompts]
            bad = [bad_one(http, body, status) for body, status in bad_requests]
            results = await asyncio.gather(*streams[:16], *bad, *streams[16:])
        await client.close()
        return results[:16] + results[16 + len(bad):]

    assert asyncio.run(main()) == expected
    health = httpx.get(server + "/health").json()
    assert health["active"] == 0 and health["waiting"] == 0 and health["peak_active"] > 1


def test_disconnecting_client_cancels_its_request(server):
    cancelled_before = httpx.get(server + "/health").json().get("cancelled", 0)
    body = {"prompt": "Go on forever", "max_tokens": 100000, "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server + "/v1/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = httpx.get(server + "/health").json()
        if health.get("cancelled", 0) > cancelled_before and health["active"] == 0:
            break
        time.sleep(0.2)
    assert health.get("cancelled", 0) == cancelled_before + 1 and health["active"] == 0
