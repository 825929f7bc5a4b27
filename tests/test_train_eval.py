"""End to end through the real command lines: train, checkpoint names, eval, resume, pretrained."""
import csv
import os
import re

import numpy as np
import pytest

from src.checkpoint import read_checkpoint
from tests.helpers import (
    LOSS,
    LR,
    PROGRESS,
    RESULT,
    run_entry,
    write_cifar_folder,
    write_image_folder,
)

pytestmark = pytest.mark.slow
NET = "mobilenet_v1_025"
COMMON = ["--network", NET, "--image_size", "32", "--batch_size", "16", "--warmup_epochs", "0",
          "--lr_decay_mode", "cosine", "--lr_max", "0.05", "--weight_decay", "0", "--log_interval",
          "1", "--seed", "3"]


def mean_loss_per_epoch(stdout):
    losses = {}
    for epoch, _, loss in LOSS.findall(stdout):
        losses.setdefault(int(epoch), []).append(float(loss))
    return {epoch: np.mean(values) for epoch, values in losses.items()}


def check_trained(proc, ckpt_dir, epochs, steps, net=NET):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    losses = mean_loss_per_epoch(proc.stdout)
    assert sorted(losses) == list(range(1, epochs + 1))
    assert losses[epochs] < losses[1], losses
    names = sorted(f for f in os.listdir(ckpt_dir) if f.endswith(".ckpt"))
    assert names == sorted(f"{net}-{e}_{steps}.ckpt" for e in range(1, epochs + 1))


