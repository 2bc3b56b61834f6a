"""Causal conv1d probe: times the Triton conv (forward, backward, forward+backward, decode update) under several
launch configurations at mamba shapes, one JSON line per measurement, so that one GPU run picks the best.

Run on a GPU:  PYTHONPATH=. python benchmarks/conv_probe.py [--shapes long,train] [--only default,backward]
  [--baseline FILE] [--out FILE]

Configurations: each entry of SWEEP is (kernel, {key: value, ...}), kernel 'forward', 'backward' or 'update':
one configuration of that kernel's launch dict (FORWARD_CONFIG, BACKWARD_CONFIG, UPDATE_CONFIG in
mambakit/ops/kernels/causal_conv1d.py) with those keys changed from DEFAULTS, timed with the other kernels
at their defaults. The defaults of all three are timed first. The environment variable CONV_PROBE_SWEEP, a
JSON list of such entries, replaces SWEEP, e.g.
  CONV_PROBE_SWEEP='[["backward", {"row_bytes": 2048, "num_warps": 8}], ["backward", {"rows_per_step": 4}]]'
``--only`` keeps the configurations whose label (as printed) or kernel is listed.
``--baseline FILE`` also times another version of the kernel module (e.g. the old one:
``git show 84ec8f8:mambakit/ops/kernels/causal_conv1d.py > benchmarks/conv_old.py``) at its own defaults.

Each line: {"label", "kernel", "config", "shape", "op" (fwd, bwd, fwd+bwd, update eager: one call with its
launch, update graph: one call inside a CUDA graph), "ms" (median of triton.testing.do_bench), "gbps" (bytes
that must move through HBM / time), "rel_err" (||out - ref|| / ||ref|| of y, dx, dweight, dbias or of y and
the state, against the fp32 reference; on each configuration's first row), "ok", "compiled" ([kernel,
registers, spills] of the variants this configuration compiled, where Triton exposes them)}. A table of the
fastest correct configuration per op closes the output (on stderr).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys

import torch
import triton.testing

from mambakit.ops import reference
from mambakit.ops.kernels import causal_conv1d as conv

SHAPES = {"long": dict(batch=1, channels=4096, length=10240, width=4),  # the brief's shape
          "train": dict(batch=4, channels=4096, length=2048, width=4)}  # a mamba-1.4b training step
UPDATE_BATCHES = (1, 64)
UPDATE_GRAPH_CALLS = 100
DEFAULTS = {"forward": dict(conv.FORWARD_CONFIG), "backward": dict(conv.BACKWARD_CONFIG),
            "update": dict(conv.UPDATE_CONFIG)}
# row_bytes / (64 * num_warps) = bf16 channels per thread (2, 4 or 8: 4-, 8- or 16-byte accesses); the backward
# nears 255 registers at 8 channels or 12 rows per step and spills beyond.
SWEEP = (
    [("forward", change) for change in (
        {"row_bytes": 512, "num_warps": 2}, {"row_bytes": 2048, "num_warps": 8},
        {"row_bytes": 2048, "num_warps": 4}, {"row_bytes": 4096, "num_warps": 8},
        {"rows_per_step": 4}, {"rows_per_step": 16},
        {"target_programs": 528}, {"target_programs": 2112}, {"target_programs": 4224})]
    + [("backward", change) for change in (
        {"row_bytes": 256, "num_warps": 1}, {"row_bytes": 512, "num_warps": 2}, {"row_bytes": 2048, "num_warps": 8},
        {"rows_per_step": 4}, {"rows_per_step": 6}, {"rows_per_step": 12},
        {"target_programs": 528}, {"target_programs": 2112}, {"target_programs": 4224},
        {"rows_per_step": 4, "target_programs": 2112}, {"rows_per_step": 12, "row_bytes": 512, "num_warps": 2})]
    + [("update", {"block_d": block_d}) for block_d in (32, 64, 256, 512)]
)
TOLERANCE = 2e-2  # relative error of bf16 outputs against the fp32 reference


def _median_ms(fn, grad_to_none=None) -> float:
    return triton.testing.do_bench(fn, grad_to_none=grad_to_none, return_mode="median")


def _compiled(module) -> dict:
    """{id: (kernel name, registers, spills)} of every compiled variant of the module's kernels (empty where
    Triton keeps them elsewhere; registers are known once a variant has run)."""
    stats = {}
    for name in ("_conv_forward_kernel", "_conv_backward_kernel", "_conv_update_kernel"):
        for cache in getattr(getattr(module, name, None), "device_caches", {}).values():
            for kernel in (cache[0] if isinstance(cache, tuple) else cache).values():
                stats[id(kernel)] = (name, getattr(kernel, "n_regs", None), getattr(kernel, "n_spills", None))
    return stats


def _rel_errors(outputs, references) -> list[float]:
    return [((out.float() - ref.float()).norm() / ref.float().norm()).item() for out, ref in zip(outputs, references)]


class Problem:
    """Inputs at one training shape (x a (b, d, l) view of a (b, l, d) tensor, as the model gives it) and the
    fp32 reference's output and gradients."""

    def __init__(self, name: str, batch: int, channels: int, length: int, width: int):
        self.shape = f"{name}: b={batch} d={channels} l={length} k={width} bf16 silu"
        self.x = torch.randn(batch, length, channels, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        self.weight = torch.randn(channels, width, device="cuda", dtype=torch.bfloat16) * 0.5
        self.bias = torch.randn(channels, device="cuda", dtype=torch.bfloat16)
        self.grad_y = torch.randn_like(self.x)
        self.references = self.run(reference.causal_conv1d)
        element_bytes = self.x.numel() * self.x.element_size()
        self.bytes = {"fwd": 2 * element_bytes, "bwd": 3 * element_bytes, "fwd+bwd": 5 * element_bytes}

    def leaves(self):
        return [t.detach().clone().requires_grad_() for t in (self.x, self.weight, self.bias)]

    def run(self, fn):
        """(y, dx, dweight, dbias) of fn on this problem."""
        x, weight, bias = self.leaves()
        y = fn(x, weight, bias, "silu")
        y.backward(self.grad_y)
        return [y.detach(), x.grad, weight.grad, bias.grad]

    def time(self, module, op: str) -> float:
        x, weight, bias = self.leaves()
        if op == "fwd":
            with torch.no_grad():
                return _median_ms(lambda: module.causal_conv1d(x, weight, bias, "silu"))
        if op == "bwd":
            y = module.causal_conv1d(x, weight, bias, "silu")
            return _median_ms(lambda: y.backward(self.grad_y, retain_graph=True), grad_to_none=[x, weight, bias])
        return _median_ms(lambda: module.causal_conv1d(x, weight, bias, "silu").backward(self.grad_y),
                          grad_to_none=[x, weight, bias])


def _time_update(module, batch: int, channels: int, width: int) -> list[dict]:
    """Rows for the eager call time (launch included) and the per-call time inside a CUDA graph of
    UPDATE_GRAPH_CALLS calls (the GPU's time alone)."""
    x = torch.randn(batch, channels, device="cuda", dtype=torch.bfloat16)
    state = torch.randn(batch, channels, width - 1, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(channels, width, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(channels, device="cuda", dtype=torch.bfloat16)
    expected_state = state.clone()
    expected = reference.causal_conv1d_update(x, expected_state, weight, bias, "silu")
    actual_state = state.clone()
    rel_err = _rel_errors([module.causal_conv1d_update(x, actual_state, weight, bias, "silu"), actual_state],
                          [expected, expected_state])
    eager_ms = _median_ms(lambda: module.causal_conv1d_update(x, state, weight, bias, "silu"))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(UPDATE_GRAPH_CALLS):
            module.causal_conv1d_update(x, state, weight, bias, "silu")
    graph_ms = _median_ms(graph.replay) / UPDATE_GRAPH_CALLS
    moved = 2 * (x.numel() + state.numel()) * x.element_size()  # read x and the state, write y and the state
    shape = f"b={batch} d={channels} k={width} bf16"
    return [{"op": op, "shape": shape, "ms": ms, "gbps": moved / (ms * 1e-3) / 1e9, "rel_err": err}
            for op, ms, err in (("update eager", eager_ms, rel_err), ("update graph", graph_ms, None))]


def _measure(label: str, kernel: str, config: dict, module, problems: list[Problem], ops: list[str]) -> list[dict]:
    """Rows for one configuration of one module: the training ops on every problem, or the decode update."""
    seen = _compiled(module)
    rows = []
    if kernel == "update":
        channels, width = problems[0].weight.shape if problems else (4096, 4)
        for batch in UPDATE_BATCHES:
            rows += _time_update(module, batch, channels, width)
    else:
        for problem in problems:
            rel_err = _rel_errors(problem.run(module.causal_conv1d), problem.references)
            for op in ops:
                ms = problem.time(module, op)
                rows.append({"op": op, "shape": problem.shape, "ms": ms,
                             "gbps": problem.bytes[op] / (ms * 1e-3) / 1e9, "rel_err": rel_err})
                rel_err = None
    compiled = [stats for key, stats in _compiled(module).items() if key not in seen]
    for row in rows:
        row.update(label=label, kernel=kernel, config=config, compiled=compiled)
        errors = row.get("rel_err") or []
        row["ok"] = all(err < TOLERANCE for err in errors)
        print(json.dumps(row), flush=True)
    return rows


def _configurations(only: set[str] | None) -> list[tuple[str, str, dict]]:
    """(label, kernel, full config dict) for the defaults and every SWEEP entry (or CONV_PROBE_SWEEP's)."""
    sweep = json.loads(os.environ["CONV_PROBE_SWEEP"]) if os.environ.get("CONV_PROBE_SWEEP") else SWEEP
    configs = [("default", kernel, DEFAULTS[kernel]) for kernel in ("forward", "backward", "update")]
    for kernel, change in sweep:
        config = {**DEFAULTS[kernel], **change}
        configs.append((kernel + ":" + ",".join(f"{key}={value}" for key, value in change.items()), kernel, config))
    return [c for c in configs if only is None or c[0] in only or c[1] in only]


def _load_module(path: str):
    spec = importlib.util.spec_from_file_location("conv_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="long", help=f"comma-separated names from {sorted(SHAPES)}")
    parser.add_argument("--only", default=None, help="comma-separated labels or kernel names to run")
    parser.add_argument("--baseline", default=None, help="another version of the kernel module to time too")
    parser.add_argument("--out", default=None, help="also write every row to this JSON-lines file")
    args = parser.parse_args()
    torch.manual_seed(0)
    problems = [Problem(name, **SHAPES[name]) for name in args.shapes.split(",")]
    rows = []
    if args.baseline:
        baseline = _load_module(args.baseline)
        rows += _measure("baseline", "training", {}, baseline, problems, ["fwd", "bwd", "fwd+bwd"])
        rows += _measure("baseline", "update", {}, baseline, problems, [])
    only = set(args.only.split(",")) if args.only else None
    targets = {"forward": conv.FORWARD_CONFIG, "backward": conv.BACKWARD_CONFIG, "update": conv.UPDATE_CONFIG}
    for label, kernel, config in _configurations(only):
        saved = copy.deepcopy(targets[kernel])
        targets[kernel].clear()
        targets[kernel].update(config)
        ops = {"forward": ["fwd"], "backward": ["bwd", "fwd+bwd"]}.get(kernel, [])
        if label == "default" and kernel == "forward":
            ops = ["fwd", "fwd+bwd"]
        try:
            rows += _measure(label, kernel, config, conv, problems, ops)
        except Exception as error:  # a configuration that fails to compile or run is reported, not fatal
            print(json.dumps({"label": label, "kernel": kernel, "config": config, "error": repr(error)}), flush=True)
        finally:
            targets[kernel].clear()
            targets[kernel].update(saved)
    if args.out:
        with open(args.out, "w") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
    print("\nfastest correct configuration per op and shape:", file=sys.stderr)
    best = {}
    for row in rows:
        key = (row["op"], row["shape"])
        if row["ok"] and (key not in best or row["ms"] < best[key][0]):
            best[key] = (row["ms"], row["label"])
    for (op, shape), (time, label) in sorted(best.items()):
        print(f"  {op:8s} {shape:44s} {time * 1e3:9.1f} us  {label}", file=sys.stderr)


if __name__ == "__main__":
    main()
