#!/usr/bin/env bash
# Evaluate a checkpoint: bash scripts/run_eval.sh [DEVICE_TARGET] [DATA_PATH] [CHECKPOINT_PATH] [CONFIG_PATH](opt)
# Runs in ./eval/, log in eval/log.txt; the result line is also appended to eval/eval_log.txt.
# EXTRA_ARGS="--key value ..." adds eval.py flags.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
usage_unless 3 4 $# "bash $0 [DEVICE_TARGET] [DATA_PATH] [CHECKPOINT_PATH] [CONFIG_PATH](opt)"
DATA_PATH=$(abspath "$2")
CKPT=$(abspath "$3")
CONFIG_PATH=$(abspath "${4:-$DEFAULT_CONFIG}")
need_path "data path" "$DATA_PATH"
need_path checkpoint "$CKPT"
need_path "config file" "$CONFIG_PATH"
mkdir -p eval
cd eval
echo "log: $PWD/log.txt"
python3 "$ROOT/eval.py" --config_path "$CONFIG_PATH" --device_target "$1" \
    --dataset_path "$DATA_PATH" --checkpoint_path "$CKPT" ${EXTRA_ARGS:-} > log.txt 2>&1 || {
    status=$?; show_failure log.txt; exit "$status"; }
grep "^result:" log.txt
