#!/usr/bin/env bash
# Predict with an exported file or checkpoint: bash scripts/run_infer.sh [MODEL_PATH](.mindir|.onnx|.ckpt) [IMAGE_PATH] [LABEL_FILE](opt)
# Prints the top-5 classes per image and writes the same to ./infer_result.txt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
usage_unless 2 3 $# "bash $0 [MODEL_PATH](.mindir|.onnx|.ckpt) [IMAGE_PATH] [LABEL_FILE](opt)"
MODEL=$(abspath "$1")
IMAGES=$(abspath "$2")
need_path model "$MODEL"
need_path "image path" "$IMAGES"
ARGS=(--model "$MODEL")
if [ $# -ge 3 ]; then LABELS=$(abspath "$3"); need_path "label file" "$LABELS"; ARGS+=(--labels "$LABELS"); fi
echo "result: $PWD/infer_result.txt"
python3 "$ROOT/infer.py" "${ARGS[@]}" ${EXTRA_ARGS:-} "$IMAGES" | tee infer_result.txt
