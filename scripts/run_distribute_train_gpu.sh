#!/usr/bin/env bash
# Data-parallel training with msrun (GPU, or CPU via run_distribute_train_cpu.sh):
#   bash scripts/run_distribute_train_gpu.sh [DEVICE_NUM] [DATA_PATH] [CONFIG_PATH](opt)
# Runs in ./train_parallel/: msrun's logs are train_parallel/worker_{rank}.log (and
# scheduler.log), checkpoints train_parallel/output/ckpt_0/ (rank 0 only).
# When one worker fails, msrun stops the job and this script exits non-zero.
# SIGTERM / Ctrl-C, to the script or to its whole process group, reach the workers: every rank
# of every node finishes the same step, rank 0 saves (--resume auto continues), and the script
# exits 143 / 130 with the stop line, on the other nodes too; no process is left behind, also
# when this script is killed outright.
# EXTRA_ARGS="--key value ..." adds train.py flags; they are checked before msrun starts.
# Several nodes: run the script on each with NODE_NUM (default 1), its NODE_RANK (0..NODE_NUM-1)
# and the same MASTER_ADDR (node 0's address, where msrun's scheduler runs) and MASTER_PORT
# (1024-65535), both required then (one node: 127.0.0.1 and a random port); DEVICE_NUM is the
# workers of each node, ranks are global. A node waits CLUSTER_TIME_OUT seconds (default 600)
# for the others to join, then fails with one line naming the scheduler's address and port.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
usage_unless 2 3 $# "bash $0 [DEVICE_NUM] [DATA_PATH] [CONFIG_PATH](opt)"
DEVICE_NUM=$1
DATA_PATH=$(abspath "$2")
CONFIG_PATH=$(abspath "${3:-$DEFAULT_CONFIG}")
DEVICE_TARGET=${DEVICE_TARGET:-GPU}
case "$DEVICE_NUM" in ''|*[!0-9]*|0) echo "error: device count '$DEVICE_NUM' is not a positive integer (DEVICE_NUM): give e.g. 8" >&2; exit 2 ;; esac
NODE_NUM=${NODE_NUM:-1}
NODE_RANK=${NODE_RANK:-0}
CLUSTER_TIME_OUT=${CLUSTER_TIME_OUT:-600}
case "$NODE_NUM" in ''|*[!0-9]*|0) echo "error: node count '$NODE_NUM' is not a positive integer (NODE_NUM): give the number of nodes, e.g. 2" >&2; exit 2 ;; esac
case "$NODE_RANK" in ''|*[!0-9]*) echo "error: node rank '$NODE_RANK' is not an integer (NODE_RANK): give 0..$((NODE_NUM - 1))" >&2; exit 2 ;; esac
if [ "$NODE_RANK" -ge "$NODE_NUM" ]; then
    echo "error: node rank $NODE_RANK is not below NODE_NUM $NODE_NUM (NODE_RANK): give 0..$((NODE_NUM - 1))" >&2; exit 2
fi
if [ "$NODE_NUM" -gt 1 ] && [ -z "${MASTER_ADDR:-}" ]; then
    echo "error: no MASTER_ADDR for a job of $NODE_NUM nodes (MASTER_ADDR): give every node node 0's address (its scheduler's), e.g. MASTER_ADDR=10.0.0.1" >&2; exit 2
fi
if [ "$NODE_NUM" -gt 1 ] && [ -z "${MASTER_PORT:-}" ]; then
    echo "error: no MASTER_PORT for a job of $NODE_NUM nodes (MASTER_PORT): give every node the same free port, e.g. MASTER_PORT=8118" >&2; exit 2
fi
if [ -n "${MASTER_PORT:-}" ] && ! valid_port "$MASTER_PORT"; then
    echo "error: MASTER_PORT '$MASTER_PORT' is not a port number from 1024 to 65535 (MASTER_PORT): give every node the same free port, e.g. MASTER_PORT=8118" >&2; exit 2
fi
case "$CLUSTER_TIME_OUT" in ''|*[!0-9]*|0) echo "error: CLUSTER_TIME_OUT '$CLUSTER_TIME_OUT' is not a positive number of seconds (CLUSTER_TIME_OUT): give e.g. 600" >&2; exit 2 ;; esac
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
need_path "data path" "$DATA_PATH"
need_path "config file" "$CONFIG_PATH"
preflight --config_path "$CONFIG_PATH" --device_target "$DEVICE_TARGET" --dataset_path "$DATA_PATH" \
    ${EXTRA_ARGS:-}
