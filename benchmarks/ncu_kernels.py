"""A small driver for Nsight Compute: runs the kernels the speed targets hinge on, a few times each, so that
``ncu`` can profile one launch of each (random bf16 weights of a named shape).

    ncu -k regex:'_input_gemv|_gemv_kernel|_ssm_step' --launch-skip 12 --launch-count 4 \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \\
        python benchmarks/ncu_kernels.py decode --shape mamba-1.4b --batch 1
    ncu -k regex:_segment_ --launch-count 3 --section SpeedOfLight ... python benchmarks/ncu_kernels.py scan

``decode``: eager fused decode steps (the kernels a graphed step replays); ``scan``: the Mamba-1 selective
scan forward at the benchmark shape (b=1 d=4096 l=10240 n=16, the model's layout), with ``--backward``
followed by its backward (ncu -k regex:'_adjoint_summary|_segment_backward').
"""
from __future__ import annotations

import argparse

import torch

from mambakit.bench.model_bench import SHAPES
from mambakit.model import MambaLM


def decode(shape: str, batch: int, steps: int) -> None:
    model = MambaLM.from_config(SHAPES[shape], device="cuda", dtype=torch.bfloat16, seed=0).eval()
    state = model.allocate_state(batch)
    token = torch.zeros(batch, dtype=torch.long, device="cuda")
    with torch.inference_mode():
        for _ in range(steps):
            token = model.step(token, state).argmax(-1)
    torch.cuda.synchronize()


def scan(repeats: int, backward: bool) -> None:
    from scan_probe import model_layout  # this script's folder is on sys.path

    from mambakit.bench.ops_selective_scan import SCAN_SHAPE, _scan_inputs
    from mambakit.ops.kernels.selective_scan import selective_scan

    inputs = {name: value.detach().requires_grad_(backward)  # detached views keep the model's strides
              for name, value in model_layout(_scan_inputs("cuda", **SCAN_SHAPE)).items()}
    with torch.set_grad_enabled(backward):
        for _ in range(repeats):
            y = selective_scan(**inputs, delta_softplus=True)
            if backward:
                y.backward(torch.ones_like(y))
    torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("decode", "scan"))
    parser.add_argument("--shape", default="mamba-1.4b", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backward", action="store_true", help="scan: run the backward after each forward")
    args = parser.parse_args()
    if args.what == "decode":
        decode(args.shape, args.batch, args.repeats)
    else:
        scan(args.repeats, args.backward)


if __name__ == "__main__":
    main()
