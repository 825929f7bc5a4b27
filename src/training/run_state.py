"""A run's own state in its checkpoint folder: what a resume needs beyond the weights.

``run_state.json`` records, for each epoch that ended, the global step, the checkpoint saved
(if any) and the eval's top-1/top-5 (if any), plus the checkpoint a stop by signal saved in
the middle of an epoch. It is rewritten atomically after every save, and that rewrite is the
commit point: a file the state does not name (a checkpoint or best checkpoint saved just before
a crash) does not exist for a resume. From the state as of any step follow the best top-1 and
its epoch, the checkpoints ``keep_checkpoint_max`` keeps and the metrics.csv rows, so a resumed
run ends with exactly the best checkpoint, kept files and metrics of an uninterrupted one.

The folder's life is here too: one run at a time holds it (``run_lock``), a run finds the
checkpoints it can resume (``resume_candidates``) and, where it starts, makes the folder match
(``prepare_folder``: uncommitted saves removed, later checkpoints and metrics rolled back).
"""
import contextlib
import csv
import dataclasses
import fcntl
import glob
import json
import os
import re
import shutil
import socket
import time

from src.checkpoint import PARTIAL_PREFIX
from src.errors import UserError

STATE_FILE = "run_state.json"
METRICS_FILE = "metrics.csv"
METRICS_HEADER = ["kind", "epoch", "global_step", "loss", "lr", "top1", "top5"]
PENDING_PREFIX = ".pending-"  # a best checkpoint waiting for the commit


def checkpoint_name(network: str, epoch: int, step: int) -> str:
    """The zoo's name: ``{network}-{epoch}_{step}.ckpt`` (step: the epoch's steps, or the step
    in the epoch a stop saved at)."""
    return f"{network}-{epoch}_{step}.ckpt"


def best_name(network: str) -> str:
    return f"{network}-best.ckpt"


def pending_best_name(network: str, epoch: int) -> str:
    """Where a new best checkpoint waits for the commit (hidden, so no glob sees it)."""
    return f"{PENDING_PREFIX}{network}-best-{epoch}.ckpt"


def parse_checkpoint_name(network: str, name: str):
    """(epoch, step) of one of ``network``'s epoch checkpoints, None for anything else
    (``-best.ckpt``, another network's, a hidden partial)."""
    match = re.fullmatch(re.escape(network) + r"-(\d+)_(\d+)\.ckpt", name)
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclasses.dataclass
class RunState:
    """What the run has done, as its folder records it (see the module's docstring)."""
    network: str
    steps_per_epoch: int
    # epoch -> {global_step, checkpoint, top1, top5}
    epochs: dict = dataclasses.field(default_factory=dict)
    interrupt: dict = None  # {"global_step", "checkpoint"}: a mid-epoch save by a stop
    best_file_epoch: int = None  # the epoch whose weights {network}-best.ckpt holds

    @classmethod
    def load(cls, folder: str):
        """The state in ``folder``; None when it has none (a new run, or one of an older
        version, whose checkpoints are then found by their names)."""
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        raw["epochs"] = {int(e): record for e, record in raw["epochs"].items()}
        return cls(**raw)

    def commit(self, folder: str) -> None:
        """Write the state so that it is always either the old one or the new one."""
        path = os.path.join(folder, STATE_FILE)
        tmp = os.path.join(folder, "." + STATE_FILE + ".partial")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def as_of(self, global_step: int) -> "RunState":
        """The state of a run resumed at ``global_step``: the epochs that ended by then, and the
        stop's checkpoint only if it is the one resumed from."""
        ended = global_step // self.steps_per_epoch
        interrupt = self.interrupt if self.interrupt and \
            self.interrupt["global_step"] == global_step else None
        return dataclasses.replace(self, epochs={e: dict(r) for e, r in self.epochs.items()
                                                 if e <= ended}, interrupt=interrupt)

    def checkpoints(self) -> list:
        """[(global_step, name)] of the checkpoints the state names, oldest first."""
        found = [(r["global_step"], r["checkpoint"]) for r in self.epochs.values()
                 if r.get("checkpoint")]
        if self.interrupt:
            found.append((self.interrupt["global_step"], self.interrupt["checkpoint"]))
        return sorted(found)

    def kept(self, keep: int) -> list:
        """The epoch checkpoints keep_checkpoint_max keeps: the newest ``keep``, and the stop's."""
        epoch_files = [r["checkpoint"] for _, r in sorted(self.epochs.items())
                       if r.get("checkpoint")][-keep:]
        return epoch_files + ([self.interrupt["checkpoint"]] if self.interrupt else [])

    def best(self):
        """(epoch, top1, top5) of the first eval with the highest top-1, or None."""
        evals = [(e, r["top1"], r["top5"]) for e, r in sorted(self.epochs.items())
                 if r.get("top1") is not None]
        return max(evals, key=lambda row: (row[1], -row[0])) if evals else None


