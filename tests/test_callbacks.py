"""The training callbacks' own logic, without training: durations, progress lines."""
import signal
from types import SimpleNamespace

import numpy as np
import pytest

from src.training.callbacks import ProgressMonitor, SignalStop, StepClock, format_duration
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


def step_context(loss, train_network=None):
    output = loss if hasattr(loss, "asnumpy") else SimpleNamespace(
        asnumpy=lambda: np.array(loss))
    args = SimpleNamespace(net_outputs=output, train_network=train_network)
    return SimpleNamespace(original_args=lambda: args, request_stop=lambda: None)


class Tracked:
    """A loss whose reads from the device are counted."""
    reads = 0

    def __init__(self, value):
        self.value = value

    def asnumpy(self):
        Tracked.reads += 1
        return np.array(self.value)


def test_progress_line_has_the_loss_the_lr_used_and_a_long_eta(capsys, monkeypatch):
    """One line per log_interval: the raw and smoothed loss, the lr of the step just taken, and
    an ETA that counts days (a 2-step-a-second run with 200,000 steps to go). The time is read
    at the sync points only (steps 1, 2, 4): the rate is the steps between two over their time."""
    steps_per_epoch, total_epochs = 100_000, 2
    optimizer = FakeOptimizer(np.linspace(0.1, 0.2, steps_per_epoch * total_epochs))
    clock = StepClock(0, steps_per_epoch, interval=2)
    monitor = ProgressMonitor(clock, optimizer, total_epochs=total_epochs, images_per_step=32)
    times = iter([100.0, 100.5, 101.5])
    monkeypatch.setattr("src.training.callbacks.time.time", lambda: next(times))
    for step, loss in zip(range(1, 5), (2.0, 1.0, 1.5, 0.5), strict=True):
        optimizer.step = step
        clock.on_train_step_end(step_context(loss))
        monitor.on_train_step_end(step_context(loss))
    lines = PROGRESS.findall(capsys.readouterr().out)
    assert [(e, s) for e, s, *_ in lines] == [("1", "1"), ("1", "2"), ("1", "4")]
    epoch, step, loss, smoothed, lr, rate, eta = lines[-1]
    assert float(loss) == 0.5 and float(smoothed) == pytest.approx(
        0.9 * (0.9 * (0.9 * 2.0 + 0.1 * 1.0) + 0.1 * 1.5) + 0.1 * 0.5, abs=1e-4)
    assert float(lr) == pytest.approx(float(np.linspace(0.1, 0.2, 200_000)[3]))
    assert float(rate) == pytest.approx(64.0)  # 2 steps of 32 images in 1 s
    assert eta == format_duration(0.5 * (200_000 - 4)) == "1d 03:46:38"
    assert [row[1] for row in monitor.history] == [1, 2, 3, 4]


def test_the_device_is_read_only_at_sync_points():
    """20 steps of 10-step epochs at log_interval 5: the losses are read at the sync points
    (steps 1, 5, 10, 11, 15, 20), each step's once, and between them not at all; in a
    distributed run a signal does not make a sync point of its own (every rank must reach the
    same ones), in one process it does."""
    clock = StepClock(0, 10, interval=5)
    Tracked.reads, reads, synced = 0, [], []
    for step in range(1, 21):
        clock.on_train_step_end(step_context(Tracked(1.0 / step)))
        if clock.sync:
            synced.append(step)
            assert [s for s, _ in clock.losses()] == list(range(synced[-2] + 1 if len(synced) > 1
                                                                else 1, step + 1))
            clock.losses()  # a second reader: no second read
        reads.append(Tracked.reads)
    assert synced == [1, 5, 10, 11, 15, 20] and reads[-1] == 20
    assert reads[5] == reads[8] == 5  # steps 6..9: nothing read
    clock.on_train_step_end(step_context(Tracked(0.0)))  # step 21: epoch 3's first, a sync
    stopper = SignalStop(clock, agree=lambda signum: signum)
    stopper.handle(signal.SIGTERM, None)
    clock.on_train_step_end(step_context(Tracked(0.0)))
    assert not clock.sync and stopper.signum == signal.SIGTERM
    alone = SignalStop(StepClock(0, 10, interval=5))
    alone.clock.on_train_step_end(step_context(1.0))
    alone.clock.on_train_step_end(step_context(1.0))
    assert not alone.clock.sync
    alone.handle(signal.SIGTERM, None)
    alone.clock.on_train_step_end(step_context(1.0))
    assert alone.clock.sync


