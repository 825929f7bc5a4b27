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


@pytest.mark.parametrize("first", ["mindspore", "src"])
def test_importing_mindspore_before_src_is_warned(first):
    """libgomp reads OMP_WAIT_POLICY when mindspore's import loads it: set by src afterwards it
    is too late, and our kernels' threads spin (about 30 % slower training): one warning line.
    Imported the other way round, or with the policy set beforehand, nothing is said."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT
    second = "src" if first == "mindspore" else "mindspore"
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "ZOO_OMP_WAIT_POLICY_SET")}
    proc = subprocess.run([sys.executable, "-c", f"import {first}; import {second}; "
                           "import os; print(os.environ['OMP_WAIT_POLICY'])"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "PASSIVE"
    warned = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    if first == "mindspore":
        assert len(warned) == 1 and "import src first" in warned[0], proc.stderr
    else:
        assert not warned, proc.stderr
