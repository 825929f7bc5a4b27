#!/usr/bin/env bash
# Train on one device: bash scripts/run_standalone_train.sh [DEVICE_TARGET] [DATA_PATH] [CONFIG_PATH](opt) [CKPT](opt)
# Runs in ./train_standalone/ (checkpoints under its output/), log in train_standalone/log.txt.
# CKPT, when given, is a pretrained checkpoint (all but the classifier is loaded).
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 4 ]; then
    echo "usage: bash $0 [DEVICE_TARGET] [DATA_PATH] [CONFIG_PATH](opt) [CKPT](opt)" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
DEVICE_TARGET=$1
DATA_PATH=$(abspath "$2")
CONFIG_PATH=$(abspath "${3:-$ROOT/default_config.yaml}")
[ -e "$DATA_PATH" ] || { echo "error: data path not found ($DATA_PATH): give an existing folder" >&2; exit 2; }
[ -f "$CONFIG_PATH" ] || { echo "error: config file not found ($CONFIG_PATH): give an existing yaml" >&2; exit 2; }
EXTRA=()
if [ $# -ge 4 ]; then
    CKPT=$(abspath "$4")
    [ -f "$CKPT" ] || { echo "error: checkpoint not found ($CKPT): give an existing .ckpt" >&2; exit 2; }
    EXTRA=(--pretrained "$CKPT")
fi
mkdir -p train_standalone
cd train_standalone
echo "log: $PWD/log.txt"
python3 "$ROOT/train.py" --config_path "$CONFIG_PATH" --device_target "$DEVICE_TARGET" \
    --dataset_path "$DATA_PATH" ${EXTRA[@]+"${EXTRA[@]}"} > log.txt 2>&1 || {
    status=$?; tail -n 5 log.txt >&2; exit "$status"; }
