#!/usr/bin/env bash
# The speed suite on a CUDA GPU with mixed precision (bf16), for machines that have one.
#   bash benchmarks/gpu.sh            # model scoring rates + CSV scoring on the GPU
# Writes benchmarks/results/speed-cuda.json and .md. Target on an H100: >= 5 million rows/s
# for the ELBO with K=1 on a 32-feature model (see the "ELBO, K=1" row).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA GPU visible to torch: nothing to measure" >&2
    exit 2
fi
"$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
PYTHONUNBUFFERED=1 "$PY" -m benchmarks.speed --device cuda --rows "${ROWS:-2000000}" "$@"
