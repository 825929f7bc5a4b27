#!/usr/bin/env bash
# Export a checkpoint: bash scripts/run_export.sh [CHECKPOINT_PATH] [FILE_FORMAT](MINDIR|ONNX|AIR) [FILE_NAME](opt) [CONFIG_PATH](opt)
# Writes FILE_NAME.<format> and FILE_NAME.<format>.json (default FILE_NAME: the network's name).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
usage_unless 2 4 $# "bash $0 [CHECKPOINT_PATH] [FILE_FORMAT](MINDIR|ONNX|AIR) [FILE_NAME](opt) [CONFIG_PATH](opt)"
CKPT=$(abspath "$1")
need_path checkpoint "$CKPT"
ARGS=(--checkpoint_path "$CKPT" --file_format "$2")
[ $# -ge 3 ] && ARGS+=(--file_name "$(abspath "$3")")
if [ $# -ge 4 ]; then CONFIG_PATH=$(abspath "$4"); need_path "config file" "$CONFIG_PATH"; ARGS+=(--config_path "$CONFIG_PATH"); fi
python3 "$ROOT/export.py" "${ARGS[@]}" ${EXTRA_ARGS:-}
