#!/usr/bin/env bash
# Train on one device: bash scripts/run_standalone_train.sh [DEVICE_TARGET] [DATA_PATH] [CONFIG_PATH](opt) [CKPT](opt)
# Runs in ./train_standalone/ (checkpoints under its output/), log in train_standalone/log.txt.
# CKPT, when given, is a pretrained checkpoint (all but the classifier is loaded).
# EXTRA_ARGS="--key value ..." adds train.py flags. Ends with where the checkpoints are.
# SIGTERM / Ctrl-C: training finishes its step and saves (--resume auto continues), exit 143/130.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
usage_unless 2 4 $# "bash $0 [DEVICE_TARGET] [DATA_PATH] [CONFIG_PATH](opt) [CKPT](opt)"
DEVICE_TARGET=$1
DATA_PATH=$(abspath "$2")
CONFIG_PATH=$(abspath "${3:-$DEFAULT_CONFIG}")
need_path "data path" "$DATA_PATH"
need_path "config file" "$CONFIG_PATH"
ARGS=(--config_path "$CONFIG_PATH" --device_target "$DEVICE_TARGET" --dataset_path "$DATA_PATH")
if [ $# -ge 4 ]; then
    CKPT=$(abspath "$4")
    need_path checkpoint "$CKPT"
    ARGS+=(--pretrained "$CKPT")
fi
mkdir -p train_standalone
cd train_standalone
echo "log: $PWD/log.txt"
"${OWN_GROUP[@]}" python3 "$ROOT/train.py" "${ARGS[@]}" ${EXTRA_ARGS:-} > log.txt 2>&1 &
TRAIN_PID=$!
train_pid() { echo "$TRAIN_PID"; }
forward_signals train_pid
wait_for "$TRAIN_PID" || { status=$?; show_failure log.txt; exit "$status"; }
show_result log.txt
