"""Evaluate a checkpoint or an exported file: python eval.py --checkpoint_path CKPT (or --model
FILE.mindir|FILE.onnx|FILE.int8.onnx) --dataset_path DATA."""
import sys

from src.cli import run_main


def main(argv):
    from src.cli import ArgumentParser
    from src.deploy.evaluator import evaluate
    from src.model_utils.config import get_config
    parser = ArgumentParser(prog="eval.py", description=__doc__, allow_abbrev=False,
                            add_help=False)
    parser.add_argument("--model", default="", help="an exported .mindir or .onnx to score "
                        "instead of a checkpoint")
    args, rest = parser.parse_known_args(argv)
    evaluate(get_config(rest), args.model)


if __name__ == "__main__":
    sys.exit(run_main(main))