def test_run_recorder_keeps_the_best_the_newest_and_the_metrics(tmp_path):
    """Three epoch ends with evals of 0.5, 0.7, 0.6 and keep_checkpoint_max 2: the state names
    epochs 2 and 3's checkpoints (epoch 1's is removed), the best checkpoint holds epoch 2, and
    metrics.csv has every step and eval once."""
    import os

    from src.checkpoint import read_checkpoint
    from src.models import create_network
    from src.training.callbacks import RunRecorder
    from src.training.run_state import RunState, read_metrics
    net = create_network("mobilenet_v1_025", num_classes=4, conv_impl="mindspore")
    optimizer = FakeOptimizer(np.full(6, 0.1))
    clock = StepClock(0, 2, interval=10)
    progress = ProgressMonitor(clock, optimizer, total_epochs=3, images_per_step=8)
    tops = iter([0.5, 0.7, 0.6])
    model = SimpleNamespace(eval=lambda data, dataset_sink_mode: {"Top_1_Acc": next(tops),
                                                                  "Top_5_Acc": 1.0})
    recorder = RunRecorder(str(tmp_path), RunState("mobilenet_v1_025", 2),
                           {"network": "mobilenet_v1_025", "num_classes": 4}, progress,
                           3, keep=2, model=model, eval_data=None, eval_interval=1)
    for step in range(1, 7):
        optimizer.step = step
        context = step_context(1.0 / step, net)
        clock.on_train_step_end(context)
        progress.on_train_step_end(context)
        if step % 2 == 0:
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


def test_sink_mode_calls_keep_progress_lines_checkpoints_and_the_stop(tmp_path, capsys):
    """What MindSpore's sink mode does on Ascend/GPU, replayed on CPU: one step call and one
    epoch call per sink of 4 steps (8-step epochs, log_interval 4). Each call is a sync point
    with a progress line at its last step; epoch 1's end saves its checkpoint; a SIGTERM during
    the third sink stops at that sink's end (global step 12) with a checkpoint a resume takes."""
    from src.checkpoint import read_checkpoint
    from src.models import create_network
    from src.training.callbacks import NonFiniteLossGuard, RunRecorder
    from src.training.run_state import RunState
    net = create_network("mobilenet_v1_025", num_classes=4, conv_impl="mindspore")
    optimizer = FakeOptimizer(np.full(24, 0.1))
    clock = StepClock(0, 8, interval=4)
    clock.per_call = 4
    progress = ProgressMonitor(clock, optimizer, total_epochs=3, images_per_step=8)
    recorder = RunRecorder(str(tmp_path), RunState("mobilenet_v1_025", 8),
                           {"network": "mobilenet_v1_025", "num_classes": 4}, progress, 3)
    stopper = SignalStop(clock, recorder)
    callbacks = [clock, NonFiniteLossGuard(clock, optimizer, net.trainable_params()[0]),
                 progress, recorder, stopper]
    stopped = []
    for call in range(1, 7):
        context = step_context(1.0 / call, net)
        context.request_stop = lambda: stopped.append(clock.done)
        optimizer.step = 4 * call
        if call == 3:
            stopper.handle(signal.SIGTERM, None)  # arrives while the sink runs
        for cb in callbacks:
            cb.on_train_step_end(context)
        for cb in callbacks:
            cb.on_train_epoch_end(context)
        if stopped:
            break
    lines = PROGRESS.findall(capsys.readouterr().out)
    assert [(int(e), int(s)) for e, s, *_ in lines] == [(1, 4), (1, 8), (2, 4)]
    assert stopped == [12] and stopper.saved == str(tmp_path / "mobilenet_v1_025-2_4.ckpt")
    assert read_checkpoint(stopper.saved)[1]["step_num"] == 12
    state = RunState.load(str(tmp_path))
    assert state.checkpoints() == [(8, "mobilenet_v1_025-1_8.ckpt"),
                                   (12, "mobilenet_v1_025-2_4.ckpt")]
    assert [row[1] for row in progress.history] == [4, 8, 12]
