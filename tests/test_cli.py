"""What every entry point does before any work: --help, and the same one-line errors in-process
as from a real process."""
import os

import pytest

from tests.helpers import ROOT, run_entry

ENTRY_POINTS = ("train.py", "eval.py", "export.py", "infer.py", "quick_start.py",
                "convert_weights.py", "benchmark.py")


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_of_every_entry_point(cli, script):
    result = cli(script, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "--" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def python_m_tools() -> list:
    """Every src module that runs as ``python -m``: it has a ``__main__`` block."""
    found = []
    for folder, _, names in os.walk(os.path.join(ROOT, "src")):
        for name in sorted(names):
            path = os.path.join(folder, name)
            if name.endswith(".py") and 'if __name__ == "__main__":' in open(path).read():
                found.append(os.path.relpath(path, ROOT)[:-3].replace(os.sep, "."))
    return sorted(found)


@pytest.mark.parametrize("tool", python_m_tools() + list(ENTRY_POINTS))
def test_a_bad_flag_to_any_tool_is_one_line(cli, tool):
    """argparse's usage text and exit code were once what a tool's bad flag got."""
    result = cli(tool, "--no_such_flag", "1")
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.error_lines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(command line): " in lines[0]
    assert "usage:" not in result.stdout + result.stderr
    name = tool if tool.endswith(".py") else f"python -m {tool}"
    assert " --help" not in lines[0] or lines[0].endswith(f"see {name} --help"), lines[0]


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
