"""Train a network: python train.py --config_path default_config.yaml --dataset_path DATA."""
import sys

from src.cli import run_main


def main(argv):
    from src.model_utils.config import get_config
    from src.training.trainer import train
    train(get_config(argv))


if __name__ == "__main__":
    sys.exit(run_main(main))
