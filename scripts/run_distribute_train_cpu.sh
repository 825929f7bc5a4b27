#!/usr/bin/env bash
# Data-parallel training on CPU processes with msrun (how the distributed path is tested here):
#   bash scripts/run_distribute_train_cpu.sh [WORKER_NUM] [DATA_PATH] [CONFIG_PATH](opt)
set -euo pipefail
DEVICE_TARGET=CPU exec bash "$(dirname "${BASH_SOURCE[0]}")/run_distribute_train_gpu.sh" "$@"
