"""Convert a PyTorch checkpoint to a MindSpore checkpoint of one of our networks:

    python convert_weights.py --source megvii|torchvision|timm --network NAME SOURCE.pth OUTPUT.ckpt

Needs torch (this tool only): pip install torch==2.13.0
"""
import sys

from src.cli import run_main


def main(argv):
    from src.weights.convert import convert_command
    convert_command(argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
