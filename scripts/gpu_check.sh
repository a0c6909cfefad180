#!/usr/bin/env bash
# The checks only a CUDA GPU can run, as one short script for a lent GPU machine (its python3 already holds torch,
# timm, onnx and onnxruntime). Writes logs and the benchmark report under ${OUT:-gpu-check}.
#   1. pytest -m gpu: mixed-precision (bf16, fp16 + GradScaler) training steps; FP16 and CUDA-graph rows vs FP32.
#   2. the paper-size benchmark on the GPU with the OASIS-size peer, batch 1 and 16 (batch-1 latency, batch-16
#      FP16 throughput against the peer).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu-check}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
"$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_benchmarks.py 2>&1 | tee "$OUT/pytest-gpu.log"
"$PY" -m benchmarks.run --preset ade20k-256-edge --device cuda --batches 1,16 --rounds 5 --runs 6 --warmup 5 --compile \
  --artifacts torch:fp32,torch:fp16 --peer benchmarks.peers:oasis_generator --out /tmp/gpu-bench 2>&1 | tee "$OUT/bench.log"
cp /tmp/gpu-bench/results.json /tmp/gpu-bench/results.md /tmp/gpu-bench/latency.png "$OUT/" 2>/dev/null || true
