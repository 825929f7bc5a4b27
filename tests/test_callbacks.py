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
