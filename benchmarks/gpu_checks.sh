#!/usr/bin/env bash
# Everything a lent GPU machine should run, as one bounded script (see README "On a GPU"):
# the CUDA tests, the GPU speed suite (benchmarks/gpu.sh), then the test files whose paths
# change on a GPU (windows, batch/stream parity over a real broker, chunked CSV scoring), each
# step under its own time limit. Logs and results go to the folder given (default build/gpu).
#   bash benchmarks/gpu_checks.sh [LOG_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-build/gpu}
mkdir -p "$LOG"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    timeout "${CUDA_TESTS_S:-120}" "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
} 2>&1 | tee "$LOG/test_cuda.log"
# 2M rows: writing the 8M-row file alone outlasted the step's limit on an H200 machine's CPU.
ROWS=${ROWS:-2000000} timeout "${SUITE_S:-260}" bash benchmarks/gpu.sh 2>&1 |
    tee "$LOG/gpu_suite.log"
cp benchmarks/results/speed-cuda.* benchmarks/results/train_speed-cuda.* "$LOG/" 2>/dev/null
timeout "${TESTS_S:-300}" "$PY" -m pytest -q -p no:cacheprovider --timeout 200 \
    tests/test_windows_stream.py tests/test_cli.py tests/test_windows.py 2>&1 |
    tee "$LOG/tests_on_gpu.log"
