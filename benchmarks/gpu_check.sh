#!/usr/bin/env bash
# The CUDA path in one short run, for a machine with a GPU (also runs on CPU, where it checks the commands only):
#  1. device facts and the runtime covers picks;
#  2. benchmarks.trainer on the device at the default config (64 px / batch 32): trainer vs bare loop, data path
#     per DataLoader worker count, embeddings;
#  3. end to end on generated demo data (400 covers per genre): one training (device=auto: CUDA, AMP,
#     channels_last, pinned memory, cudnn benchmark, loader workers) and a 3-trial sweep;
#  4. benchmarks.loader (uint8 batches normalised on the device vs float32 ones, 0/4/8 workers), benchmarks.trainer
#     at 128 px / batch 64, benchmarks.runtime (bf16 default vs contiguous, fp32, fp16; ResNet-50 at 224 px; twice
#     the step limit: every variant's warm-up pays cuDNN's cold set-up), and the end-to-end training with
#     torch.compile (most expensive, so last).
# Figures go to stdout; JSON results and logs to $OUT (at most 8 files). Each step has its own time limit so that
# one slow step does not take the others with it. On a machine without a package index, install the wheels that
# benchmarks/gpu_wheels.sh downloads first. Figures from an H200: docs/benchmarks.md.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#   SIZE=32 PER_CLASS=48 STEP_LIMIT=300 SKIP_COMPILE=1 bash benchmarks/gpu_check.sh   # a quick check on a CPU
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
ROOT=${ROOT:-$(mktemp -d)/covers}
LIMIT=${STEP_LIMIT:-150}
DEVICE=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')") || {
    echo "python3 cannot import torch" >&2
    exit 1
}
SIZE=${SIZE:-128}
mkdir -p "$OUT" "$ROOT"
export PYTHONUNBUFFERED=1

step() {  # name, command...: run with a time limit, report its wall time and status
    local name=$1 start=$SECONDS
    shift
    echo "== $name"
    timeout "$LIMIT" "$@"
    echo "== $name: rc $? in $((SECONDS - start)) s"
}

step device python3 - <<'EOF'
import os, torch, timm
print("torch", torch.__version__, "timm", timm.__version__, "cores", os.cpu_count(), "cuda", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
from covers.training.loop import create_runtime
print("runtime:", create_runtime())
EOF

epochs() {  # the per-epoch log lines of a run's output
    grep -E "epoch [0-9]+/[0-9]+ " "$1" | sed -E 's/.*(epoch [0-9]+\/[0-9]+).*(val_acc=[0-9.]+).*(epoch_time_s=[0-9.]+).*/\1 \2 \3/'
}
common=("paths.root_dir=$ROOT" "data.image_size=$SIZE" "data.batch_size=64" "data.demo.per_class=${PER_CLASS:-400}")
e2e() {  # name, overrides...
    local name=$1
    shift
    step "$name" python3 experiments/run.py "$@" "${common[@]}" >"$ROOT/$name.log" 2>&1
    grep -E "^== $name" "$ROOT/$name.log"
    epochs "$ROOT/$name.log"
    grep -E "Error|error:" "$ROOT/$name.log" | tail -5
}
step trainer_default python3 -m benchmarks.trainer --device "$DEVICE" --workers 0 2 4 8 --batches 40 \
    --json "$OUT/trainer_default.json"
e2e train trainer.epochs=3 tracking.experiment=gpu-check
e2e sweep -m hydra.sweeper.n_trials=3 "trainer.epochs=choice(2)" hydra.sweeper.study_name=gpu-check \
    tracking.experiment=gpu-check
step loader python3 -m benchmarks.loader --device "$DEVICE" --sizes 64 "$SIZE" --workers 0 4 8 --json "$OUT/loader.json"
step trainer_big python3 -m benchmarks.trainer --device "$DEVICE" --size "$SIZE" --batch 64 --batches 30 \
    --workers 0 2 4 8 --json "$OUT/trainer_big.json"
LIMIT=$((LIMIT * 2)) step runtime python3 -m benchmarks.runtime --device "$DEVICE" --size "$SIZE" --batch 64 \
    --variants default contiguous fp32 fp16 --models resnet50:224 --json "$OUT/runtime.json"
if [ -z "${SKIP_COMPILE:-}" ]; then
    e2e train_compile trainer.epochs=3 trainer.compile=true tracking.experiment=gpu-check
fi
cp "$ROOT"/*.log "$OUT"/
echo "results in $OUT"
