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


KERNELS_RUNTIME = """
import ctypes
import numpy as np
import {first}, {second}
import mindspore as ms
from src.models import cpu_kernels, create_network
net = create_network("mobilenet_v1_025", num_classes=4, conv_impl="ours")
net.set_train(False)
print(net(ms.Tensor(np.zeros((1, 3, 32, 32), np.float32))).shape, flush=True)
loaded = {{line.split()[-1] for line in open("/proc/self/maps") if ".so" in line}}
print(sorted(p for p in loaded if p.endswith(cpu_kernels.PRIVATE_OPENMP)), flush=True)
ctypes.CDLL("libgomp.so.1").omp_display_env(1)  # MindSpore's OpenMP runtime
ctypes.CDLL([p for p in loaded if p.endswith(cpu_kernels.PRIVATE_OPENMP)][0]).omp_display_env(1)
"""


@pytest.mark.parametrize("first", ["mindspore", "src"])
def test_our_kernels_wait_passively_whatever_is_imported_first(first):
    """Our kernels run on an OpenMP runtime of their own, loaded with them, which reads the wait
    policy src sets even when mindspore was imported first (MindSpore's own runtime has read
    none by then: it spins 300,000 times between regions). With one shared runtime, that order
    made our kernels' threads spin against MindSpore's ops: 0.71-0.91x the speed."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT
    second = "src" if first == "mindspore" else "mindspore"
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "ZOO_OMP_WAIT_POLICY_SET", "OMP_DISPLAY_ENV")}
    proc = subprocess.run([sys.executable, "-c", KERNELS_RUNTIME.format(first=first,
                                                                        second=second)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(1, 4)" in proc.stdout and "libzomp.so.1" in proc.stdout, proc.stdout
    spins = [line.split("=")[1].strip(" '") for line in proc.stderr.splitlines()
             if line.strip().startswith("GOMP_SPINCOUNT")]
    assert spins[-1] == "0", proc.stderr  # ours: passive
    assert spins[0] == ("300000" if first == "mindspore" else "0"), proc.stderr  # MindSpore's
    assert not [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
