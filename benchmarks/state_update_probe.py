"""Probe of the per-op SSM state update (``ops.selective_state_update``), the step that dominates batched
decoding: per launch over 48 layers' distinct states (no L2 reuse between layers, as in a real step), in a
CUDA graph, at the mamba-1.4b and mamba2-1.3b layer shapes, for fp32 and bf16 states: the shipped tile
choice ("default") and each (tile elements, warps) without the row cap. GB/s counts the state read and
written plus the per-row inputs. One JSON line per measurement.

    python benchmarks/state_update_probe.py [--batches 8,64] [--out results.jsonl]
"""
from __future__ import annotations

import argparse
import json

import torch

from decode_probe import graph_us  # this script's folder is on sys.path

from mambakit import ops
from mambakit.ops.kernels import state_update

LAYERS = 48
LAYOUTS = {  # name: (heads, head dim, state size, groups); Mamba-1 is heads = d_inner of head dim 1
    "mamba-1.4b": (4096, 1, 16, 1),
    "mamba2-1.3b": (64, 64, 128, 1),
}
SETTINGS = ["default"] + [(tile, warps) for tile in (512, 1024, 2048, 4096, 8192) for warps in (4, 8)]
KNOBS = ("STATE_TILE_ELEMENTS", "STATE_MAX_ROWS", "STATE_NUM_WARPS")


def layer_inputs(layout, batch: int, state_dtype: torch.dtype) -> list[tuple]:
    heads, head_dim, n, groups = layout
    bf16 = torch.bfloat16
    calls = []
    for _ in range(LAYERS):
        state = torch.randn(batch, heads, head_dim, n, device="cuda").to(state_dtype)
        x, z = (torch.randn(batch, heads, head_dim, device="cuda", dtype=bf16) for _ in range(2))
        dt = torch.randn(batch, heads, head_dim, device="cuda", dtype=bf16) - 3
        A = -torch.rand(heads, head_dim, n, device="cuda") * 8
        B, C = (torch.randn(batch, groups, n, device="cuda", dtype=bf16) for _ in range(2))
        D, dt_bias = torch.randn(heads, head_dim, device="cuda"), torch.randn(heads, head_dim, device="cuda")
        calls.append((state, x, dt, A, B, C, D, z if head_dim == 1 else None, dt_bias, True))
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="8,64")
    parser.add_argument("--out")
    args = parser.parse_args()
    out = open(args.out, "a") if args.out else None
    defaults = [getattr(state_update, knob) for knob in KNOBS]
    torch.set_grad_enabled(False)
    for shape, layout in LAYOUTS.items():
        for batch in (int(b) for b in args.batches.split(",")):
            for state_dtype in (torch.float32, torch.bfloat16):
                calls = layer_inputs(layout, batch, state_dtype)
                state = calls[0][0]
                moved = 2 * state.numel() * state.element_size() + 4 * batch * layout[0] * layout[1] * 2
                for setting in SETTINGS:
                    values = defaults if setting == "default" else (setting[0], setting[0], setting[1])
                    for knob, value in zip(KNOBS, values):
                        setattr(state_update, knob, value)
                    us = graph_us(lambda: [ops.selective_state_update(*c) for c in calls]) / LAYERS
                    row = {"shape": shape, "batch": batch, "state": str(state_dtype)[6:],
                           "setting": setting if setting == "default" else dict(zip(KNOBS, values)),
                           "us": round(us, 2), "gbps": round(moved / us / 1e3)}
                    print(json.dumps(row), flush=True)
                    if out:
                        print(json.dumps(row), file=out, flush=True)
                del calls, state
    for knob, value in zip(KNOBS, defaults):
        setattr(state_update, knob, value)


if __name__ == "__main__":
    main()
