#!/usr/bin/env bash
# One device session: GPU tests, then benchmarks; everything lands in $OUT (device tool) or ./device-out.
# Usage: bash benchmarks/device_run.sh [tests] [probe] [bench14] [bench2]   (default: all)
set -uo pipefail
OUT=${OUT:-device-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$HOME/.triton/cache}
steps=${*:-tests probe bench14 bench2}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee "$OUT/gpu.txt"
for step in $steps; do
  case $step in
    tests) timeout 200 python -m pytest -m gpu -q -p no:cacheprovider tests/test_ops_*.py tests/test_gpu_model.py 2>&1 | tail -40 > "$OUT/gpu_tests.log"; tail -15 "$OUT/gpu_tests.log" ;;
    probe) timeout 60 python benchmarks/gemv_probe.py "$OUT/gemv_probe.json" ;;
    bench14) timeout 220 python -m mambakit.cli bench --shape mamba-1.4b --baseline hf --out "$OUT/h200-mamba-1.4b.json" 2>&1 | tail -30 ;;
    bench2) timeout 120 python -m mambakit.cli bench --shape mamba2-1.3b --out "$OUT/h200-mamba2-1.3b.json" 2>&1 | tail -30 ;;
  esac
done
