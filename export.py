"""Export a checkpoint: python export.py --checkpoint_path CKPT --file_format MINDIR|ONNX|AIR."""
import sys

from src.cli import run_main


def main(argv):
    from src.deploy.exporter import export
    export(argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
