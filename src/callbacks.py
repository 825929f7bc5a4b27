"""Training callbacks: progress lines, the NaN/Inf guard, the run's record (eval, metrics,
checkpoints, best, run state, curves), and stopping on SIGTERM/SIGINT.

Every step and epoch number comes from the optimizer's own step counter, so it is right after a
resume too, also one that starts in the middle of an epoch.
"""
import os
import signal
import time

import numpy as np
from mindspore.train import Callback

from src.checkpoint import save_atomically
from src.errors import UserError
from src.run_state import (best_name, checkpoint_name, pending_best_name, write_metrics)


def step_loss(params) -> float:
    """The loss of the step just taken, from a callback's run-context arguments."""
    loss = params.net_outputs[0] if isinstance(params.net_outputs, (tuple, list)) \
        else params.net_outputs
    return float(np.mean(loss.asnumpy()))


def global_step(optimizer) -> int:
    """How many steps the optimizer has taken (its own counter, so right after a resume too)."""
    return int(optimizer.global_step.asnumpy().reshape(-1)[0])


def lr_schedule(optimizer) -> np.ndarray:
    """The optimizer's per-step lr array (the step lr is entry global_step - 1)."""
    return optimizer.learning_rate.learning_rate.asnumpy()


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


class ProgressMonitor(Callback):
    """One progress line at each epoch's first step (and the run's first) and every ``interval``
    steps, the run's only loss line:

    ``epoch: E step: S, loss: L, loss(smoothed): M, lr: X, images/s: R, eta: [Dd ]HH:MM:SS``.
    The lr is read from the optimizer's own step counter and lr array, so after a resume it is
    what training really used. Plain text, no terminal control codes, so a log file reads the
    same. It also keeps every step's (epoch, global step, loss, lr) for metrics.csv and the
    curves (``history``, which starts with the rows of the run before a resume).
    """

    def __init__(self, optimizer, steps_per_epoch: int, interval: int, total_epochs: int,
                 images_per_step: int, history=()):
        super().__init__()
        self.optimizer, self.steps, self.interval = optimizer, steps_per_epoch, interval
        self.lrs = lr_schedule(optimizer)  # fixed during training: read once, not every step
        self.total_steps = total_epochs * steps_per_epoch
        self.images_per_step = images_per_step
        self.smoothed, self.history = None, list(history)
        self.last_time, self.last_step, self.step_times = None, None, []

    def on_train_epoch_begin(self, run_context):
        self.last_time = None  # a step time must not span the eval and the save between epochs

    def on_train_step_end(self, run_context):
        params = run_context.original_args()
        now = time.time()
        done = global_step(self.optimizer)
        epoch, step_in_epoch = epoch_and_step(done, self.steps)
        lr = float(self.lrs[done - 1])
        loss = step_loss(params)
        first = self.smoothed is None
        self.smoothed = loss if first else 0.9 * self.smoothed + 0.1 * loss
        self.history.append((epoch, done, loss, lr))
        if self.last_time is not None:
            self.step_times.append((now - self.last_time) / max(1, done - self.last_step))
        self.last_time, self.last_step = now, done
        if not first and step_in_epoch != 1 and step_in_epoch % self.interval:
            return
        recent = self.step_times[-self.interval:]
        rate, eta = "?", "?"
        if recent:
            step_time = float(np.median(recent))
            rate = f"{self.images_per_step / step_time:.1f}"
            eta = format_duration(step_time * (self.total_steps - done))
        print(f"epoch: {epoch} step: {step_in_epoch}, loss: {loss:.6f}, "
              f"loss(smoothed): {self.smoothed:.4f}, lr: {lr:.8f}, images/s: {rate}, "
              f"eta: {eta}", flush=True)


