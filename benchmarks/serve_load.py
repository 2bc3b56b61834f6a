"""Load generator for ``mambakit serve``: throughput and time to first token at 1, 8, 64 concurrent clients.

Each client sends ``--requests`` streaming completions one after another (fixed prompt, ``max_tokens``
tokens, ``ignore_eos`` so every answer has the same length); a level's throughput is all completion
tokens over its wall time, and TTFT is measured from sending a request to its first text chunk.

    # against a running server
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --out benchmarks/results/serve_load.json
    # start the server itself, on random weights of a real shape (GPT-NeoX tokenizer from ../shared/data)
    python benchmarks/serve_load.py --random-shape mamba-1.4b --out benchmarks/results/h200-serve-mamba-1.4b.json
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

NEOX_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers" / "gpt-neox-20b"
PROMPT_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "tinystories_2MiB.txt"


def make_random_checkpoint(shape: str, folder: Path, tokenizer: Path) -> Path:
    """Random bf16 weights of a real shape (speed does not depend on the values), saved with a tokenizer:
    ``tokenizer`` when it exists, else the byte-level one (then a prompt character is a token)."""
    import torch

    from mambakit.bench.commands import resolve_shape
    from mambakit.model import MambaLM
    from mambakit.tokenizer import byte_tokenizer, load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = MambaLM.from_config(resolve_shape(shape), device=device, dtype=torch.bfloat16, seed=0)
    model.save_pretrained(folder, tokenizer=load_tokenizer(tokenizer) if tokenizer.exists() else byte_tokenizer())
    return folder


def start_server(model: str, port: int, max_batch: int, log_path: Path, timeout: float) -> subprocess.Popen:
    command = [sys.executable, "-m", "mambakit.cli", "serve", "--model", model, "--port", str(port),
               "--max-batch", str(max_batch), "--served-model-name", "bench"]
    process = subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(1)
    process.kill()
    raise SystemExit(f"the server did not start; see {log_path}:\n{log_path.read_text()[-2000:]}")


async def one_request(http: httpx.AsyncClient, body: dict) -> tuple[float, int, int]:
    """(seconds to the first text chunk, completion tokens, prompt tokens) of one streaming completion."""
    started = time.perf_counter()
    first, tokens, prompt_tokens = None, 0, 0
    async with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk["choices"] and chunk["choices"][0]["text"] and first is None:
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens, prompt_tokens = chunk["usage"]["completion_tokens"], chunk["usage"]["prompt_tokens"]
    return (first if first is not None else time.perf_counter() - started), tokens, prompt_tokens


async def run_level(url: str, clients: int, requests: int, body: dict) -> dict:
    async def client(http):
        return [await one_request(http, body) for _ in range(requests)]

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await one_request(http, {**body, "max_tokens": 4})  # warm-up (compiles, graph capture)
        started = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(client(http) for _ in range(clients))) for r in rs]
        wall = time.perf_counter() - started
    ttfts = sorted(ttft for ttft, _, _ in results)
    tokens = sum(count for _, count, _ in results)
    return {"clients": clients, "requests": len(results), "prompt_tokens": results[0][2],
            "completion_tokens": tokens, "wall_seconds": wall,
            "tokens_per_second": tokens / wall, "per_client_tokens_per_second": tokens / wall / clients,
            "ttft_ms_median": 1000 * statistics.median(ttfts),
            "ttft_ms_p90": 1000 * ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))],
            "ttft_ms_max": 1000 * ttfts[-1]}


def prompt_of(chars: int) -> str:
    if PROMPT_TEXT.is_file():
        return PROMPT_TEXT.read_text()[:chars]
    return ("Once upon a time there was a little state space model that liked to read. " * (chars // 70 + 1))[:chars]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server (its served model name must be given with --model-name)")
    where.add_argument("--model", help="start `mambakit serve --model MODEL` for the run")
    where.add_argument("--random-shape", help="start a server on random weights of this shape (e.g. mamba-1.4b)")
    parser.add_argument("--model-name", default="bench", help="model id to send (with --url)")
    parser.add_argument("--tokenizer", default=str(NEOX_TOKENIZER),
                        help="tokenizer for --random-shape (default: GPT-NeoX from ../shared/data, else bytes)")
    parser.add_argument("--clients", default="1,8,64", help="concurrency levels")
    parser.add_argument("--requests", type=int, default=4, help="requests per client at each level")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--prompt-chars", type=int, default=512, help="prompt length in characters")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--startup-timeout", type=float, default=900)
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()

    levels = [int(c) for c in args.clients.split(",")]
    process, url, model_name = None, args.url, args.model_name
    scratch = tempfile.TemporaryDirectory()
    if url is None:
        model = args.model or str(make_random_checkpoint(args.random_shape, Path(scratch.name) / "model",
                                                         Path(args.tokenizer)))
        process = start_server(model, args.port, max(levels), Path(scratch.name) / "server.log",
                               args.startup_timeout)
        url, model_name = f"http://127.0.0.1:{args.port}", "bench"
    body = {"model": model_name, "prompt": prompt_of(args.prompt_chars), "max_tokens": args.max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    try:
        results = []
        for clients in levels:
            result = asyncio.run(run_level(url, clients, args.requests, body))
            print(f"{clients:3d} clients: {result['tokens_per_second']:9.1f} tok/s, TTFT median "
                  f"{result['ttft_ms_median']:.1f} ms, p90 {result['ttft_ms_p90']:.1f} ms", flush=True)
            results.append(result)
        health = httpx.get(url + "/health").json()
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
        scratch.cleanup()
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "gpu": gpu_name(),
              "model": args.random_shape or args.model or model_name, "random_weights": bool(args.random_shape),
              "max_tokens": args.max_tokens, "prompt_chars": args.prompt_chars,
              "requests_per_client": args.requests, "server": health, "levels": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
