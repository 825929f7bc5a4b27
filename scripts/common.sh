# Helpers the launch scripts source: absolute paths from the caller's folder, argument checks.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The one default config of every script (CIFAR-10); an ImageNet folder takes
# default_config_imagenet.yaml (or EXTRA_ARGS="--dataset imagenet ...").
DEFAULT_CONFIG="$ROOT/default_config.yaml"

abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

# need_path KIND PATH: refuse a missing file or folder with one error line, exit code 2.
need_path() {
    [ -e "$2" ] || { echo "error: $1 not found ($2): give an existing path" >&2; exit 2; }
}

# usage_unless MIN MAX COUNT USAGE: refuse a wrong number of arguments.
usage_unless() {
    if [ "$3" -lt "$1" ] || [ "$3" -gt "$2" ]; then echo "usage: $4" >&2; exit 2; fi
}

# valid_port VALUE: whether VALUE is a port number msrun takes (1024 to 65535).
valid_port() {
    case "$1" in ''|*[!0-9]*) return 1 ;; esac
    [ "${#1}" -le 5 ] && [ "$1" -ge 1024 ] && [ "$1" -le 65535 ]
}

# preflight TRAIN_ARGS...: the checks train.py makes before it starts anything (config values,
# the data folder's layout), run once before the workers start; its one error line, exit 2.
preflight() {
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" python3 -m src.tools.launch check "$@" || exit 2
}

# show_failure LOG: a run's own error (or stop) line if it wrote one, else the log's last lines.
show_failure() {
    local line
    line=$(grep -h -E "^(error|stopped): " "$@" 2>/dev/null | head -n 1)
    if [ -n "$line" ]; then echo "$line" >&2; else tail -n 5 "$@" >&2; fi
}

# pause SECONDS: sleep, as a background job waited for. A stop signal sent to the script's whole
# process group (a terminal's Ctrl-C, a scheduler's kill of the job) kills a foreground sleep
# too: set -e then ended the script before its trap's stop was seen through, and bash printed
# "Terminated" before the stop line.
pause() { sleep "$1" & wait $! || true; }

# stop_of_every_log LOG...: TERM or INT when every LOG ends a run that train.py stopped on that
# signal (its "stopped: SIGTERM ..." line), else nothing.
stop_of_every_log() {
    local log found="" signal
    for log in "$@"; do
        signal=$(grep -h -m 1 -o "^stopped: SIG[A-Z]*" "$log" 2>/dev/null | cut -c 13-) || true
        [ -n "$signal" ] || return 0
        found=$signal
    done
    echo "$found"
}

# msrun_reason LOG: msrun's own error (its argparse or exception line), else its last line.
msrun_reason() {
    local line
    line=$(grep -h -E -i "error|exception" "$1" 2>/dev/null | grep -v "^\[WARNING\]" | tail -n 1)
    [ -n "$line" ] || line=$(grep -v "^\s*$" "$1" 2>/dev/null | tail -n 1)
    echo "${line:-no output in $1}"
}

# show_result LOG: where the checkpoints went and the run's figure (train.py's closing line).
show_result() {
    grep -h "^train: finished" "$1" || grep -h "^train: done" "$1" || true
}

# OWN_GROUP CMD...: exec CMD in a process group of its own that gets SIGTERM when this script
# ends, however it ends (Linux PR_SET_PDEATHSIG). A terminal's Ctrl-C or a kill of this script's
# group then reaches the script alone, which passes it on once (see forward_signals).
OWN_GROUP=(python3 -c 'import ctypes, os, signal, sys
os.setpgrp()
ctypes.CDLL(None).prctl(1, signal.SIGTERM)
os.execvp(sys.argv[1], sys.argv[1:])')

# forward_signals PIDS_FUNCTION: on SIGTERM or SIGINT, send the same signal to the processes
# PIDS_FUNCTION prints (they finish their step, save, and exit 143 / 130), and remember it in
# STOP_SIGNAL; wait_for then waits for them to end.
STOP_SIGNAL=""
forward_signals() {
    trap "STOP_SIGNAL=TERM; $1 | xargs -r kill -s TERM 2>/dev/null || true" TERM
    trap "STOP_SIGNAL=INT; $1 | xargs -r kill -s INT 2>/dev/null || true" INT
}

# wait_for PID: its exit status, waiting on through the signals this script forwards.
wait_for() {
    local status=0
    while true; do
        wait "$1" && status=0 || status=$?
        kill -0 "$1" 2>/dev/null || break  # a trapped signal interrupted wait: wait again
    done
    return "$status"
}

# stop_status: this script's exit status after a forwarded stop (128 + the signal's number).
stop_status() {
    case "$STOP_SIGNAL" in TERM) echo 143 ;; INT) echo 130 ;; *) echo 1 ;; esac
}