def read_metrics(folder: str) -> list:
    """metrics.csv's rows as dicts ([] when there is none)."""
    path = os.path.join(folder, METRICS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_metrics(folder: str, rows: list, append: bool) -> None:
    """Append ``rows`` (lists in METRICS_HEADER's order) to metrics.csv, or rewrite it with them,
    flushed to disk before the state that counts them is committed."""
    path = os.path.join(folder, METRICS_FILE)
    new = not append or not os.path.isfile(path)
    with open(path, "w" if new else "a", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        if new:
            out.writerow(METRICS_HEADER)
        out.writerows(rows)
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(folder: str, global_step: int, steps_per_epoch: int) -> list:
    """Keep the metrics.csv rows of a run resumed at ``global_step`` (steps up to it, evals of
    the epochs that ended by then) and return them; the rest happened after the checkpoint."""
    ended = global_step // steps_per_epoch
    rows = [row for row in read_metrics(folder)
            if (row["kind"] == "step" and int(row["global_step"]) <= global_step)
            or (row["kind"] == "eval" and int(row["epoch"]) <= ended)]
    if os.path.isfile(os.path.join(folder, METRICS_FILE)):
        write_metrics(folder, [[row[k] for k in METRICS_HEADER] for row in rows], append=False)
    return rows


# ---- the folder's life: one run at a time, what a run resumes, the folder where it starts

@contextlib.contextmanager
def run_lock(folder: str):
    """Hold the run folder for this run: a second run on it is refused in one line naming the
    first one's process. The lock is an flock, which the system releases when a process dies
    however it dies, so a killed run's lock file is taken over (and said so)."""
    path = os.path.join(folder, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "a process"
        os.close(fd)
        raise UserError(f"the output folder is in use by another run ({holder})", folder,
                        "wait for it to end, or give another --output_path") from None
    left = os.read(fd, 4096).decode(errors="replace").strip()
    if left:
        print(f"lock: took over the lock of a run that ended without releasing it ({left})",
              flush=True)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
    try:
        yield
    finally:
        os.ftruncate(fd, 0)  # a clean end leaves nothing to take over
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@dataclasses.dataclass
class Start:
    """Where a run starts: nothing (epoch 1), or a checkpoint's weights and train state."""
    path: str = ""
    params: dict = None
    meta: dict = dataclasses.field(default_factory=dict)

    def global_step(self, steps_per_epoch: int) -> int:
        """Steps done before this run: the step the checkpoint records (``step_num``), else the
        optimizer's counter, else (a checkpoint of an older version) its epochs. The two differ
        after a dynamic loss scale skipped steps, which the optimizer does not count."""
        if not self.path:
            return 0
        return int(self.meta.get("step_num", self.meta.get(
            "global_step", self.meta.get("epoch_num", 0) * steps_per_epoch)))


def resume_candidates(folder: str, network: str) -> list:
    """The run's checkpoints, newest first, found by their recorded epoch and step without
    loading a tensor: the run state's, or (a folder of an older version) the names
    ``{network}-{epoch}_{step}.ckpt``; never ``-best.ckpt``."""
    state = RunState.load(folder) if os.path.isdir(folder) else None
    if state is not None:
        names = [name for _, name in reversed(state.checkpoints())]
    else:
        found = [(parse_checkpoint_name(network, n), n) for n in
                 (os.listdir(folder) if os.path.isdir(folder) else [])]
        names = [n for position, n in sorted((f for f in found if f[0]), reverse=True)]
    return [os.path.join(folder, n) for n in names]


def prepare_folder(config, folder: str, start: Start, step: int, steps: int) -> tuple:
    """(run state, metrics history) of the run as of ``step``, with the folder made to match:
    saves a crash cut short removed, a best checkpoint whose commit happened put in place, the
    state, metrics.csv, best checkpoint and later checkpoints rolled back to the resumed
    checkpoint. A new run refuses a folder that holds another run's checkpoints."""
    state = RunState.load(folder)
    if state is not None and state.best_file_epoch is not None:  # a crash after the commit
        pending = os.path.join(folder, pending_best_name(config.network, state.best_file_epoch))
        if os.path.exists(pending):
            os.replace(pending, os.path.join(folder, best_name(config.network)))
    for stale in glob.glob(os.path.join(folder, ".*")):  # saves the commit never named
        if os.path.basename(stale).startswith((PARTIAL_PREFIX, PENDING_PREFIX)):
            os.remove(stale)
            print(f"removed {stale}: a save that a crash cut short", flush=True)
    here = os.path.dirname(os.path.abspath(start.path)) == folder if start.path else False
    if not here:
        if config.save_checkpoint and resume_candidates(folder, config.network):
            raise UserError("the output folder already holds checkpoints of an earlier run",
                            folder, "give another --output_path, or --resume one of those "
                            "checkpoints")
        fresh = RunState(config.network, steps)
        fresh.commit(folder)
        truncate_metrics(folder, -1, steps)
        return fresh, []
    state = (state or RunState(config.network, steps)).as_of(step)
    for name in os.listdir(folder):  # checkpoints saved after the one resumed from
        position = parse_checkpoint_name(config.network, name)
        if position and (position[0] - 1) * steps + position[1] > step:
            os.remove(os.path.join(folder, name))
    best = state.best()
    if state.best_file_epoch != (best[0] if best else None):
        restore_best(folder, config.network, state, best)
    state.commit(folder)
    rows = truncate_metrics(folder, step, steps)
    history = [(int(r["epoch"]), int(r["global_step"]), float(r["loss"]), float(r["lr"]))
               for r in rows if r["kind"] == "step"]
    return state, history


def restore_best(folder, network, state, best) -> None:
    """The best checkpoint of a run rolled back past its best epoch: that epoch's own checkpoint
    if it is still there, else none (the next better eval writes one)."""
    path = os.path.join(folder, best_name(network))
    kept = dict((step, name) for step, name in state.checkpoints())
    source = kept.get(state.epochs[best[0]]["global_step"]) if best else None
    if source:
        shutil.copyfile(os.path.join(folder, source), path)
        state.best_file_epoch = best[0]
    else:
        if os.path.exists(path):
            os.remove(path)
        state.best_file_epoch = None
        if best:
            print(f"warning: the best checkpoint (epoch {best[0]}) was not kept; the next "
                  f"better eval writes {path}", flush=True)
