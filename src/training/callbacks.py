"""Training callbacks: progress lines, the NaN/Inf guard, the run's record (eval, metrics,
checkpoints, best, run state, curves), and stopping on SIGTERM/SIGINT.

Every step and epoch number comes from StepClock, the host's count of the steps taken from where
the run started, so it is right after a resume too, also one that starts in the middle of an
epoch; the callbacks read the device only at its sync points.
"""
import contextlib
import os
import signal
import time

import numpy as np
from mindspore.train import Callback

from src.checkpoint import save_atomically
from src.errors import UserError
from src.training.run_state import best_name, checkpoint_name, pending_best_name, write_metrics


def global_step(optimizer) -> int:
    """How many steps the optimizer has taken (its own counter, so right after a resume too)."""
    return int(optimizer.global_step.asnumpy().reshape(-1)[0])


def lr_schedule(optimizer) -> np.ndarray:
    """The optimizer's per-step lr array (the step lr is entry global_step - 1); with a learning
    rate a group (head_lr_scale), the first group's: the network's, or with a frozen backbone
    the head's."""
    schedule = optimizer.learning_rate
    if getattr(optimizer, "is_group_lr", False):
        schedule = schedule[0]
    return schedule.learning_rate.asnumpy()


def epoch_and_step(done: int, steps_per_epoch: int) -> tuple:
    """(epoch, step in that epoch), both from 1, of the ``done``-th step of a run."""
    return (done - 1) // steps_per_epoch + 1, (done - 1) % steps_per_epoch + 1


def format_duration(seconds: float) -> str:
    """``HH:MM:SS``, with a day count in front from 24 hours on (ImageNet runs take days):
    ``1d 06:00:00`` for 30 hours."""
    seconds = int(round(seconds))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    clock = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{days}d {clock}" if days else clock


class StepClock(Callback):
    """The run's global step, counted on the host, and when the callbacks may read the device.

    Reading a tensor (a loss, a weight, the optimizer's counter) makes the host wait for the
    device, which on Ascend and GPU costs the step its overlap with the next one. So every other
    callback reads the device only at a *sync point*: a call that covers the run's first step, an
    epoch's first step or a multiple of ``interval`` in it (where a progress line is printed,
    ``printing``), an epoch's last step, or (one process) the step after a stop signal
    (``urgent``). Distributed runs have no urgent sync point: every rank must reach the same
    ones. A call ends ``per_call`` steps: 1, or in sink mode the sink's size.

    It also keeps each call's loss tensor, read from the device at a sync point, once, for the
    guard and the progress line (``losses``). It goes first in the callback list.

    Test hook: ZOO_TEST_SIGNAL_AT_STEP=N (or N@R: on rank R only) sends this process a SIGTERM
    after global step N.
    """

    def __init__(self, start_step: int, steps_per_epoch: int, interval: int, rank: int = 0):
        super().__init__()
        self.done = self.started = start_step
        self.steps, self.interval, self.rank = steps_per_epoch, interval, rank
        self.per_call, self.sync, self.urgent = 1, False, False
        self._pending, self._read = [], None

    def on_train_step_end(self, run_context):
        if self.sync:  # what the last sync point read is consumed
            self._pending, self._read = [], None
        self.done += self.per_call
        self._pending.append((self.done, step_loss_tensor(run_context.original_args())))
        at, _, rank = os.environ.get("ZOO_TEST_SIGNAL_AT_STEP", "").partition("@")
        if at == str(self.done) and rank in ("", str(self.rank)):
            os.kill(os.getpid(), signal.SIGTERM)
        self.sync = self.printing() or self.done % self.steps == 0 or self.urgent

    def printing(self) -> bool:
        """Whether this call's steps hold the run's first, an epoch's first, or a multiple of
        ``interval`` in its epoch: a progress line's place."""
        low = self.done - self.per_call
        if low == self.started:
            return True
        return any(in_epoch == 1 or in_epoch % self.interval == 0
                   for in_epoch in ((s - 1) % self.steps + 1 for s in range(low + 1,
                                                                           self.done + 1)))

    def losses(self) -> list:
        """[(global step, loss)] of the calls since the last sync point (one per call), read
        from the device once."""
        if self._read is None:
            self._read = [(step, float(np.mean(loss.asnumpy()))) for step, loss in self._pending]
        return self._read


def step_loss_tensor(params):
    """The loss output of the step just taken (a train step with a loss scale returns the loss,
    the overflow flag and the scale), still on the device."""
    return params.net_outputs[0] if isinstance(params.net_outputs, (tuple, list)) \
        else params.net_outputs


