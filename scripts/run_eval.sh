#!/usr/bin/env bash
# Evaluate a checkpoint: bash scripts/run_eval.sh [DEVICE_TARGET] [DATA_PATH] [CHECKPOINT_PATH] [CONFIG_PATH](opt)
# Runs in ./eval/, log in eval/log.txt; the result line is also appended to eval/eval_log.txt.
set -euo pipefail
if [ $# -lt 3 ] || [ $# -gt 4 ]; then
    echo "usage: bash $0 [DEVICE_TARGET] [DATA_PATH] [CHECKPOINT_PATH] [CONFIG_PATH](opt)" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
DATA_PATH=$(abspath "$2")
CKPT=$(abspath "$3")
CONFIG_PATH=$(abspath "${4:-$ROOT/default_config.yaml}")
[ -e "$DATA_PATH" ] || { echo "error: data path not found ($DATA_PATH): give an existing folder" >&2; exit 2; }
[ -f "$CKPT" ] || { echo "error: checkpoint not found ($CKPT): give an existing .ckpt" >&2; exit 2; }
[ -f "$CONFIG_PATH" ] || { echo "error: config file not found ($CONFIG_PATH): give an existing yaml" >&2; exit 2; }
mkdir -p eval
cd eval
echo "log: $PWD/log.txt"
python3 "$ROOT/eval.py" --config_path "$CONFIG_PATH" --device_target "$1" \
    --dataset_path "$DATA_PATH" --checkpoint_path "$CKPT" > log.txt 2>&1 || {
    status=$?; tail -n 5 log.txt >&2; exit "$status"; }
grep "^result:" log.txt