class NonFiniteLossGuard(Callback):
    """Stops training on the step whose loss or weights turn NaN or Inf, before anything saves it.

    Placed before the run's record, it raises first, so the bad weights are never written.
    Besides the loss it checks the stem conv's weights: MindSpore's CPU softmax cross entropy
    returns a finite ln(C) for NaN logits, so NaN weights can hide behind a finite loss
    (measured on 2.10); a NaN anywhere reaches the stem's gradient on the same step.
    """

    def __init__(self, optimizer, steps_per_epoch: int, sentinel):
        super().__init__()
        self.optimizer, self.steps, self.sentinel = optimizer, steps_per_epoch, sentinel

    def on_train_step_end(self, run_context):
        value = step_loss(run_context.original_args())
        if np.isfinite(value) and np.isfinite(self.sentinel.asnumpy()).all():
            return
        done = global_step(self.optimizer)
        epoch, step = epoch_and_step(max(done, 1), self.steps)
        lr = float(lr_schedule(self.optimizer)[max(done - 1, 0)])
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
    commit says (src/run_state.py). ``save_stop`` saves the checkpoint a stop by signal needs.

    Checkpoints are named ``{network}-{epoch}_{step}.ckpt`` (ModelCheckpoint would rename to
    ``{network}_1-...`` in a folder that already has some, and writes in place) and carry
    ``meta`` (the network record), the epoch and the global step (and the optimizer's state).
    """

    def __init__(self, folder, state, meta, progress, optimizer, total_epochs, *, save=True,
                 save_every=1, keep=10, model=None, eval_data=None, eval_interval=0):
        super().__init__()
        self.folder, self.state, self.meta, self.progress = folder, state, meta, progress
        self.optimizer, self.total_epochs, self.save = optimizer, total_epochs, save
        self.save_every, self.keep = save_every, keep
        self.model, self.eval_data, self.eval_interval = model, eval_data, eval_interval
        self.network, self.steps = meta["network"], state.steps_per_epoch
        self.rows_written = len(progress.history)  # the rows of the run before a resume
        self.warned = False

    def on_train_epoch_end(self, run_context):
        params = run_context.original_args()
        done = global_step(self.optimizer)
        if done % self.steps:
            return  # MindSpore calls this after a stop in the middle of an epoch too
        epoch = done // self.steps
        record = {"global_step": done, "checkpoint": None, "top1": None, "top5": None}
        watching = self.eval_interval and epoch % self.eval_interval == 0
        if watching:
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
        done = global_step(self.optimizer)
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
        history = np.array([(s, l, r) for _, s, l, r in self.progress.history] or [(0, 0, 0)])
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
    """SIGTERM and SIGINT (a cluster's pre-emption, Ctrl-C) end the run cleanly: the current step
    finishes, rank 0 saves a checkpoint ``--resume auto`` continues from, and training stops;
    ``signum`` then tells the trainer which signal it was. A stop on an epoch's last step lets
    the epoch end as usual first (its eval and checkpoint). A second signal ends the process at
    once. ``agree`` (distributed runs) turns the local flag into one all ranks share, so every
    rank stops after the same step. Test hook: ZOO_TEST_SIGNAL_AT_STEP=N sends this process a
    SIGTERM after global step N.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, optimizer, steps_per_epoch, recorder=None, agree=None):
        super().__init__()
        self.optimizer, self.steps = optimizer, steps_per_epoch
        self.recorder, self.agree = recorder, agree
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

    def on_train_step_end(self, run_context):
        if os.environ.get("ZOO_TEST_SIGNAL_AT_STEP") == str(global_step(self.optimizer)):
            os.kill(os.getpid(), signal.SIGTERM)  # test hook: a signal after this exact step
        requested = self.agree(self.signum) if self.agree else self.signum
        if not requested:
            return
        self.signum = self.signum or requested  # a rank that got no signal stops with the rest
        if global_step(self.optimizer) % self.steps == 0:
            self.at_epoch_end = True  # stop after the epoch's own end: its eval and checkpoint
            return
        self.stop(run_context)

    def on_train_epoch_end(self, run_context):
        if self.at_epoch_end:
            self.stop(run_context)

    def stop(self, run_context):
        if self.recorder is not None and not self.recorder.saved_at(
                global_step(self.optimizer)):
            started = time.time()
            self.saved = self.recorder.save_stop(run_context.original_args().train_network)
            self.save_seconds = time.time() - started
        elif self.recorder is not None:
            self.saved = self.recorder.saved_at(global_step(self.optimizer))
        run_context.request_stop()
