"""The quick start as a user runs it, shortened to 2 epochs: it writes scikit-learn's digit
scans in the CIFAR-10 layout, trains, evaluates the held-out scans and prints the result."""
import os
import re

import pytest

from tests.helpers import run_entry

pytestmark = pytest.mark.slow


def test_quick_start_writes_trains_evaluates_and_prints_the_result(tmp_path):
    user_env = {k: v for k, v in os.environ.items() if k != "GLOG_v"}  # as a user's shell has it
    proc = run_entry("quick_start.py", "--epoch_size", "2", "--dataset_path", tmp_path / "digits",
                     "--output_path", tmp_path / "out", cwd=str(tmp_path), env=user_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Quiet: none of MindSpore's C++ warnings (about 50 of them at each training start before).
    assert "[WARNING]" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert "1438 train / 359 test digit scans written" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["data_batch_1.bin",
                                                                        "test_batch.bin"]
    line = proc.stdout.splitlines()[-1]
    match = re.fullmatch(r"quick start: top-1 (0\.\d{3}), top-5 (0\.\d{3}|1\.000) on 359 "
                         r"held-out digit scans \(chance 0\.100\)", line)
    assert match, line
    assert float(match.group(1)) > 0.1  # 2 epochs already beat chance
    assert (tmp_path / "eval_log.txt").exists()
