"""Time a network, and MindCV's and PyTorch's same architecture, in one run:

    python benchmark.py --network shufflenet_v2_x1_0 --mode train --batch_size 32 \
        --compare mindcv,torch --json out.json
"""
import sys

from src.cli import run_main


def main(argv):
    from src.tools.benchmark import benchmark_command
    benchmark_command(argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