class ProgressMonitor(Callback):
    """One progress line at each epoch's first step (and the run's first) and every ``interval``
    steps (``StepClock.printing``), the run's only loss line:

    ``epoch: E step: S, loss: L, loss(smoothed): M, lr: X, images/s: R, eta: [Dd ]HH:MM:SS``.
    The lr is what the optimizer's own step counter and lr array say it used (a step skipped for
    an overflowed dynamic loss scale does not count there). The rate is the images between two
    sync points over the time between them (the host waits for the device at each, so the time
    is the device's). Plain text, no terminal control codes, so a log file reads the same. It
    also keeps each read step's (epoch, global step, loss, lr) for metrics.csv and the curves
    (``history``, which starts with the rows of the run before a resume).
    """

    def __init__(self, clock: StepClock, optimizer, total_epochs: int, images_per_step: int,
                 history=(), accumulation: int = 1):
        super().__init__()
        self.clock, self.optimizer, self.steps = clock, optimizer, clock.steps
        self.accumulation = accumulation  # micro-batches an optimizer step takes
        self.lrs = lr_schedule(optimizer)  # fixed during training: read once, not every step
        self.total_steps = total_epochs * clock.steps
        self.images_per_step = images_per_step
        self.smoothed, self.history = None, list(history)
        self.last_time, self.last_step, self.step_time = None, None, None
        self.epoch_began = None

    def on_train_epoch_begin(self, run_context):
        if self.clock.done % self.steps == 0:  # a real epoch's start, not a sink's
            self.last_time = None  # a rate must not span the eval and the save between epochs
            self.epoch_began = (time.time(), self.clock.done)

    def on_train_step_end(self, run_context):
        if not self.clock.sync:
            return
        losses = self.clock.losses()
        now, done = time.time(), self.clock.done
        skipped = done - global_step(self.optimizer)  # overflowed steps the lr did not count
        for step, loss in losses:
            self.smoothed = loss if self.smoothed is None else 0.9 * self.smoothed + 0.1 * loss
            used = (step - 1) // self.accumulation if self.accumulation > 1 else \
                max(step - 1 - skipped, 0)
            self.history.append((epoch_and_step(step, self.steps)[0], step, loss,
                                 float(self.lrs[min(used, len(self.lrs) - 1)])))
        if self.last_time is not None and done > self.last_step:
            self.step_time = (now - self.last_time) / (done - self.last_step)
        self.last_time, self.last_step = now, done
        if self.clock.printing():
            self.print_line(done)
        if done % self.steps == 0 and self.epoch_began:  # the epoch's time, eval and save aside
            seconds, taken = now - self.epoch_began[0], done - self.epoch_began[1]
            print(f"Train epoch time: {seconds * 1000:5.3f} ms, per step time: "
                  f"{seconds * 1000 / max(taken, 1):5.3f} ms", flush=True)

    def print_line(self, done: int) -> None:
        epoch, step_in_epoch = epoch_and_step(done, self.steps)
        _, _, loss, lr = self.history[-1]
        rate, eta = "?", "?"
        if self.step_time:
            rate = f"{self.images_per_step / self.step_time:.1f}"
            eta = format_duration(self.step_time * (self.total_steps - done))
        print(f"epoch: {epoch} step: {step_in_epoch}, loss: {loss:.6f}, "
              f"loss(smoothed): {self.smoothed:.4f}, lr: {lr:.8f}, images/s: {rate}, "
              f"eta: {eta}", flush=True)


class NonFiniteLossGuard(Callback):
    """Stops training at the first sync point (StepClock) after a loss or the weights turned
    NaN or Inf, before anything saves them.

    Placed before the run's record and the stop, it raises first, so the bad weights are never
    written. Besides the losses it checks the stem conv's weights: MindSpore's CPU softmax cross
    entropy returns a finite ln(C) for NaN logits, so NaN weights can hide behind a finite loss
    (measured on 2.10); a NaN anywhere reaches the stem's gradient on the same step.
    """

    def __init__(self, clock: StepClock, optimizer, sentinel):
        super().__init__()
        self.clock, self.optimizer, self.sentinel = clock, optimizer, sentinel

    def on_train_step_end(self, run_context):
        if not self.clock.sync:
            return
        losses = self.clock.losses()
        bad = [(step, loss) for step, loss in losses if not np.isfinite(loss)]
        if not bad and np.isfinite(self.sentinel.asnumpy()).all():
            return
        done, value = bad[0] if bad else losses[-1]
        epoch, step = epoch_and_step(max(done, 1), self.clock.steps)
        lrs = lr_schedule(self.optimizer)  # the optimizer's steps (fewer with accumulation)
        lr = float(lrs[min(max(global_step(self.optimizer) - 1, 0), len(lrs) - 1)])
        raise UserError(f"loss or weights not finite (loss {value}) at epoch {epoch} step "
                        f"{step} (global step {done}), lr {lr:g}; stopped without saving this "
                        "step's weights", "training",
                        "lower --lr_max (with amp: a lower --loss_scale, or --loss_scale_type "
                        "dynamic on Ascend/GPU), then --resume the last checkpoint")


