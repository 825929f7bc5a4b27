#!/usr/bin/env bash
# Data-parallel training on Ascend from a rank table:
#   bash scripts/run_distribute_train.sh [RANK_TABLE_FILE] [DATA_PATH] [CONFIG_PATH](opt)
# One process per device listed in the rank table (not a fixed 8), each with RANK_TABLE_FILE,
# RANK_SIZE, RANK_ID and DEVICE_ID set, running in ./train_parallel{RANK_ID}/ with its log in
# train_parallel{RANK_ID}/log.txt. msrun's --rank_table_file does not start a rank-table job on
# MindSpore 2.10 (its own help says so), so this is the env-var launch the zoo uses.
# If one process fails, the others are stopped and the script exits with its code.
# EXTRA_ARGS="--key value ..." adds train.py flags; they are checked before any process starts.
# DRY_RUN=1 prints each planned command and its environment and starts nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
usage_unless 2 3 $# "bash $0 [RANK_TABLE_FILE] [DATA_PATH] [CONFIG_PATH](opt)"
RANK_TABLE_FILE=$(abspath "$1")
DATA_PATH=$(abspath "$2")
CONFIG_PATH=$(abspath "${3:-$DEFAULT_CONFIG}")
need_path "data path" "$DATA_PATH"
need_path "config file" "$CONFIG_PATH"
PLAN=$(cd "$ROOT" && python3 -m src.launch "$RANK_TABLE_FILE") || exit 2
preflight --config_path "$CONFIG_PATH" --dataset_path "$DATA_PATH" ${EXTRA_ARGS:-}
RANK_SIZE=$(echo "$PLAN" | wc -l)
export RANK_TABLE_FILE RANK_SIZE

pids=()
while read -r RANK_ID DEVICE_ID; do
    dir="$PWD/train_parallel$RANK_ID"
    cmd=(python3 "$ROOT/train.py" --config_path "$CONFIG_PATH" --device_target Ascend
         --dataset_path "$DATA_PATH" --is_distributed True ${EXTRA_ARGS:-})
    if [ "${DRY_RUN:-0}" = "1" ]; then
        echo "rank $RANK_ID: cd $dir && RANK_TABLE_FILE=$RANK_TABLE_FILE RANK_SIZE=$RANK_SIZE RANK_ID=$RANK_ID DEVICE_ID=$DEVICE_ID ${cmd[*]} > $dir/log.txt"
        continue
    fi
    mkdir -p "$dir"
    (cd "$dir" && RANK_ID=$RANK_ID DEVICE_ID=$DEVICE_ID exec "${cmd[@]}" > log.txt 2>&1) &
    pids+=($!)
    echo "rank $RANK_ID on device $DEVICE_ID: log $dir/log.txt"
done <<< "$PLAN"
[ "${DRY_RUN:-0}" = "1" ] && exit 0

status=0
for _ in "${pids[@]}"; do
    if ! wait -n; then
        status=1
        echo "error: a training process failed: stopping the others; see train_parallel*/log.txt" >&2
        show_failure train_parallel*/log.txt
        kill "${pids[@]}" 2>/dev/null || true
        break
    fi
done
wait 2>/dev/null || true
[ "$status" = 0 ] && show_result train_parallel0/log.txt
exit $status
