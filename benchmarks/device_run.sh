#!/usr/bin/env bash
# One device session: GPU tests, then benchmarks; everything lands in $OUT (device tool) or ./device-out.
# Usage: bash benchmarks/device_run.sh [tests] [probe] [profile] [bench14] [bench2] ...   (default: the first five;
# the others: parity kerneltests serve long14 long2 decodeprobe stateprobe ncu)
set -uo pipefail
OUT=${OUT:-device-out}; mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$HOME/.triton/cache}
steps=${*:-tests probe profile bench14 bench2}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee "$OUT/gpu.txt"
for step in $steps; do
  case $step in
    tests) timeout 240 python -m pytest -m gpu -q -p no:cacheprovider -rf tests/test_ops_*.py tests/test_gpu_model.py > "$OUT/gpu_tests.log" 2>&1; grep -E "passed|failed|FAILED|Error" "$OUT/gpu_tests.log" | tail -30 ;;
    probe) timeout 60 python benchmarks/gemv_probe.py "$OUT/gemv_probe.json" ;;
    profile) timeout 150 python benchmarks/step_profile.py --lengths 2048,10240 --decode-batches 1,64 --train --out "$OUT/step_profile.jsonl" 2>&1 | grep -E '"(shape|what|tokens|wall_ms|kernel_ms|launches)"' ;;
    decodeprobe) timeout 150 python benchmarks/decode_probe.py --out "$OUT/decode_probe.jsonl" 2>&1 | grep decode_step ;;
    stateprobe) timeout 120 python benchmarks/state_update_probe.py --batches 64 --out "$OUT/state_update_probe.jsonl" 2>&1 | grep default ;;
    ncu) SECT="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats"
         timeout 100 ncu -k regex:'_input_gemv|_gemv_kernel|_ssm_step|_conv_xproj' --launch-skip 8 --launch-count 5 $SECT python benchmarks/ncu_kernels.py decode --repeats 2 > "$OUT/ncu_decode.txt" 2>&1
         timeout 100 ncu -k regex:_segment_ --launch-skip 3 --launch-count 3 $SECT python benchmarks/ncu_kernels.py scan --repeats 2 > "$OUT/ncu_scan.txt" 2>&1
         grep -E "^  _|Duration|DRAM Throughput" "$OUT"/ncu_*.txt ;;
    bench14) timeout 220 python -m mambakit.bench --shape mamba-1.4b --baseline hf --out "$OUT/h200-mamba-1.4b.json" 2>&1 | tail -30 ;;
    parity) timeout 120 python benchmarks/op_parity.py cuda 2>&1 | grep -v "falling back" ;;
    kerneltests) timeout 150 python -m pytest -m gpu -q -p no:cacheprovider -rf tests/test_ops_rms_norm.py tests/test_ops_ssd.py > "$OUT/kernel_tests.log" 2>&1; grep -E "passed|failed|FAILED|Error" "$OUT/kernel_tests.log" | tail -20 ;;
    serve) timeout 200 python benchmarks/serve_load.py --random-shape mamba-1.4b --out "$OUT/h200-serve-mamba-1.4b.json" 2>&1 | tail -15 ;;
    long14) OUT=$OUT EXTRA="--time-limit 150" bash benchmarks/long_context.sh mamba-1.4b 2>&1 | tail -25 ;;
    long2) OUT=$OUT EXTRA="--time-limit 150" bash benchmarks/long_context.sh mamba2-1.3b 2>&1 | tail -25 ;;
    bench2) timeout 120 python -m mambakit.bench --shape mamba2-1.3b --out "$OUT/h200-mamba2-1.3b.json" 2>&1 | tail -30 ;;
  esac
done
