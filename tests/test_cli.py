"""What every entry point does before any work: --help, and the same one-line errors in-process
as from a real process."""
import pytest

from tests.helpers import run_entry

ENTRY_POINTS = ("train.py", "eval.py", "export.py", "infer.py", "quick_start.py",
                "convert_weights.py", "benchmark.py")


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_of_every_entry_point(cli, script):
    result = cli(script, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "--" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_train_help_lists_every_key_with_its_help():
    """The real command: the yaml's help of bad_image_limit holds a literal '%'."""
    proc = run_entry("train.py", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(0.01 = 1%)" in proc.stdout and "--eval_batch_size" in proc.stdout
