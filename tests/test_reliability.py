"""Runs that go wrong, through real processes: NaN losses stop cleanly; a run killed at any
moment resumes (--resume auto) into the state of an uninterrupted run; SIGTERM stops a run with a
checkpoint it continues from; the same seed gives the same losses."""
import csv
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from src.checkpoint import read_checkpoint
from src.training.run_state import RunState
from tests.helpers import LOSS, RESULT, ROOT, run_entry, write_cifar_folder

pytestmark = pytest.mark.slow
NET = "mobilenet_v1_025"
ARGS = ["--network", NET, "--num_classes", "4", "--batch_size", "16", "--warmup_epochs", "0",
        "--log_interval", "1", "--seed", "7"]
EVAL = re.compile(r"^eval: epoch (\d+), top-1 ([\d.]+), top-5 [\d.]+( \(best so far)?", re.M)


def ckpts(folder):
    """The checkpoints in ``folder``, not the hidden half-done saves."""
    return sorted(f for f in os.listdir(folder) if f.endswith(".ckpt") and not f.startswith("."))\
        if os.path.isdir(folder) else []


def metric_rows(folder):
    with open(os.path.join(folder, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_nan_stops_the_run_and_saves_nothing(tmp_path):
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=64, test_count=8)
    proc = run_entry("train.py", *ARGS, "--dataset_path", data, "--epoch_size", "2",
                     "--lr_max", "1e6", "--output_path", tmp_path / "run")
    assert proc.returncode == 2
    lines = [out for out in proc.stderr.splitlines() if out.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: loss or weights not finite")
    assert "at epoch 1 step" in lines[0] and ", lr " in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert ckpts(str(tmp_path / "run" / "ckpt_0")) == []


def test_killed_runs_resume_into_the_uninterrupted_runs_state(tmp_path):
    """Run a trains 5 epochs with an eval each epoch and keep_checkpoint_max 2. Run b is the same
    run SIGKILLed inside epoch 3's save (ZOO_TEST_HANG_IN_SAVE holds the save between its write
    and its rename): epochs 1-2 are a's to the digit (same seed), epoch 1's and 2's checkpoints
    load, epoch 3's is not there half-written; --resume auto continues at epoch 3 and ends with
    a's kept checkpoints and metrics.csv rows, and a best checkpoint that is the best eval of
    its own history (before: 'best so far' at a lower top-1, checkpoints 1, 2, 4, 5 kept,
    metrics.csv without epochs 1-2)."""
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=64, test_count=40)
    common = ARGS + ["--dataset_path", data, "--epoch_size", "5", "--eval_interval", "1",
                     "--keep_checkpoint_max", "2"]
    proc = run_entry("train.py", *common, "--output_path", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = str(tmp_path / "a" / "ckpt_0")
    a_losses = [float(loss) for _, _, loss in LOSS.findall(proc.stdout)]
    assert len(a_losses) == 20
    assert ckpts(a) == [f"{NET}-4_4.ckpt", f"{NET}-5_4.ckpt", f"{NET}-best.ckpt"]

    b = str(tmp_path / "b" / "ckpt_0")
    command = [sys.executable, os.path.join(ROOT, "train.py"), *common,
               "--output_path", str(tmp_path / "b")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ZOO_TEST_HANG_IN_SAVE": "3"}
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           env=env, cwd=ROOT)
    lines, deadline = [], time.time() + 300
    for line in job.stdout:
        lines.append(line)
        if line.startswith("test hook: hanging inside the save") or time.time() > deadline:
            break
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=60)
    assert lines and lines[-1].startswith("test hook"), "".join(lines[-20:])
    assert [float(loss) for _, _, loss in LOSS.findall("".join(lines))] == a_losses[:12]
    assert ckpts(b) == [f"{NET}-1_4.ckpt", f"{NET}-2_4.ckpt", f"{NET}-best.ckpt"]
    assert [f for f in os.listdir(b) if f.startswith(".partial-")]
    params, meta = read_checkpoint(os.path.join(b, f"{NET}-2_4.ckpt"))
    assert meta["epoch_num"] == 2 and meta["network"] == NET and params

    proc = run_entry("train.py", *common, "--output_path", tmp_path / "b", "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "a save that a crash cut short" in proc.stdout
    assert f"resume auto: {os.path.join(b, f'{NET}-2_4.ckpt')}" in proc.stdout
    assert sorted({int(e) for e, _, _ in LOSS.findall(proc.stdout)}) == [3, 4, 5]
    assert ckpts(b) == ckpts(a) and not [f for f in os.listdir(b) if f.startswith(".")
                                         and f != ".lock"]
    rows_a, rows_b = metric_rows(a), metric_rows(b)
    key = lambda rows: [(r["kind"], r["epoch"], r["global_step"]) for r in rows]  # noqa: E731
    assert key(rows_b) == key(rows_a)  # every step and eval once, none lost, none twice
    assert rows_b[:key(rows_b).index(("eval", "2", "8")) + 1] == \
        rows_a[:key(rows_a).index(("eval", "2", "8")) + 1]  # epochs 1-2: the same numbers
    evals = [(int(r["epoch"]), float(r["top1"])) for r in rows_b if r["kind"] == "eval"]
    best_epoch, best_top1 = max(evals, key=lambda e: (e[1], -e[0]))
    assert read_checkpoint(os.path.join(b, f"{NET}-best.ckpt"))[1]["epoch_num"] == best_epoch
    assert RunState.load(b).best()[:2] == (best_epoch, best_top1)
    assert f"best top-1 {best_top1:.4f} at epoch {best_epoch}:" in proc.stdout.splitlines()[-1]
    so_far = max(t for e, t in evals if e <= 2)
    for epoch, top1, claimed in EVAL.findall(proc.stdout):
        assert bool(claimed) == (float(top1) > so_far), (epoch, top1, so_far)
        so_far = max(so_far, float(top1))

    # A crash cut a's newest checkpoint short: --resume auto skips it and resumes from epoch 4.
    newest = os.path.join(a, f"{NET}-5_4.ckpt")
    os.chmod(newest, 0o600)
    with open(newest, "r+b") as f:
        f.truncate(1000)
    proc = run_entry("train.py", *common, "--epoch_size", "6", "--output_path", tmp_path / "a",
                     "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"warning: skipping unreadable checkpoint {newest}" in proc.stdout
    assert f"resume auto: {os.path.join(a, f'{NET}-4_4.ckpt')}" in proc.stdout
    assert sorted({int(e) for e, _, _ in LOSS.findall(proc.stdout)}) == [5, 6]
    assert ckpts(a) == [f"{NET}-5_4.ckpt", f"{NET}-6_4.ckpt", f"{NET}-best.ckpt"]


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path, cli):
    """The first run's lock (here held by this process, as a training run holds it)."""
    from src.training.run_state import run_lock
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=32, test_count=8)
    folder = tmp_path / "run" / "ckpt_0"
    folder.mkdir(parents=True)
    with run_lock(str(folder)):
        result = cli("train.py", *ARGS, "--dataset_path", data, "--epoch_size", "1",
                     "--output_path", tmp_path / "run")
    lines = result.error_lines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: the output folder is in use by another run (pid "
                               f"{os.getpid()} on ") and "give another --output_path" in lines[0]


def test_a_modern_recipe_stopped_and_killed_resumes_into_the_uninterrupted_runs_state(tmp_path,
                                                                                      cli):
    """AdamW, gradient accumulation of 2, clipping and EMA, 3 epochs of 4 steps,
    dataset_sink_mode True (which CPU runs step by step). Run b gets a SIGTERM after step
    5 (ZOO_TEST_SIGNAL_AT_STEP; inside an accumulation cycle): the step finishes, one line says
    where and what it saved, exit 143, and the checkpoint holds the half-summed gradients. It
    resumes, is SIGKILLed in epoch 3 (after epoch 2's checkpoint) and resumes again: each resumed
    part takes a's losses to the digit (exact_resume replays the data and its augmentations),
    and it ends with a's weights, optimizer state and
    EMA; eval of its checkpoint scores the EMA weights, and says so."""
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=64, test_count=16)
    common = ARGS + ["--dataset_path", data, "--epoch_size", "3", "--opt", "adamw",
                     "--lr_max", "0.005", "--gradient_accumulation_steps", "2", "--clip_grad",
                     "True", "--clip_value", "2.0", "--ema", "True", "--ema_decay", "0.9",
                     "--exact_resume", "True", "--dataset_sink_mode", "True"]
    proc = run_entry("train.py", *common, "--output_path", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a_losses = [float(loss) for _, _, loss in LOSS.findall(proc.stdout)]

    b = tmp_path / "b"
    proc = run_entry("train.py", *common, "--output_path", b,
                     env={**os.environ, "ZOO_TEST_SIGNAL_AT_STEP": "5"})
    assert proc.returncode == 143, proc.stderr[-3000:]
    saved = str(b / "ckpt_0" / f"{NET}-2_1.ckpt")
    lines = [out for out in proc.stderr.splitlines() if out.strip()]
    assert lines == [f"stopped: SIGTERM after epoch 2 step 1 (global step 5); saved {saved} in "
                     f"{lines[-1].split(' in ')[-1]}"]
    assert lines[0].endswith(" s: --resume auto continues from it")
    params, meta = read_checkpoint(saved)
    assert int(params["micro_step"].asnumpy()[0]) == 5 and meta["global_step"] == 2
    assert any(params[n].asnumpy().any() for n in params if n.startswith("accumulated."))

    command = [sys.executable, os.path.join(ROOT, "train.py"), *common, "--output_path", str(b),
               "--resume", "auto"]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=ROOT)
    lines = []
    for line in job.stdout:
        lines.append(line)
        if line.startswith("epoch: 3 step: 1,"):
            break
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=60)
    assert lines[-1].startswith("epoch: 3 step: 1,"), "".join(lines[-20:])
    assert [float(loss) for _, _, loss in LOSS.findall("".join(lines))] == a_losses[5:9]
    proc = run_entry("train.py", *common, "--output_path", b, "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [float(loss) for _, _, loss in LOSS.findall(proc.stdout)] == a_losses[8:]
    assert ckpts(str(b / "ckpt_0")) == [f"{NET}-{e}_4.ckpt" for e in (1, 2, 3)]

    final = f"{NET}-3_4.ckpt"
    ours, _ = read_checkpoint(str(b / "ckpt_0" / final))
    theirs, _ = read_checkpoint(str(tmp_path / "a" / "ckpt_0" / final))
    assert set(ours) == set(theirs) and any(n.startswith("ema.") for n in ours)
    assert "epoch: 3 step: 1," in "".join(lines)  # the killed part got into epoch 3
    for name, value in theirs.items():
        assert abs(ours[name].asnumpy() - value.asnumpy()).max() < 1e-6, name

    scores = {}
    for use_ema in ("True", "False"):
        result = cli("eval.py", "--dataset_path", data, "--checkpoint_path",
                     b / "ckpt_0" / final, "--use_ema_weights", use_ema)
        assert result.returncode == 0, result.stderr[-3000:]
        scores[use_ema] = RESULT.search(result.stdout).groups()
    assert scores["True"][5] == "ema" and scores["False"][5] is None
    assert scores["True"][0] != scores["False"][0]  # the two sets of weights score differently