class RunRecorder(Callback):
    """Rank 0's record of the run in its checkpoint folder. At each epoch's end, in this order:
    evaluate (every ``eval_interval`` epochs), append the epoch's rows to metrics.csv, save the
    epoch checkpoint (every ``save_every`` epochs and after the last), save a new best under a
    pending name, commit the run state, then put the best in place and remove what
    ``keep_checkpoint_max`` no longer keeps. A crash anywhere leaves the folder as the last
    commit says (src/training/run_state.py). ``save_stop`` saves the checkpoint a stop by signal
    needs.

    Checkpoints are named ``{network}-{epoch}_{step}.ckpt`` (ModelCheckpoint would rename to
    ``{network}_1-...`` in a folder that already has some, and writes in place) and carry
    ``meta`` (the network record), the epoch and the global step (and the optimizer's state).
    """

    def __init__(self, folder, state, meta, progress, total_epochs, *, save=True,
                 save_every=1, keep=10, model=None, eval_data=None, eval_interval=0,
                 eval_weights=None):
        super().__init__()
        # the weights evals score: a context in which the network holds them (the EMA's)
        self.eval_weights = eval_weights or contextlib.nullcontext
        self.folder, self.state, self.meta, self.progress = folder, state, meta, progress
        self.clock, self.total_epochs, self.save = progress.clock, total_epochs, save
        self.save_every, self.keep = save_every, keep
        self.model, self.eval_data, self.eval_interval = model, eval_data, eval_interval
        self.network, self.steps = meta["network"], state.steps_per_epoch
        self.rows_written = len(progress.history)  # the rows of the run before a resume
        self.warned = False

    def on_train_epoch_end(self, run_context):
        params = run_context.original_args()
        done = self.clock.done
        if done % self.steps:
            return  # MindSpore calls this after a stop in the middle of an epoch, and per sink
        epoch = done // self.steps
        record = {"global_step": done, "checkpoint": None, "top1": None, "top5": None}
        watching = self.eval_interval and epoch % self.eval_interval == 0
        if watching:
            with self.eval_weights():
                result = self.model.eval(self.eval_data, dataset_sink_mode=False)
            record["top1"], record["top5"] = float(result["Top_1_Acc"]), float(result["Top_5_Acc"])
        if self.eval_interval:
            self.append_metrics(eval_row=(epoch, done, record) if watching else None)
        if self.save and (epoch % self.save_every == 0 or epoch == self.total_epochs):
            record["checkpoint"] = checkpoint_name(self.network, epoch, self.steps)
            self.save_weights(params.train_network, record["checkpoint"], epoch, done)
        best = self.state.best()
        new_best = watching and (best is None or record["top1"] > best[1])
        if new_best:
            self.save_weights(params.train_network, pending_best_name(self.network, epoch),
                              epoch, done)
        if watching:
            print(f"eval: epoch {epoch}, top-1 {record['top1']:.4f}, top-5 {record['top5']:.4f}"
                  + (f" (best so far: {best_name(self.network)})" if new_best else ""),
                  flush=True)
        self.commit(epoch, record, new_best)
        if self.eval_interval:
            self.plot()

    def save_stop(self, train_network) -> str:
        """Save the checkpoint a stop by signal continues from, whatever save_every says, and
        commit it as the run's stop; returns its path."""
        done = self.clock.done
        epoch, step = epoch_and_step(done, self.steps)
        name = checkpoint_name(self.network, epoch, step)
        if self.eval_interval:
            self.append_metrics()
        self.save_weights(train_network, name, epoch, done)
        old = self.state.interrupt
        self.state.interrupt = {"global_step": done, "checkpoint": name}
        self.state.commit(self.folder)
        if old and old["checkpoint"] != name:
            self.remove(old["checkpoint"])
        return os.path.join(self.folder, name)

    def saved_at(self, done: int) -> str:
        """The path of the checkpoint the state has at global step ``done``, or ''."""
        for step, name in self.state.checkpoints():
            if step == done:
                return os.path.join(self.folder, name)
        return ""

    def save_weights(self, network, name, epoch, done):
        # The train network holds the optimizer's step counter (global_step) itself.
        save_atomically(network, os.path.join(self.folder, name),
                        {**self.meta, "epoch_num": epoch, "step_num": done})

    def commit(self, epoch, record, new_best):
        """The commit point: the state names this epoch's files from now on."""
        before = set(self.state.kept(self.keep))
        old_stop = self.state.interrupt
        self.state.epochs[epoch] = record
        self.state.interrupt = None  # an epoch's end supersedes a stop's checkpoint
        if new_best:
            self.state.best_file_epoch = epoch
        self.state.commit(self.folder)
        if new_best:
            os.replace(os.path.join(self.folder, pending_best_name(self.network, epoch)),
                       os.path.join(self.folder, best_name(self.network)))
        kept = set(self.state.kept(self.keep))
        for name in (before | ({old_stop["checkpoint"]} if old_stop else set())) - kept:
            self.remove(name)

    def remove(self, name):
        path = os.path.join(self.folder, name)
        if os.path.exists(path):
            os.remove(path)

    def append_metrics(self, eval_row=None):
        rows = [["step", e, s, f"{loss:.6g}", f"{lr:.6g}", "", ""]
                for e, s, loss, lr in self.progress.history[self.rows_written:]]
        if eval_row:
            epoch, done, record = eval_row
            rows.append(["eval", epoch, done, "", "", f"{record['top1']:.6g}",
                         f"{record['top5']:.6g}"])
        write_metrics(self.folder, rows, append=True)
        self.rows_written = len(self.progress.history)

    def plot(self):
        """curves.png: loss and lr per step, top-1/top-5 per eval. matplotlib is optional."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            if not self.warned:
                print("curves: matplotlib is not installed, so no curves.png "
                      "(pip install matplotlib); metrics.csv has the numbers", flush=True)
                self.warned = True
            return
        history = np.array([(s, loss, r) for _, s, loss, r in self.progress.history] or [(0, 0, 0)])
        evals = np.array([(e, r["top1"], r["top5"]) for e, r in sorted(self.state.epochs.items())
                          if r.get("top1") is not None])
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        axes[0].plot(history[:, 0], history[:, 1])
        axes[0].set(title="training loss", xlabel="step")
        axes[1].plot(history[:, 0], history[:, 2])
        axes[1].set(title="learning rate", xlabel="step")
        if len(evals):
            axes[2].plot(evals[:, 0], evals[:, 1], "o-", label="top-1")
            axes[2].plot(evals[:, 0], evals[:, 2], "s-", label="top-5")
            axes[2].legend()
        axes[2].set(title="validation accuracy", xlabel="epoch")
        fig.tight_layout()
        fig.savefig(os.path.join(self.folder, "curves.png"), dpi=80)
        plt.close(fig)


class SignalStop(Callback):
    """SIGTERM and SIGINT (a cluster's pre-emption, Ctrl-C) end the run cleanly: at the next sync
    point (StepClock: right after the current step in one process, within ``log_interval`` steps
    in a distributed run, at the sink's end in sink mode) rank 0 saves a checkpoint
    ``--resume auto`` continues from, and training stops; ``signum`` then tells the trainer which
    signal it was. A stop on an epoch's last step lets the epoch end as usual first (its eval and
    checkpoint). A second signal ends the process at once. ``agree`` (distributed runs) turns the
    local flag into one all ranks share, at the sync points every rank reaches, so every rank
    stops after the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, clock: StepClock, recorder=None, agree=None):
        super().__init__()
        self.clock, self.recorder, self.agree = clock, recorder, agree
        self.signum, self.at_epoch_end = 0, False
        self.saved, self.save_seconds = "", 0.0
        self.previous = {}

    def install(self):
        for signum in self.SIGNALS:
            self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def restore(self):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def handle(self, signum, _frame):
        if self.signum:  # the second signal: no more waiting
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signum = signum
        if self.agree is None:
            self.clock.urgent = True  # one process: the step under way is a sync point

    def on_train_step_end(self, run_context):
        if not self.clock.sync:
            return
        requested = self.agree(self.signum) if self.agree else self.signum
        if not requested:
            return
        self.signum = self.signum or requested  # a rank that got no signal stops with the rest
        if self.clock.done % self.clock.steps == 0:
            self.at_epoch_end = True  # stop after the epoch's own end: its eval and checkpoint
            return
        self.stop(run_context)

    def on_train_epoch_end(self, run_context):
        if self.at_epoch_end:
            self.stop(run_context)

    def stop(self, run_context):
        if self.recorder is not None and not self.recorder.saved_at(self.clock.done):
            started = time.time()
            self.saved = self.recorder.save_stop(run_context.original_args().train_network)
            self.save_seconds = time.time() - started
        elif self.recorder is not None:
            self.saved = self.recorder.saved_at(self.clock.done)
        run_context.request_stop()
