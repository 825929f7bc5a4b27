"""A run's own state, without training: what run_state.json says as of a step, how a folder is
rolled back to the checkpoint a run resumes from, which checkpoints a resume finds, and the
lock that keeps a second run out of a folder in use."""
import os

import pytest

from src.errors import UserError
from src.model_utils.config import get_config
from src.training.run_state import (
    RunState,
    Start,
    checkpoint_name,
    prepare_folder,
    read_metrics,
    resume_candidates,
    run_lock,
    truncate_metrics,
    write_metrics,
)
from tests.helpers import saved_checkpoint

NET = "mobilenet_v1_025"


def five_epochs(keep_every=True):
    """A run of 5 epochs of 4 steps: checkpoints every epoch, evals peaking at epoch 2."""
    state = RunState(NET, steps_per_epoch=4)
    for epoch, top1 in zip(range(1, 6), (0.5, 0.9, 0.7, 0.9, 0.8), strict=True):
        state.epochs[epoch] = {"global_step": 4 * epoch, "top1": top1, "top5": 1.0,
                               "checkpoint": checkpoint_name(NET, epoch, 4) if keep_every else None}
    state.best_file_epoch = 2
    return state


def test_the_state_as_of_a_step():
    state = five_epochs()
    assert state.best() == (2, 0.9, 1.0)  # the first of the equal best
    assert state.kept(2) == [checkpoint_name(NET, 4, 4), checkpoint_name(NET, 5, 4)]
    early = state.as_of(9)  # resumed in epoch 3: epochs 1 and 2 ended
    assert sorted(early.epochs) == [1, 2] and early.kept(2) == [
        checkpoint_name(NET, 1, 4), checkpoint_name(NET, 2, 4)]
    assert sorted(state.epochs) == [1, 2, 3, 4, 5]  # as_of returns a copy
    # A stop's checkpoint counts only for the run that resumes from it.
    state.interrupt = {"global_step": 22, "checkpoint": checkpoint_name(NET, 6, 2)}
    assert state.checkpoints()[-1] == (22, checkpoint_name(NET, 6, 2))
    assert state.as_of(22).interrupt and state.as_of(20).interrupt is None


def test_commit_and_load_round_trip(tmp_path):
    state = five_epochs()
    state.commit(str(tmp_path))
    assert os.listdir(tmp_path) == ["run_state.json"]  # no partial left
    assert RunState.load(str(tmp_path)) == state
    assert RunState.load(str(tmp_path / "no_such_folder")) is None


def test_metrics_keep_what_happened_before_the_resumed_step(tmp_path):
    rows = [["step", (s - 1) // 4 + 1, s, "1.0", "0.1", "", ""] for s in range(1, 13)]
    rows += [["eval", e, 4 * e, "", "", "0.5", "1"] for e in (1, 2, 3)]
    write_metrics(str(tmp_path), rows, append=False)
    kept = truncate_metrics(str(tmp_path), 6, 4)  # resumed after step 6: epoch 1 ended
    assert [int(r["global_step"]) for r in kept if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert [int(r["epoch"]) for r in kept if r["kind"] == "eval"] == [1]
    assert read_metrics(str(tmp_path)) == kept


def test_resume_finds_checkpoints_by_name_or_state_and_never_best(tmp_path):
    for name in (checkpoint_name(NET, 9, 4), checkpoint_name(NET, 10, 4),
                 checkpoint_name(NET, 10, 2), f"{NET}-best.ckpt", "other_net-11_4.ckpt",
                 f".partial-{NET}-11_4.ckpt"):
        (tmp_path / name).write_bytes(b"x")
    # A folder of an older version: names ordered by epoch and step (10 before 9 by name).
    found = [os.path.basename(p) for p in resume_candidates(str(tmp_path), NET)]
    assert found == [checkpoint_name(NET, 10, 4), checkpoint_name(NET, 10, 2),
                     checkpoint_name(NET, 9, 4)]
    # With a state, only what it committed (a later file is an uncommitted save).
    state = RunState(NET, 4, {9: {"global_step": 36, "checkpoint": checkpoint_name(NET, 9, 4),
                                  "top1": None, "top5": None}})
    state.commit(str(tmp_path))
    assert [os.path.basename(p) for p in resume_candidates(str(tmp_path), NET)] == [
        checkpoint_name(NET, 9, 4)]


def test_a_folder_rolls_back_to_the_resumed_checkpoint(tmp_path):
    """Killed in epoch 5 after epoch 4's best had been committed but with epoch 4's checkpoint
    cut off: resumed from epoch 3, the state, metrics, best checkpoint and later files are those
    of a run that stopped after epoch 3."""
    folder = str(tmp_path)
    state = five_epochs()
    state.best_file_epoch = 4
    del state.epochs[5]
    for epoch in range(1, 5):
        saved_checkpoint(tmp_path / checkpoint_name(NET, epoch, 4), NET, epoch=epoch, steps=4)
    saved_checkpoint(tmp_path / f"{NET}-best.ckpt", NET, epoch=4, steps=4)
    (tmp_path / f".partial-{NET}-5_4.ckpt").write_bytes(b"cut")
    state.commit(folder)
    write_metrics(folder, [["step", 1, s, "1", "0.1", "", ""] for s in range(1, 17)], append=False)
    config = get_config(["--network", NET, "--resume", "auto", "--output_path", folder])
    start = Start(str(tmp_path / checkpoint_name(NET, 3, 4)), {}, {})
    rolled, history = prepare_folder(config, folder, start, 12, 4)
    assert sorted(rolled.epochs) == [1, 2, 3] and rolled.best() == (2, 0.9, 1.0)
    assert RunState.load(folder) == rolled
    assert len(history) == 12 and history[-1][1] == 12
    assert sorted(os.listdir(tmp_path)) == sorted(
        [checkpoint_name(NET, e, 4) for e in (1, 2, 3)] +
        [f"{NET}-best.ckpt", "metrics.csv", "run_state.json"])
    # The best checkpoint holds epoch 2's weights again (its own checkpoint's bytes).
    assert (tmp_path / f"{NET}-best.ckpt").read_bytes() == \
        (tmp_path / checkpoint_name(NET, 2, 4)).read_bytes()
    assert rolled.best_file_epoch == 2


def test_a_new_run_refuses_a_folder_with_checkpoints(tmp_path):
    saved_checkpoint(tmp_path / checkpoint_name(NET, 1, 4), NET)
    config = get_config(["--network", NET, "--output_path", str(tmp_path)])
    with pytest.raises(UserError, match="already holds checkpoints of an earlier run"):
        prepare_folder(config, str(tmp_path), Start(), 0, 4)


def test_one_run_at_a_time_and_a_dead_runs_lock_is_taken_over(tmp_path, capsys):
    folder = str(tmp_path)
    with run_lock(folder):
        with pytest.raises(UserError, match=rf"in use by another run \(pid {os.getpid()} on "):
            with run_lock(folder):
                pass
    # A clean end leaves nothing to take over.
    with run_lock(folder):
        pass
    assert "took over" not in capsys.readouterr().out
    # A run killed with the lock held leaves its line in the file; the flock itself died with it.
    (tmp_path / ".lock").write_text("pid 99999 on host, started 2026-01-01 00:00:00")
    with run_lock(folder):
        pass
    assert "took over the lock of a run that ended without releasing it (pid 99999" in \
        capsys.readouterr().out