def check_eval(tmp_path, ckpt, *args):
    proc = run_entry("eval.py", "--checkpoint_path", ckpt, *args, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = RESULT.search(proc.stdout)
    assert match, proc.stdout
    loss, top1, top5, network, path, weights = match.groups()
    assert weights is None  # a run without ema: its raw weights, said by nothing
    assert network == NET
    assert path == ckpt and 0.0 <= float(top1) <= float(top5) <= 1.0
    assert np.isfinite(float(loss))
    assert RESULT.search((tmp_path / "eval_log.txt").read_text())
    return float(top1)


def test_cifar10_train_eval_resume_pretrained(tmp_path):
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=128, test_count=40)
    out = tmp_path / "run"
    args = COMMON + ["--dataset_path", data, "--epoch_size", "6", "--num_classes", "4"]
    proc = run_entry("train.py", *args, "--output_path", out)
    ckpt_dir = out / "ckpt_0"
    check_trained(proc, ckpt_dir, epochs=6, steps=8)
    full_lrs = {(int(e), int(s)): float(lr) for e, s, lr in LR.findall(proc.stdout)}
    top1 = check_eval(tmp_path, str(ckpt_dir / f"{NET}-6_8.ckpt"), "--dataset_path", data)
    assert top1 > 0.5  # 4 balanced classes: chance is 0.25

    # A second run into the same folder would overwrite the first: refused.
    proc = run_entry("train.py", *args, "--output_path", out)
    assert proc.returncode == 2 and "already holds checkpoints" in proc.stderr

    # Resume from epoch 4 into another folder: epochs 5..6, and the lr of the first resumed
    # step is the uninterrupted schedule's.
    resumed = tmp_path / "resumed"
    proc = run_entry("train.py", *args, "--output_path", resumed,
                     "--resume", ckpt_dir / f"{NET}-4_8.ckpt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs = sorted({int(e) for e, _, _ in LOSS.findall(proc.stdout)})
    assert epochs == [5, 6]
    resumed_lrs = {(int(e), int(s)): float(lr) for e, s, lr in LR.findall(proc.stdout)}
    assert min(resumed_lrs) == (5, 1)
    assert resumed_lrs[(5, 1)] == pytest.approx(full_lrs[(5, 1)], rel=1e-6)
    assert resumed_lrs == pytest.approx({k: v for k, v in full_lrs.items() if k[0] >= 5})
    assert sorted(f for f in os.listdir(resumed / "ckpt_0") if f.endswith(".ckpt")) == [
        f"{NET}-5_8.ckpt", f"{NET}-6_8.ckpt"]

    # Fine-tune the 4-class checkpoint with a 10-class head.
    proc = run_entry("train.py", *COMMON, "--dataset_path", data, "--epoch_size", "1",
                     "--num_classes", "10", "--output_path", tmp_path / "tuned",
                     "--pretrained", ckpt_dir / f"{NET}-6_8.ckpt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded all but the classifier" in proc.stdout


def test_image_folder_train_and_eval(tmp_path):
    root = write_image_folder(str(tmp_path / "imgs"), per_class=22, classes=3, size=48)
    out = tmp_path / "run"
    proc = run_entry("train.py", *COMMON, "--dataset", "imagenet", "--dataset_path", root,
                     "--num_classes", "3", "--epoch_size", "3", "--output_path", out)
    check_trained(proc, out / "ckpt_0", epochs=3, steps=4)
    _, meta = read_checkpoint(str(out / "ckpt_0" / f"{NET}-3_4.ckpt"))
    assert meta["class_names"] == ["class_0", "class_1", "class_2"]  # the class folders
    check_eval(tmp_path, str(out / "ckpt_0" / f"{NET}-3_4.ckpt"), "--dataset", "imagenet",
               "--dataset_path", root)



def test_mixed_precision_training_runs_through_the_fast_kernels(tmp_path):
    """amp_level O2 with the default loss scale 1024, as the zoo configs train: float16 reaches
    our kernels through their cast, the loss falls, the checkpoint's weights are finite.
    ShuffleNetV2 0.5x: in 12 float16 steps MobileNetV1 0.25x's loss did not always fall. lr 0.02:
    at COMMON's 0.05 the float16 weights overflowed at step 12 on an AVX-512 Xeon (and at step 1
    with MindSpore's own convs), stopped by the non-finite guard as it should."""
    net = "shufflenet_v2_x0_5"
    root = write_image_folder(str(tmp_path / "imgs"), per_class=22, classes=3, size=48)
    out = tmp_path / "run"
    proc = run_entry("train.py", *COMMON, "--network", net, "--dataset", "imagenet",
                     "--dataset_path", root, "--num_classes", "3", "--epoch_size", "3",
                     "--amp_level", "O2", "--lr_max", "0.02", "--output_path", out)
    check_trained(proc, out / "ckpt_0", epochs=3, steps=4, net=net)
    params, _ = read_checkpoint(str(out / "ckpt_0" / f"{net}-3_4.ckpt"))
    assert params and all(np.isfinite(p.asnumpy()).all() for p in params.values())

EVAL = re.compile(r"^eval: epoch (\d+), top-1 ([\d.]+), top-5 ([\d.]+)", re.M)


def test_watchable_run_progress_metrics_curves_best(tmp_path):
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=128, test_count=40)
    out = tmp_path / "run"
    proc = run_entry("train.py", *COMMON, "--dataset_path", data, "--num_classes", "4",
                     "--epoch_size", "4", "--eval_interval", "1", "--log_interval", "4",
                     "--lr_scaling", "linear", "--lr_base_batch", "32", "--output_path", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The recipe's lr 0.05 is for a global batch of 32; this run's is 16: half the lr.
    assert ("lr scaling: global batch 16 / recipe's 32 = x0.5: lr_init 0.005, lr_max 0.025"
            in proc.stdout)
    assert "\x1b[" not in proc.stdout  # no terminal control codes in a log
    progress = PROGRESS.findall(proc.stdout)
    assert [(int(e), int(s)) for e, s, *_ in progress] == [
        (e, s) for e in range(1, 5) for s in (1, 4, 8)]
    assert progress[-1][-1] == "00:00:00"
    assert float(progress[0][4]) == pytest.approx(0.025)
    evals = [(int(e), float(t1), float(t5)) for e, t1, t5 in EVAL.findall(proc.stdout)]
    assert [e for e, _, _ in evals] == [1, 2, 3, 4]
    folder = out / "ckpt_0"
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    assert sum(r["kind"] == "step" for r in rows) == 4 * 8
    assert [float(r["top1"]) for r in rows if r["kind"] == "eval"] == pytest.approx(
        [t1 for _, t1, _ in evals], abs=1e-4)
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The best checkpoint is the epoch of the (first) highest top-1.
    best_epoch = max(evals, key=lambda row: (row[1], -row[0]))[0]
    _, meta = read_checkpoint(str(folder / f"{NET}-best.ckpt"))
    assert meta["epoch_num"] == best_epoch
    # The run ends with its best top-1, that epoch and the best checkpoint's path.
    best = max(t1 for _, t1, _ in evals)
    assert re.fullmatch(rf"train: finished {NET} epochs 1\.\.4 in [\d.]+ s; best top-1 "
                        rf"{best:.4f} at epoch {best_epoch}: "
                        + re.escape(str(folder / f"{NET}-best.ckpt")), proc.stdout.splitlines()[-1])
