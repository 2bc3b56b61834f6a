#!/usr/bin/env bash
# `bench long` on the GPU: a Mamba shape (random weights) against TinyLlama-1.1B's config (random weights,
# SDPA and eager attention), prompts 1k..128k tokens, ~4 minutes per shape. Writes
# long_context-<shape>.json and .png to $OUT (device tool) or benchmarks/results/long_context.
# Usage: bash benchmarks/long_context.sh [mamba-1.4b] [mamba2-1.3b]   (default: both; one per device call
# keeps each call well inside its 10-minute limit). Extra options via EXTRA, e.g. EXTRA="--gpu-memory-gb 24".
set -uo pipefail
OUT=${OUT:-benchmarks/results/long_context}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
for shape in ${*:-mamba-1.4b mamba2-1.3b}; do
  timeout 290 python3 -m mambakit.bench long --shape "$shape" --time-limit 240 --output "$OUT" ${EXTRA:-} \
    2>&1 | tee "$OUT/long_context-$shape.log" | grep -v Warning | tail -40
done