PORT=${MASTER_PORT:-$((8118 + RANDOM % 1000))}
# msrun starts its scheduler on every node whose own addresses include MASTER_ADDR. On separate
# hosts that is node 0 alone: plain msrun. A node that shares node 0's address (several nodes on
# one machine) would start a second one, which cannot bind the port and fails the job after
# training: there msrun's private address check is replaced (src/tools/launch.py says if it is gone).
MSRUN=(msrun)
if [ "$NODE_RANK" -gt 0 ]; then
    KIND=$(cd "$ROOT" && python3 -m src.tools.launch msrun-for "$MASTER_ADDR") || exit 2
    if [ "$KIND" = one-scheduler ]; then
        MSRUN=(python3 -c 'import sys
from mindspore.parallel.cluster.process_entity import _api
from mindspore.parallel.cluster.run import main
_api._is_local_ip = lambda address: False  # node 0 runs the scheduler
sys.argv[0] = "msrun"
main()')
    fi
fi
FIRST=$((NODE_RANK * DEVICE_NUM))  # this node's first global rank
node_logs() { local r; for r in $(seq "$FIRST" $((FIRST + DEVICE_NUM - 1))); do echo "worker_$r.log"; done; }
mkdir -p train_parallel
cd train_parallel
echo "logs: $PWD/worker_{$FIRST..$((FIRST + DEVICE_NUM - 1))}.log"
# --tail_worker_log -2 (no worker): msrun would start a `tail -f` per worker log for its console,
# which msrun.log does not need and which outlives an msrun that is killed.
"${OWN_GROUP[@]}" "${MSRUN[@]}" --worker_num "$((DEVICE_NUM * NODE_NUM))" --local_worker_num "$DEVICE_NUM" \
    --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" \
    --master_port "$PORT" --cluster_time_out "$CLUSTER_TIME_OUT" --log_dir "$PWD" --join True \
    --tail_worker_log -2 \
    "$ROOT/train.py" --config_path "$CONFIG_PATH" --device_target "$DEVICE_TARGET" \
    --dataset_path "$DATA_PATH" --is_distributed True ${EXTRA_ARGS:-} > msrun.log 2>&1 &
MSRUN_PID=$!
# The workers: msrun's children in sessions of their own (not its scheduler, which the workers'
# collectives still need while they stop). msrun itself would SIGKILL them on a Ctrl-C.
workers() {
    local pid
    for pid in $(pgrep -P "$MSRUN_PID"); do
        [ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$pid" ] && echo "$pid"
    done
    return 0
}
forward_signals workers
status=0
while kill -0 "$MSRUN_PID" 2>/dev/null; do
    if [ -z "$STOP_SIGNAL" ]; then
        # A worker ended with an error: msrun kills the others at once, then waits for its
        # scheduler, which notices only when their heartbeats time out (about 30 s). End the
        # job now, unless the worker stopped as a signal sent to the workers asked (train.py's
        # stop exit code, 143 or 130: every rank stopped after the same step and rank 0 saved):
        # then let each finish, as for a signal sent to this script.
        if grep -q "exit with exception" msrun.log 2>/dev/null; then
            case "$(grep -m 1 -o "exit with exception. Error code: -\?[0-9]*" msrun.log)" in
                *": 143") STOP_SIGNAL=TERM; continue ;;
                *": 130") STOP_SIGNAL=INT; continue ;;
            esac
            kill -TERM -- "-$MSRUN_PID" 2>/dev/null || true
            status=1
            break
        fi
        pause 0.5
    else  # stopping: once the workers have saved and gone, end msrun and its scheduler (which
        # would wait for them; msrun may have ended by itself already: set -e must not end here)
        [ -z "$(workers)" ] && { kill -TERM -- "-$MSRUN_PID" 2>/dev/null || true; }
        pause 0.5
    fi
done
[ "$status" != 0 ] || { wait "$MSRUN_PID" && status=0 || status=$?; }
# A stop signalled on another node: this node's ranks agreed on it and stopped with train.py's
# stop line. Reported as the stop it is, not as a failure.
[ -z "$STOP_SIGNAL" ] && [ "$status" != 0 ] && STOP_SIGNAL=$(stop_of_every_log $(node_logs))
if [ -n "$STOP_SIGNAL" ]; then  # stopped as asked: say where the run can continue from
    show_failure "worker_$FIRST.log"
    exit "$(stop_status)"
fi
if [ "$status" != 0 ] && ! ls $(node_logs) > /dev/null 2>&1; then  # msrun refused to start
    echo "error: msrun failed before any worker of this node started (exit $status; msrun.log): $(msrun_reason msrun.log)" >&2
    exit 2
fi
if [ "$status" != 0 ]; then
    # A worker refused its input (train.py's one error line, its exit code 2, which msrun does
    # not pass on): that line alone. Anything else: where to look, and what the logs end with.
    line=$(grep -h "^error: " $(node_logs) 2>/dev/null | head -n 1) || true
    if [ -n "$line" ]; then echo "$line" >&2; exit 2; fi
    echo "error: the job failed (exit $status): see $PWD/worker_*.log" >&2
    show_failure worker_*.log
    exit "$status"
fi
show_result "worker_$FIRST.log"
