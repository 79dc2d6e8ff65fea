#!/usr/bin/env bash
# The prepared GPU check (run on a CUDA machine from the repo root). Uses the machine's own PyTorch / timm;
# riskcl from src/. Writes results to ${OUT:-/tmp/riskcl-gpu}. The parts run most important first, each under
# its own time limit (550 s in all, under the device tool's 600 s per command), so that a short device lease
# still brings back the end-to-end rows of benchmarks/RESULTS.md:
#   1. end-to-end epoch vs step ceiling (resnet50, 224 px, batch 128 and 32; issue "Feed the GPU")
#   2. the GPU tests (every loss under CUDA bf16 against its CPU value, a tiny run on CUDA)
#   3. the training-step benchmark of the paper's backbones, 4. `riskcl demo` on the GPU.
set -uo pipefail
OUT=${OUT:-/tmp/riskcl-gpu}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/tests PYTHONUNBUFFERED=1 RISKCL_CACHE_DIR=/tmp/riskcl-cache HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
for b in 128 32; do
  timeout 110 python3 benchmarks/bench_epoch.py --device cuda --model resnet50 --size 224 --batch $b \
    --dataset demo --scale 3 --prefetch 2 --repeat 3 2>&1 | tail -3 | tee -a "$OUT/bench_epoch.txt"
done
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_losses.py 2>&1 | tail -5 \
  | tee "$OUT/pytest.txt"
timeout 120 python3 benchmarks/bench_train_step.py --device cuda --out "$OUT/train_step_cuda.json" 2>&1 \
  | tee "$OUT/bench.txt"
timeout 60 python3 -m riskcl demo --out /tmp/demo-gpu --quiet 2>&1 | tail -8 | tee "$OUT/demo.txt"
