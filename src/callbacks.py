"""Training callbacks: progress lines, NaN/Inf guard, checkpoints, eval during training, curves."""
import csv
import os
import time

import numpy as np
from mindspore.train import Callback

from src.checkpoint import save_atomically
from src.errors import UserError


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
    """One progress line at each epoch's first step and every ``interval`` steps, the run's only
    loss line:

    ``epoch: E step: S, loss: L, loss(smoothed): M, lr: X, images/s: R, eta: [Dd ]HH:MM:SS``.
    The lr is read from the optimizer's own step counter and lr array, so after a resume it is
    what training really used. Plain text, no terminal control codes, so a log file reads the
    same. It also keeps every step's (loss, lr) for metrics.csv and the curves.
    """

    def __init__(self, optimizer, steps_per_epoch: int, interval: int, total_epochs: int,
                 images_per_step: int):
        super().__init__()
        self.optimizer, self.steps, self.interval = optimizer, steps_per_epoch, interval
        self.lrs = lr_schedule(optimizer)  # fixed during training: read once, not every step
        self.total_steps = total_epochs * steps_per_epoch
        self.images_per_step = images_per_step
        self.smoothed, self.history = None, []
        self.last_time, self.last_step, self.step_times = None, None, []

    def on_train_epoch_begin(self, run_context):
        self.last_time = None  # a step time must not span the eval and the save between epochs

    def on_train_step_end(self, run_context):
        params = run_context.original_args()
        now = time.time()
        used = global_step(self.optimizer) - 1
        lr = float(self.lrs[used])
        loss = step_loss(params)
        self.smoothed = loss if self.smoothed is None else 0.9 * self.smoothed + 0.1 * loss
        self.history.append((params.cur_epoch_num, used + 1, loss, lr))
        if self.last_time is not None:
            self.step_times.append((now - self.last_time) / max(1, used + 1 - self.last_step))
        self.last_time, self.last_step = now, used + 1
        step_in_epoch = (params.cur_step_num - 1) % self.steps + 1
        if step_in_epoch != 1 and step_in_epoch % self.interval:
            return
        recent = self.step_times[-self.interval:]
        rate, eta = "?", "?"
        if recent:
            step_time = float(np.median(recent))
            rate = f"{self.images_per_step / step_time:.1f}"
            eta = format_duration(step_time * (self.total_steps - used - 1))
        print(f"epoch: {params.cur_epoch_num} step: {step_in_epoch}, loss: {loss:.6f}, "
              f"loss(smoothed): {self.smoothed:.4f}, lr: {lr:.8f}, images/s: {rate}, "
              f"eta: {eta}", flush=True)


class NonFiniteLossGuard(Callback):
    """Stops training on the step whose loss or weights turn NaN or Inf, before anything saves it.

    Placed before the checkpoint callback, it raises first, so the bad weights are never written.
    Besides the loss it checks the stem conv's weights: MindSpore's CPU softmax cross entropy
    returns a finite ln(C) for NaN logits, so NaN weights can hide behind a finite loss
    (measured on 2.10); a NaN anywhere reaches the stem's gradient on the same step.
    """

    def __init__(self, optimizer, steps_per_epoch: int, sentinel):
        super().__init__()
        self.optimizer, self.steps, self.sentinel = optimizer, steps_per_epoch, sentinel

    def on_train_step_end(self, run_context):
        params = run_context.original_args()
        value = step_loss(params)
        if np.isfinite(value) and np.isfinite(self.sentinel.asnumpy()).all():
            return
        step = global_step(self.optimizer)
        lr = float(lr_schedule(self.optimizer)[max(step - 1, 0)])
        raise UserError(f"loss or weights not finite (loss {value}) at epoch {params.cur_epoch_num} step "
                        f"{(params.cur_step_num - 1) % self.steps + 1} (global step {step}), "
                        f"lr {lr:g}; stopped without saving this step's weights", "training",
                        "lower --lr_max (or --loss_scale with amp), then --resume the last "
                        "checkpoint")


