"""Evaluate a checkpoint: python eval.py --checkpoint_path CKPT --dataset_path DATA."""
import sys

from src.errors import run_main


def main(argv):
    from src.evaluator import evaluate
    from src.model_utils.config import get_config
    evaluate(get_config(argv))


if __name__ == "__main__":
    sys.exit(run_main(main))
