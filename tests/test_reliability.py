"""Runs that go wrong: NaN losses stop cleanly, same seed same losses, --resume auto after a crash."""
import os

import pytest

from tests.helpers import LOSS, run_entry, write_cifar_folder

pytestmark = pytest.mark.slow
NET = "shufflenet_v2_x0_5"
ARGS = ["--network", NET, "--num_classes", "4", "--batch_size", "16", "--warmup_epochs", "0",
        "--log_interval", "1", "--seed", "7"]


def ckpts(folder):
    """The checkpoints in ``folder``, not the hidden half-done saves."""
    return sorted(f for f in os.listdir(folder) if f.endswith(".ckpt") and not f.startswith("."))\
        if folder.exists() else []


def test_nan_stops_the_run_and_saves_nothing(tmp_path):
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=64, test_count=8)
    proc = run_entry("train.py", *ARGS, "--dataset_path", data, "--epoch_size", "2",
                     "--lr_max", "1e6", "--output_path", tmp_path / "run")
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: loss or weights not finite")
    assert "at epoch 1 step" in lines[0] and ", lr " in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert ckpts(tmp_path / "run" / "ckpt_0") == []


def test_same_seed_same_losses_and_resume_auto_after_a_crash(tmp_path):
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=64, test_count=8)
    runs = []
    for name in ("a", "b"):
        proc = run_entry("train.py", *ARGS, "--dataset_path", data, "--epoch_size", "2",
                         "--output_path", tmp_path / name)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append([float(loss) for _, _, loss in LOSS.findall(proc.stdout)])
    assert len(runs[0]) == 8 and runs[0] == runs[1]

    # A crash cut the newest checkpoint short: --resume auto skips it, continues from epoch 1.
    folder = tmp_path / "a" / "ckpt_0"
    newest = folder / f"{NET}-2_4.ckpt"
    os.chmod(newest, 0o600)
    newest.write_bytes(newest.read_bytes()[:1000])
    proc = run_entry("train.py", *ARGS, "--dataset_path", data, "--epoch_size", "3",
                     "--output_path", tmp_path / "a", "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resume auto: {folder / f'{NET}-1_4.ckpt'}" in proc.stdout
    assert sorted({int(e) for e, _, _ in LOSS.findall(proc.stdout)}) == [2, 3]
    assert {f"{NET}-2_4.ckpt", f"{NET}-3_4.ckpt"} <= set(ckpts(folder))


def test_killed_inside_a_save_loses_nothing_and_resume_auto_finishes(tmp_path):
    """SIGKILL while epoch 2's checkpoint is being written (ZOO_TEST_HANG_IN_SAVE holds the save
    between its write and its rename): epoch 1's checkpoint still loads, epoch 2's is not
    there half-written, and --resume auto trains epochs 2..3."""
    import signal
    import subprocess
    import sys
    import time

    from src.checkpoint import read_checkpoint
    from tests.helpers import ROOT

    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=64, test_count=8)
    out = tmp_path / "run"
    command = [sys.executable, os.path.join(ROOT, "train.py"), *ARGS, "--dataset_path", data,
               "--epoch_size", "3", "--output_path", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GLOG_v": "3", "ZOO_TEST_HANG_IN_SAVE": "2"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env, cwd=ROOT)
    lines, deadline = [], time.time() + 300
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("test hook: hanging inside the save") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert lines and lines[-1].startswith("test hook"), "".join(lines[-20:])
    folder = out / "ckpt_0"
    assert ckpts(folder) == [f"{NET}-1_4.ckpt"]
    assert list(folder.glob(".partial-*")), "the kill should have left the half-done save"
    params, meta = read_checkpoint(str(folder / f"{NET}-1_4.ckpt"))
    assert meta["epoch_num"] == 1 and meta["network"] == NET and params

    proc = run_entry("train.py", *ARGS, "--dataset_path", data, "--epoch_size", "3",
                     "--output_path", out, "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "a save that a crash cut short" in proc.stdout
    assert f"resume auto: {folder / f'{NET}-1_4.ckpt'}" in proc.stdout
    assert sorted({int(e) for e, _, _ in LOSS.findall(proc.stdout)}) == [2, 3]
    assert ckpts(folder) == [f"{NET}-{e}_4.ckpt" for e in (1, 2, 3)]
    assert not list(folder.glob(".partial-*"))
