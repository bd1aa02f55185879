#!/usr/bin/env bash
# Every GPU measurement of issue 12 in one table, on a machine with one CUDA GPU (about 4 minutes
# on an H200 with 16 CPUs, data generation included; see benchmarks/gpu_table.py for the rows):
#   bash benchmarks/gpu.sh [--workers N]      (default: the number of CPUs minus 2)
# Prints the markdown table; with $OUT set also writes $OUT/gpu_table.md and every run's log in
# $OUT/gpu_logs/. Paste the table into benchmarks/RESULTS.md (GPU section).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L || true
python3 benchmarks/gpu_table.py "$@"
