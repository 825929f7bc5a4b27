"""Shared test set-up: MindSpore on CPU, PyNative unless a test asks for graph mode; the entry
points run in-process (``cli``)."""
import importlib
import os
from typing import NamedTuple

# The tests' tensors are tiny, below the work our kernels run on one thread
# (kernels.h's kSerialWork): run every parallel region on every thread, as a batch does, here
# and in the processes the tests start. test_cpu_kernels checks the one-thread path against it.
os.environ.setdefault("ZOO_SERIAL_WORK", "0")

import src  # noqa: F401, I001  (first: it quiets MindSpore's C++ warnings before MindSpore loads)
# isort: split
import mindspore as ms  # noqa: E402
import pytest  # noqa: E402

from src.cli import run_main  # noqa: E402

ms.set_device("CPU")

# Not MindSpore's compile cache (MS_COMPILER_CACHE_ENABLE), though it cut a repeated ShuffleNetV2
# compile from 14 s to 1.3 s: its key ignores parameter shapes, so a 10-class fine-tune ran the
# 4-class graph of an earlier run (ApplyMomentum: gradient 16384 bytes, variable 40960).


@pytest.fixture(autouse=True)
def pynative_by_default():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str

    def error_lines(self) -> list:
        return [line for line in self.stderr.splitlines() if line.strip()]


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """Run an entry point's ``main(argv)`` in this process, as its command line would (one
    ``error:`` line and code 2 for a UserError), in a fresh working folder; returns its exit
    code and what it printed. For what needs no real process: a subprocess costs an import of
    MindSpore."""
    monkeypatch.chdir(tmp_path)

    def run(script, *args):
        module = importlib.import_module(script[:-3] if script.endswith(".py") else script)
        capsys.readouterr()
        try:
            code = run_main(module.main, [str(a) for a in args])
        except SystemExit as done:  # argparse's --help and usage exits
            code = done.code if isinstance(done.code, int) else 1
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run


# The end-to-end runs (a minute or two each) start first, on every worker, and the many short
# tests fill in around them: started last, one would leave the other worker idle at the end.
LONG_FIRST = ("test_scripts.py", "test_reliability.py", "test_train_eval.py",
              "test_benchmark.py", "test_quick_start.py", "test_export_infer.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONG_FIRST.index(name) if name in LONG_FIRST else len(LONG_FIRST)
    items.sort(key=rank)  # stable: each file keeps its own order


def pytest_sessionfinish(session, exitstatus):
    """Free the session's networks while MindSpore's modules still exist: at interpreter exit
    each live Cell's __del__ finds them torn down and prints a traceback ('Exception ignored
    in: <function Cell.__del__>', about 150 of them after a full run). Cells still referenced
    (a failed test's traceback keeps its frames) are collected later: their __del__ then
    returns quietly where it finds MindSpore's modules gone."""
    import gc

    from mindspore import nn
    gc.collect()
    cell_del = nn.Cell.__del__

    def del_at_exit(cell, _cell_del=cell_del):
        try:
            _cell_del(cell)
        except AttributeError:  # a module attribute already set to None at interpreter exit
            pass
    nn.Cell.__del__ = del_at_exit
