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

# preflight TRAIN_ARGS...: the checks train.py makes before it starts anything (config values,
# the data folder's layout), run once before the workers start; its one error line, exit 2.
preflight() {
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" python3 -m src.launch check "$@" || exit 2
}

# show_failure LOG: a run's own error line if it wrote one, else the log's last lines.
show_failure() {
    local line
    line=$(grep -h "^error: " "$@" 2>/dev/null | head -n 1)
    if [ -n "$line" ]; then echo "$line" >&2; else tail -n 5 "$@" >&2; fi
}

# show_result LOG: where the checkpoints went and the run's figure (train.py's closing line).
show_result() {
    grep -h "^train: finished" "$1" || true
}
