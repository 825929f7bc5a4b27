# Helpers the launch scripts source: absolute paths from the caller's folder, argument checks.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

# need_path KIND PATH: refuse a missing file or folder with one error line, exit code 2.
need_path() {
    [ -e "$2" ] || { echo "error: $1 not found ($2): give an existing path" >&2; exit 2; }
}

# usage_unless MIN MAX COUNT USAGE: refuse a wrong number of arguments.
usage_unless() {
    if [ "$3" -lt "$1" ] || [ "$3" -gt "$2" ]; then echo "usage: $4" >&2; exit 2; fi
}