class EpochCheckpoint(Callback):
    """Saves ``{network}-{epoch}_{steps}.ckpt`` every ``every`` epochs and after the last one,
    keeping the newest ``keep`` of this run; each carries ``meta`` and the epoch and step.

    Our own rather than ModelCheckpoint, which renames to ``{network}_1-…`` in a folder that
    already has checkpoints (a resumed run must continue the same names) and writes in place.
    """

    def __init__(self, network: str, directory: str, every: int, keep: int, meta: dict):
        super().__init__()
        self.network, self.directory, self.every, self.keep = network, directory, every, keep
        self.meta, self.saved = meta, []

    def on_train_epoch_end(self, run_context):
        params = run_context.original_args()
        epoch = params.cur_epoch_num
        if epoch % self.every and epoch != params.epoch_num:
            return
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory,
                            f"{self.network}-{epoch}_{params.batch_num}.ckpt")
        save_atomically(params.train_network, path,
                        {**self.meta, "epoch_num": epoch, "step_num": params.cur_step_num})
        self.saved.append(path)
        while len(self.saved) > self.keep:
            old = self.saved.pop(0)
            if os.path.exists(old):
                os.remove(old)


class EvalMonitor(Callback):
    """Every ``interval`` epochs: evaluate, log top-1/top-5, keep ``{network}-best.ckpt`` by top-1,
    and rewrite ``metrics.csv`` and ``curves.png`` in ``directory``.

    metrics.csv has one row per training step (kind "step": loss, lr) and per eval (kind "eval":
    top1, top5). curves.png needs matplotlib (optional): without it the run says so once.
    """

    def __init__(self, model, dataset, interval, directory, network, meta, progress):
        super().__init__()
        self.model, self.dataset, self.interval = model, dataset, interval
        self.directory, self.network, self.meta, self.progress = directory, network, meta, progress
        self.evals, self.best, self.best_epoch, self.warned = [], None, None, False
        self.best_path = os.path.join(directory, f"{network}-best.ckpt")

    def on_train_epoch_end(self, run_context):
        params = run_context.original_args()
        epoch = params.cur_epoch_num
        if self.interval and epoch % self.interval == 0:
            result = self.model.eval(self.dataset, dataset_sink_mode=False)
            top1, top5 = float(result["Top_1_Acc"]), float(result["Top_5_Acc"])
            self.evals.append((epoch, params.cur_step_num, top1, top5))
            line = f"eval: epoch {epoch}, top-1 {top1:.4f}, top-5 {top5:.4f}"
            if self.best is None or top1 > self.best:
                self.best, self.best_epoch = top1, epoch
                save_atomically(params.train_network, self.best_path,
                                {**self.meta, "epoch_num": epoch, "step_num": params.cur_step_num})
                line += f" (best so far: {self.network}-best.ckpt)"
            print(line, flush=True)
            self.write()

    def on_train_end(self, run_context):
        self.write()

    def write(self):
        os.makedirs(self.directory, exist_ok=True)
        with open(os.path.join(self.directory, "metrics.csv"), "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["kind", "epoch", "global_step", "loss", "lr", "top1", "top5"])
            for epoch, step, loss, lr in self.progress.history:
                out.writerow(["step", epoch, step, f"{loss:.6g}", f"{lr:.6g}", "", ""])
            for epoch, step, top1, top5 in self.evals:
                out.writerow(["eval", epoch, step, "", "", f"{top1:.6g}", f"{top5:.6g}"])
        self.plot()

    def plot(self):
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
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        axes[0].plot(history[:, 0], history[:, 1])
        axes[0].set(title="training loss", xlabel="step")
        axes[1].plot(history[:, 0], history[:, 2])
        axes[1].set(title="learning rate", xlabel="step")
        if self.evals:
            evals = np.array(self.evals)
            axes[2].plot(evals[:, 0], evals[:, 2], "o-", label="top-1")
            axes[2].plot(evals[:, 0], evals[:, 3], "s-", label="top-5")
            axes[2].legend()
        axes[2].set(title="validation accuracy", xlabel="epoch")
        fig.tight_layout()
        fig.savefig(os.path.join(self.directory, "curves.png"), dpi=80)
        plt.close(fig)
