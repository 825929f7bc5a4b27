"""Quick start on real data that ships with scikit-learn: write, train, evaluate, print the result.

python quick_start.py [--key value ...]
(any config key; defaults: configs/quick_start_digits.yaml)
"""
import os
import sys

from src.cli import run_main

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "configs", "quick_start_digits.yaml")


def main(argv):
    from src.deploy.evaluator import evaluate
    from src.model_utils.config import get_config, with_values
    from src.tools.digits import write_digits_cifar
    from src.training.run_state import RunState
    from src.training.trainer import train

    config = get_config(["--config_path", CONFIG] + list(argv))
    train_count, test_count = write_digits_cifar(config.dataset_path, seed=config.seed)
    print(f"quick start: {train_count} train / {test_count} test digit scans written to "
          f"{config.dataset_path} in the CIFAR-10 binary layout", flush=True)
    if not config.resume and os.path.isdir(config.output_path):
        run = 1
        while os.path.exists(f"{config.output_path}_{run}"):
            run += 1
        config = with_values(config, output_path=f"{config.output_path}_{run}")
    ckpt_dir = train(config)
    last = RunState.load(ckpt_dir).checkpoints()[-1][1]  # the final epoch's checkpoint
    result = evaluate(with_values(config, checkpoint_path=os.path.join(ckpt_dir, last)))
    print(f"quick start: top-1 {result['Top_1_Acc']:.3f}, top-5 {result['Top_5_Acc']:.3f} on "
          f"{test_count} held-out digit scans (chance 0.100)", flush=True)


if __name__ == "__main__":
    sys.exit(run_main(main))
