#!/usr/bin/env bash
# Every GPU measurement of benchmarks/RESULTS.md in one go, for a machine with one CUDA GPU:
#   bash benchmarks/gpu.sh [workers]      (default: the number of CPUs minus 2)
# Prints markdown tables; paste them into RESULTS.md with the card's name (nvidia-smi -L).
set -euo pipefail
cd "$(dirname "$0")/.."
workers=${1:-$(( $(nproc) - 2 ))}
nvidia-smi -L

# The input pipeline on this machine's CPUs (also makes the JPEGs and the prepared copy).
python benchmarks/pipeline.py --images 4096 --workers "$workers"

# The model-bound ceiling: synthetic batches already in memory, batch 128 (the paper's).
step="python benchmarks/step.py --device cuda --batch 128 --steps 50 --warmup 10"
$step
$step --precision bf16-mixed
$step --precision bf16-mixed --channels-last
$step --precision bf16-mixed --channels-last --compile

# The real pipeline against that ceiling: originals and prepared copy, decoded on CPU and GPU.
fast="--precision bf16-mixed --channels-last --steps 100"
for data in originals-4096 resized-4096; do
  for decode in cpu gpu; do
    $step $fast --data "/tmp/alexnet_pl_bench/$data" --decode "$decode" --workers "$workers"
  done
done
