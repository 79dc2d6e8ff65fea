#!/usr/bin/env bash
# The prepared GPU check (run on a CUDA machine from the repo root): GPU tests, then paper-protocol throughput.
# Uses the machine's own PyTorch / timm; riskcl from src/. Writes results to ${OUT:-/tmp/riskcl-gpu}.
set -uo pipefail
OUT=${OUT:-/tmp/riskcl-gpu}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/tests PYTHONUNBUFFERED=1 RISKCL_CACHE_DIR=/tmp/riskcl-cache HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_losses.py 2>&1 | tail -5 | tee "$OUT/pytest.txt"
python3 benchmarks/bench_train_step.py --device cuda --out "$OUT/train_step_cuda.json" 2>&1 | tee "$OUT/bench.txt"
python3 -m riskcl demo --out /tmp/demo-gpu --quiet 2>&1 | tail -8 | tee "$OUT/demo.txt"
for b in 32 128; do
  python3 benchmarks/bench_epoch.py --device cuda --model resnet50 --size 224 --batch $b --dataset demo --scale 3 \
    --prefetch 2 2>&1 | tail -1 | tee -a "$OUT/bench_epoch.txt"
done
