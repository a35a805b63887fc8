#!/usr/bin/env bash
# The CUDA path in one short run, for a machine with a GPU (also runs on CPU, where it checks the commands only):
# device facts, one training run (device=auto: CUDA, AMP bf16/fp16, channels_last, pinned memory, cudnn benchmark),
# the same with torch.compile, and a 3-trial sweep. Figures (epoch times, val acc) go to stdout and $OUT/.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
ROOT="$OUT/covers"
mkdir -p "$ROOT"
common=("paths.root_dir=$ROOT" "data.image_size=${SIZE:-128}" "data.batch_size=${BATCH:-64}")

python - <<'EOF' | tee "$OUT/device.txt"
import torch
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
from covers.train import create_runtime
print("runtime:", create_runtime())
EOF

epochs() {  # the per-epoch log lines of a run's output
    grep -E "epoch [0-9]+/[0-9]+ " "$1" | sed -E 's/.*(epoch [0-9]+\/[0-9]+).*(val_acc=[0-9.]+).*(epoch_time_s=[0-9.]+).*/\1 \2 \3/'
}

run() {  # name, overrides...
    local name=$1
    shift
    local start=$SECONDS
    python experiments/run.py "$@" "${common[@]}" >"$OUT/$name.log" 2>&1
    echo "== $name: $((SECONDS - start)) s"
    epochs "$OUT/$name.log"
}

run train trainer.epochs=3 tracking.experiment=gpu-check
run train_compile trainer.epochs=3 trainer.compile=true tracking.experiment=gpu-check
run sweep -m hydra.sweeper.n_trials=3 "trainer.epochs=choice(2)" hydra.sweeper.study_name=gpu-check \
    tracking.experiment=gpu-check
echo "logs in $OUT"
