#!/usr/bin/env bash
# Data-parallel training on Ascend from a rank table:
#   bash scripts/run_distribute_train.sh [RANK_TABLE_FILE] [DATA_PATH] [CONFIG_PATH](opt)
# One process per device of this server in the rank table (not a fixed 8), each with
# RANK_TABLE_FILE, RANK_SIZE (the whole table's devices), RANK_ID (the table's global rank) and
# DEVICE_ID set, running in ./train_parallel{RANK_ID}/ with its log in
# train_parallel{RANK_ID}/log.txt. A table of several servers: run the script on each server;
# SERVER_ID (an index from 0, or a server_id) says which one this is, else the server whose
# server_id is one of this host's addresses. msrun's --rank_table_file does not start a rank-table job on
# MindSpore 2.10 (its own help says so), so this is the env-var launch the zoo uses.
# If one process fails, the others are stopped and the script exits with its code.
# SIGTERM / Ctrl-C reach every rank: they finish the same step, rank 0 saves (--resume auto
# continues), the script exits 143 / 130; the ranks also end when this script is killed.
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
PLAN=$(cd "$ROOT" && python3 -m src.tools.launch ranks "$RANK_TABLE_FILE") || exit 2
preflight --config_path "$CONFIG_PATH" --device_target Ascend --dataset_path "$DATA_PATH" \
    ${EXTRA_ARGS:-}
RANK_SIZE=$(echo "$PLAN" | head -n 1 | cut -d' ' -f3)
export RANK_TABLE_FILE RANK_SIZE

pids=()
while read -r RANK_ID DEVICE_ID _ SERVER; do
    dir="$PWD/train_parallel$RANK_ID"
    cmd=(python3 "$ROOT/train.py" --config_path "$CONFIG_PATH" --device_target Ascend
         --dataset_path "$DATA_PATH" --is_distributed True ${EXTRA_ARGS:-})
    if [ "${DRY_RUN:-0}" = "1" ]; then
        echo "server $SERVER rank $RANK_ID: cd $dir && RANK_TABLE_FILE=$RANK_TABLE_FILE RANK_SIZE=$RANK_SIZE RANK_ID=$RANK_ID DEVICE_ID=$DEVICE_ID ${cmd[*]} > $dir/log.txt"
        continue
    fi
    mkdir -p "$dir"
    (cd "$dir" && RANK_ID=$RANK_ID DEVICE_ID=$DEVICE_ID exec "${OWN_GROUP[@]}" "${cmd[@]}" \
        > log.txt 2>&1) &
    pids+=($!)
    echo "rank $RANK_ID on device $DEVICE_ID: log $dir/log.txt"
done <<< "$PLAN"
[ "${DRY_RUN:-0}" = "1" ] && exit 0

rank_pids() { printf '%s\n' "${pids[@]}"; }
forward_signals rank_pids
status=0
remaining=${#pids[@]}
while [ "$remaining" -gt 0 ]; do
    if wait -n; then remaining=$((remaining - 1)); continue; fi
    [ -n "$STOP_SIGNAL" ] && break  # a forwarded stop interrupted the wait
    status=1
    echo "error: a training process failed: stopping the others; see train_parallel*/log.txt" >&2
    show_failure train_parallel*/log.txt
    kill "${pids[@]}" 2>/dev/null || true
    break
done
if [ -n "$STOP_SIGNAL" ]; then  # every rank finishes the same step; rank 0 saves
    for pid in "${pids[@]}"; do wait_for "$pid" || true; done
    show_failure train_parallel0/log.txt
    exit "$(stop_status)"
fi
wait 2>/dev/null || true
[ "$status" = 0 ] && show_result train_parallel0/log.txt
exit $status
