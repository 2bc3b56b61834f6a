#!/usr/bin/env bash
# The session's last GPU call: default model, GPU tests of the fused decode path, benchmarks, probes.
# Needs .whl (starlette, uvicorn) and .devdata/data (a copy of ../shared/data) carried; results go to
# $OUT/results.tgz (the device tool returns at most 8 files).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
R=/tmp/results; mkdir -p $R; D=.devdata/data
# each step re-packs $OUT/results.tgz, so a call cut short still returns what was done
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout $limit "$@" > $R/$name.log 2>&1; echo "rc=$?"
         tail -${TAIL:-6} $R/$name.log; tar czf $OUT/results.tgz -C /tmp results; }
TAIL=3 step pretrain 170 python -m mambakit.cli pretrain --recipe pretrain-small --data $D/text --output $R/mambakit-small --set max_train_minutes=2.0
rm -rf $R/mambakit-small/checkpoint-* $R/mambakit-small/runs; python -c "import json;r=json.load(open('$R/mambakit-small/train_report.json'));print({k:r[k] for k in r if k!='log_history'})" 2>&1 | head -c 1500
TAIL=8 step gputests 80 python -m pytest -m gpu -q -p no:cacheprovider -rf tests/test_ops_decode_fused.py tests/test_gpu_model.py
TAIL=12 step decodeprobe 60 python benchmarks/decode_probe.py --out $R/decode_probe.jsonl
[ -f benchmarks/scan_probe.py ] && TAIL=12 step scanprobe 50 python benchmarks/scan_probe.py --layouts model --out $R/scan_probe.jsonl
[ -f benchmarks/conv_probe.py ] && TAIL=12 step convprobe 40 python benchmarks/conv_probe.py --shapes long --out $R/conv_probe.jsonl
TAIL=8 step bench14 65 python -m mambakit.bench decode prefill train --shape mamba-1.4b --prefill-lengths 2048,10240 --out $R/h200-mamba-1.4b.json
TAIL=8 step bench2 65 python -m mambakit.bench decode prefill train --shape mamba2-1.3b --prefill-lengths 2048,10240 --out $R/h200-mamba2-1.3b.json
TAIL=6 step serve 50 python benchmarks/serve_load.py --random-shape mamba-1.4b --requests 2 --tokenizer $D/tokenizers/gpt-neox-20b --out $R/h200-serve-mamba-1.4b.json
TAIL=6 step finetune 50 python benchmarks/finetune_throughput.py --data-dir $D --steps 8 --modes packed,padded-grouped --out $R/finetune_throughput.json
ls -la $OUT
