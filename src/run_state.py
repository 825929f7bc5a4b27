"""A run's own state in its checkpoint folder: what a resume needs beyond the weights.

``run_state.json`` records, for each epoch that ended, the global step, the checkpoint saved
(if any) and the eval's top-1/top-5 (if any), plus the checkpoint a stop by signal saved in
the middle of an epoch. It is rewritten atomically after every save, and that rewrite is the
commit point: a file the state does not name (a checkpoint or best checkpoint saved just before
a crash) does not exist for a resume. From the state as of any step follow the best top-1 and
its epoch, the checkpoints ``keep_checkpoint_max`` keeps and the metrics.csv rows, so a resumed
run ends with exactly the best checkpoint, kept files and metrics of an uninterrupted one.
"""
import csv
import dataclasses
import json
import os
import re

STATE_FILE = "run_state.json"
METRICS_FILE = "metrics.csv"
METRICS_HEADER = ["kind", "epoch", "global_step", "loss", "lr", "top1", "top5"]


def checkpoint_name(network: str, epoch: int, step: int) -> str:
    """The zoo's name: ``{network}-{epoch}_{step}.ckpt`` (step: the epoch's steps, or the step
    in the epoch a stop saved at)."""
    return f"{network}-{epoch}_{step}.ckpt"


def best_name(network: str) -> str:
    return f"{network}-best.ckpt"


def pending_best_name(network: str, epoch: int) -> str:
    """Where a new best checkpoint waits for the commit (hidden, so no glob sees it)."""
    return f".pending-{network}-best-{epoch}.ckpt"


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
