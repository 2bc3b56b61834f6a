"""Batch-1 GEMV: the Triton kernel against cuBLAS at the mamba-1.4b decode shapes (GB/s per matrix and
for one whole token's projections inside a CUDA graph). Run on a GPU: python benchmarks/gemv_probe.py"""
import json
import sys

import torch
import triton.testing

from mambakit.ops.kernels.gemv import linear

SHAPES = {"in_proj": (8192, 2048), "x_proj": (160, 4096), "dt_proj": (4096, 128), "out_proj": (2048, 4096),
          "lm_head": (50280, 2048)}
LAYERS = 48


def graph_ms(fn):
    fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return triton.testing.do_bench(graph.replay, return_mode="median")


def main():
    rows = []
    torch.set_grad_enabled(False)
    weights = {name: [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(LAYERS if name != "lm_head" else 1)]
               for name, (n, k) in SHAPES.items()}
    for name, (n, k) in SHAPES.items():
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        w = weights[name][0]
        for impl, fn in (("triton", lambda: linear(x, w)), ("cublas", lambda: torch.nn.functional.linear(x, w))):
            ms = triton.testing.do_bench(fn, return_mode="median")
            rows.append({"matrix": name, "impl": impl, "us": ms * 1e3, "gbps": n * k * 2 / ms / 1e6})
    total_bytes = sum(w.numel() * 2 for ws in weights.values() for w in ws)
    xs = {name: torch.randn(1, k, device="cuda", dtype=torch.bfloat16) for name, (n, k) in SHAPES.items()}
    for impl, op in (("triton", linear), ("cublas", torch.nn.functional.linear)):
        def token():
            for name, ws in weights.items():
                for w in ws:
                    op(xs[name], w)
        ms = graph_ms(token)
        rows.append({"matrix": "one token (graph)", "impl": impl, "us": ms * 1e3, "gbps": total_bytes / ms / 1e6})
    for row in rows:
        print(json.dumps(row))
    if len(sys.argv) > 1:
        open(sys.argv[1], "w").write(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
