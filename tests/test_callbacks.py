"""The training callbacks' own logic, without training: durations, progress lines."""
from types import SimpleNamespace

import numpy as np
import pytest

from src.callbacks import ProgressMonitor, format_duration
from tests.helpers import PROGRESS


@pytest.mark.parametrize("seconds, text", [(0, "00:00:00"), (59.6, "00:01:00"),
                                           (3 * 3600 + 62, "03:01:02"),
                                           (30 * 3600, "1d 06:00:00"),
                                           (9 * 86400 + 5, "9d 00:00:05")])
def test_durations_print_days_past_24_hours(seconds, text):
    assert format_duration(seconds) == text


class FakeOptimizer:
    """What the callbacks read of an optimizer: its step counter and its lr array."""

    def __init__(self, lrs):
        self.step = 0
        self.learning_rate = SimpleNamespace(learning_rate=SimpleNamespace(
            asnumpy=lambda: np.asarray(lrs, np.float32)))
        self.global_step = SimpleNamespace(asnumpy=lambda: np.array([self.step]))


def step_context(epoch, step, loss):
    args = SimpleNamespace(cur_epoch_num=epoch, cur_step_num=step,
                           net_outputs=SimpleNamespace(asnumpy=lambda: np.array(loss)))
    return SimpleNamespace(original_args=lambda: args)


def test_progress_line_has_the_loss_the_lr_used_and_a_long_eta(capsys, monkeypatch):
    """One line per log_interval: the raw and smoothed loss, the lr of the step just taken, and
    an ETA that counts days (a 2-step-a-second run with 200,000 steps to go)."""
    steps_per_epoch, total_epochs = 100_000, 2
    optimizer = FakeOptimizer(np.linspace(0.1, 0.2, steps_per_epoch * total_epochs))
    monitor = ProgressMonitor(optimizer, steps_per_epoch, interval=2, total_epochs=total_epochs,
                              images_per_step=32)
    clock = iter([100.0, 100.5, 101.0, 101.5])
    monkeypatch.setattr("src.callbacks.time.time", lambda: next(clock))
    for step, loss in zip(range(1, 5), (2.0, 1.0, 1.5, 0.5)):
        optimizer.step = step
        monitor.on_train_step_end(step_context(1, step, loss))
    lines = PROGRESS.findall(capsys.readouterr().out)
    assert [(e, s) for e, s, *_ in lines] == [("1", "1"), ("1", "2"), ("1", "4")]
    epoch, step, loss, smoothed, lr, rate, eta = lines[-1]
    assert float(loss) == 0.5 and float(smoothed) == pytest.approx(
        0.9 * (0.9 * (0.9 * 2.0 + 0.1 * 1.0) + 0.1 * 1.5) + 0.1 * 0.5, abs=1e-4)
    assert float(lr) == pytest.approx(float(np.linspace(0.1, 0.2, 200_000)[3]))
    assert float(rate) == pytest.approx(64.0)  # 32 images every 0.5 s
    assert eta == format_duration(0.5 * (200_000 - 4)) == "1d 03:46:38"
    assert len(monitor.history) == 4


def test_run_recorder_keeps_the_best_the_newest_and_the_metrics(tmp_path):
    """Three epoch ends with evals of 0.5, 0.7, 0.6 and keep_checkpoint_max 2: the state names
    epochs 2 and 3's checkpoints (epoch 1's is removed), the best checkpoint holds epoch 2, and
    metrics.csv has every step and eval once."""
    import os

    from src.callbacks import RunRecorder
    from src.checkpoint import read_checkpoint
    from src.models import create_network
    from src.run_state import RunState, read_metrics
    net = create_network("mobilenet_v1_025", num_classes=4, conv_impl="mindspore")
    optimizer = FakeOptimizer(np.full(6, 0.1))
    progress = ProgressMonitor(optimizer, 2, interval=10, total_epochs=3, images_per_step=8)
    tops = iter([0.5, 0.7, 0.6])
    model = SimpleNamespace(eval=lambda data, dataset_sink_mode: {"Top_1_Acc": next(tops),
                                                                  "Top_5_Acc": 1.0})
    recorder = RunRecorder(str(tmp_path), RunState("mobilenet_v1_025", 2),
                           {"network": "mobilenet_v1_025", "num_classes": 4}, progress,
                           optimizer, 3, keep=2, model=model, eval_data=None, eval_interval=1)
    for step in range(1, 7):
        optimizer.step = step
        progress.on_train_step_end(step_context((step - 1) // 2 + 1, step, 1.0 / step))
        if step % 2 == 0:
            context = step_context(step // 2, step, 0.0)
            context.original_args().train_network = net
            recorder.on_train_epoch_end(context)
    state = RunState.load(str(tmp_path))
    assert state.kept(2) == ["mobilenet_v1_025-2_2.ckpt", "mobilenet_v1_025-3_2.ckpt"]
    assert state.best()[:2] == (2, 0.7) and state.best_file_epoch == 2
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".ckpt")) == [
        "mobilenet_v1_025-2_2.ckpt", "mobilenet_v1_025-3_2.ckpt", "mobilenet_v1_025-best.ckpt"]
    assert read_checkpoint(str(tmp_path / "mobilenet_v1_025-best.ckpt"))[1]["epoch_num"] == 2
    rows = read_metrics(str(tmp_path))
    assert [(r["kind"], r["global_step"]) for r in rows] == [
        ("step", "1"), ("step", "2"), ("eval", "2"), ("step", "3"), ("step", "4"), ("eval", "4"),
        ("step", "5"), ("step", "6"), ("eval", "6")]
