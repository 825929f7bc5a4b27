"""The cross-rank plumbing of a data-parallel run, on MindSpore's own communication: joining
the group, every rank's value of something, the step every rank starts at, rank 0's state on
every rank. The only module that calls the communication ops.

MindSpore's CPU collectives sum floats only: every exchange here is one all-reduce of a float32
vector, in which each rank fills its own slots (or only rank 0 fills it).
"""
import os

import mindspore as ms
import numpy as np
from mindspore import ops

from src.errors import UserError
from src.training.optim import state_of


def join_group() -> tuple:
    """Join the communication group msrun or the rank table describes, in data-parallel mode
    with gradients averaged: (rank, group size)."""
    from mindspore.communication import get_group_size, get_rank, init
    _die_with_parent()  # before init(): msrun's scheduler runs this too, inside init()
    try:
        init()
    except RuntimeError as err:
        scheduler = os.environ.get("MS_SCHED_HOST"), os.environ.get("MS_SCHED_PORT")
        if all(scheduler):  # msrun's: the other nodes or the scheduler never answered
            raise UserError("could not join the communication group of the scheduler at "
                            f"{scheduler[0]}:{scheduler[1]}", "MASTER_ADDR:MASTER_PORT",
                            "start every node of the job, each with node 0's address and the "
                            "same free port") from err
        raise UserError("could not join the communication group", "--is_distributed",
                        "launch with scripts/run_distribute_train*.sh or msrun, or drop "
                        "--is_distributed") from err
    rank, size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=size)
    return rank, size


def _die_with_parent() -> None:
    """A worker ends when the launcher that started it does (Linux), so killing a launch script
    or msrun leaves no training process behind."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def agree_on_step(step: int, rank: int, size: int) -> tuple:
    """(the step every rank starts at, whether ranks take rank 0's state): rank 0's step. A rank
    whose own folder holds no checkpoint (nodes without shared storage: only rank 0 writes)
    takes rank 0's weights and train state (``broadcast_state``); a rank that resumes its own
    checkpoint at another step than rank 0's is refused (two different runs' checkpoints), or
    the one ahead would wait for the others forever at its first step past their end."""
    steps = gather_over_ranks(step, rank, size)
    apart = [s for s in steps if s and s != steps[0]]
    if apart:
        raise UserError(f"the ranks would resume at different steps ({min(steps)} to "
                        f"{max(steps)})", "--resume",
                        "give every rank the same --output_path on a shared file system, or "
                        "one --resume checkpoint")
    return steps[0], any(s != steps[0] for s in steps)


def broadcast_state(net, opt, extra: list, step: int, rank: int, size: int) -> None:
    """Rank 0's weights, BatchNorm statistics, momentum and step on every rank: one all-reduce
    of a vector that only rank 0 fills (MindSpore's CPU collectives sum floats)."""
    params = list(net.get_parameters()) + state_of(opt, net) + list(extra)
    sizes = gather_over_ranks(sum(int(np.prod(p.shape)) for p in params), rank, size)
    if len(set(sizes)) > 1:
        raise UserError(f"the ranks built networks of different sizes ({min(sizes):,} to "
                        f"{max(sizes):,} values) to take rank 0's checkpoint into", "--resume",
                        "give every rank the same flags (network, classes, options)")
    flat = np.concatenate([p.asnumpy().astype(np.float32).ravel() for p in params]) \
        if rank == 0 else np.zeros(sizes[0], np.float32)
    flat = ops.AllReduce()(ms.Tensor(flat)).asnumpy()
    offset = 0
    for param in params:
        count = int(np.prod(param.shape))
        param.set_data(ms.Tensor(flat[offset:offset + count].reshape(param.shape),
                                 param.dtype))
        offset += count
    opt.global_step.set_data(ms.Tensor([step], ms.int32))
    if rank:
        print(f"resume: rank {rank} took rank 0's weights and train state at global step "
              f"{step} (its own folder had no checkpoint: no shared storage)", flush=True)


def wait_for_every_rank(rank: int, size: int) -> None:
    """Return when every rank has come here (one all-reduce)."""
    gather_over_ranks(1, rank, size)


def gather_over_ranks(value: int, rank: int, size: int) -> list:
    """Every rank's ``value``, in rank order: each rank puts its own in its slot of a zero
    vector and one all-reduce sums them (MindSpore's CPU AllReduce only sums, and only floats;
    float32 holds every integer below 2**24 exactly)."""
    slots = np.zeros(size, np.float32)
    slots[rank] = value
    return [int(v) for v in ops.AllReduce()(ms.Tensor(slots)).asnumpy()]


def any_rank_signal(rank: int, size: int):
    """A function ``signal number or 0 -> the largest over all ranks``, for SignalStop."""
    return lambda signum: max(gather_over_ranks(signum, rank, size))
