"""Training: a config's network trained on its data, in a few named steps.

``train(config)`` takes the run folder (one run at a time), finds where the run starts (a
checkpoint to resume, agreed by every rank, or epoch 1), resolves the network record, builds the
data, the network and the optimizer with its schedule, restores the train state, makes the
callbacks, trains, and ends with what the run gave. It changes nothing in ``config``.
"""
import contextlib
import dataclasses
import fcntl
import glob
import os
import shutil
import socket
import sys
import time

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from mindspore.train import DynamicLossScaleManager, FixedLossScaleManager, Model

from src.callbacks import (
    NonFiniteLossGuard,
    ProgressMonitor,
    RunRecorder,
    SignalStop,
    StepClock,
    epoch_and_step,
)
from src.checkpoint import (
    OPTION_KEYS,
    NetworkRecord,
    load_weights,
    read_checkpoint,
    require_network,
    resolve,
)
from src.CrossEntropySmooth import CrossEntropySmooth
from src.dataset import check_layout, create_dataset, dataset_classes
from src.device import use_device
from src.errors import Stopped, UserError, writable_folder
from src.evaluator import eval_metrics
from src.lr_generator import get_lr
from src.models import options_of
from src.pretrained import checkpoint_for
from src.run_state import (
    RunState,
    best_name,
    parse_checkpoint_name,
    pending_best_name,
    truncate_metrics,
)


def check_recipe(config) -> None:
    """Combinations of keys that this device cannot train, refused before anything starts."""
    if config.loss_scale_type == "dynamic" and config.device_target == "CPU":
        raise UserError("a dynamic loss scale does not run on CPU (MindSpore 2.10 builds its "
                        "overflow-skipping train step for Ascend and GPU only)",
                        "--loss_scale_type", "give --loss_scale_type fixed on CPU")


def loss_scaling(config) -> tuple:
    """(the loss-scale manager, the optimizer's loss_scale). Fixed: the optimizer divides the
    gradients by the scale, every step is applied. Dynamic: the train step divides them itself
    and skips a step whose gradients overflow, so the optimizer's scale is 1."""
    if config.loss_scale_type == "dynamic":
        return DynamicLossScaleManager(config.loss_scale, config.scale_factor,
                                       config.scale_window), 1.0
    return FixedLossScaleManager(config.loss_scale, drop_overflow_update=False), \
        config.loss_scale


def set_up(config) -> tuple:
    """Seed, device, graph mode and (when distributed) the communication group: (rank, size)."""
    ms.set_seed(config.seed)
    np.random.seed(config.seed)
    ms.dataset.config.set_seed(config.seed)
    use_device(config.device_target, config.conv_impl, config.device_id)
    if not config.is_distributed:
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init
    _die_with_parent()  # before init(): msrun's scheduler runs this too, inside init()
    try:
        init()
    except RuntimeError as err:
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


def decay_groups(net, weight_decay: float) -> list:
    """Momentum parameter groups: weight decay on weights only, not BN gamma/beta or biases."""
    params = net.trainable_params()
    no_decay = [p for p in params if p.name.endswith((".gamma", ".beta", ".bias"))]
    decay = [p for p in params if not p.name.endswith((".gamma", ".beta", ".bias"))]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            {"order_params": params}]


def checkpoint_dir(config) -> str:
    """The run's checkpoint folder, ``<output_path>/ckpt_0``: only rank 0 writes checkpoints,
    and every rank resumes from them."""
    return os.path.join(os.path.abspath(config.output_path), "ckpt_0")


# ---- step 1: the run folder, one run at a time

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


# ---- step 2: where the run starts

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


def find_start(config, folder: str) -> Start:
    """The checkpoint ``--resume`` names (``auto``: the newest of the run that loads; a file
    cut off by a crash is skipped with a warning), checked to be of this network."""
    if config.resume == "auto":
        for path in resume_candidates(folder, config.network):
            try:
                params, meta = read_checkpoint(path)
            except UserError:
                print(f"warning: skipping unreadable checkpoint {path}", flush=True)
                continue
            print(f"resume auto: {path}", flush=True)
            start = Start(path, params, meta)
            break
        else:
            print("resume auto: no checkpoint yet, starting at epoch 1", flush=True)
            return Start()
    elif config.resume:
        start = Start(config.resume, *read_checkpoint(config.resume))
    else:
        return Start()
    require_network(config, start.meta, start.path, "resume")
    return start


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


def broadcast_state(net, opt, step: int, rank: int, size: int) -> None:
    """Rank 0's weights, BatchNorm statistics, momentum and step on every rank: one all-reduce
    of a vector that only rank 0 fills (MindSpore's CPU collectives sum floats)."""
    params = list(net.get_parameters()) + list(opt.moments)
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


# ---- step 3: the network record

def network_record(config, start: Start) -> tuple:
    """(record, pretrained weights or None): the config's network and pixels, with the layout
    options the resumed or pretrained weights were trained with (they need them), the input
    normalisation of pretrained weights unless a flag gives one, and the class folders' names."""
    record = NetworkRecord.from_config(config, dataset_classes(config, training=True) or ())
    if start.path:
        weights = resolve(config, start.meta, start.path, fixed=OPTION_KEYS, carried=())
        return dataclasses.replace(record, options=weights.options), None
    if not config.pretrained:
        return record, None
    path = checkpoint_for(config.pretrained, config.network)
    params, meta = read_checkpoint(path)
    require_network(config, meta, path, "fine-tune")
    weights = resolve(config, meta, path, fixed=OPTION_KEYS, carried=("input_norm",
                                                                      "eval_resize"))
    tuned = dataclasses.replace(record, options=weights.options, input_norm=weights.input_norm,
                                eval_resize=weights.eval_resize)
    for key, value in tuned.as_dict().items():
        if key in options_of(config.network) + ("input_norm",) and value != getattr(config, key):
            print(f"pretrained: {key} {value}, as its weights were trained", flush=True)
    return tuned, params


# ---- step 4: the run folder's state where the run starts (rank 0)

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
    for stale in glob.glob(os.path.join(folder, ".p*")):  # .partial-*, .pending-*: uncommitted
        if os.path.basename(stale).startswith((".partial-", ".pending-")):
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


# ---- step 5: the optimizer, its schedule, the train state

def build_optimizer(config, net, steps: int, group_size: int, loss_scale: float) -> tuple:
    """(Momentum optimizer, per-step lr array): the lr schedule scaled to the global batch when
    the recipe says so, weight decay on weights only, ``loss_scale`` (``loss_scaling``'s)."""
    lr_init, lr_max = config.lr_init, config.lr_max
    if config.lr_scaling == "linear" and config.lr_base_batch:
        factor = config.batch_size * group_size / config.lr_base_batch
        lr_init, lr_max = lr_init * factor, lr_max * factor
        print(f"lr scaling: global batch {config.batch_size * group_size} / recipe's "
              f"{config.lr_base_batch} = x{factor:g}: lr_init {lr_init:g}, lr_max {lr_max:g}",
              flush=True)
    lr = get_lr(config.lr_decay_mode, lr_init, lr_max, config.lr_end,
                config.warmup_epochs, config.epoch_size, steps)
    opt = nn.Momentum(decay_groups(net, config.weight_decay), ms.Tensor(lr), config.momentum,
                      loss_scale=loss_scale)
    return opt, lr


def restore_train_state(net, opt, start: Start, step: int, steps: int, lr) -> None:
    """The resumed checkpoint's weights, momentum and the optimizer's step counter (so the lr
    continues where it was)."""
    load_weights(net, start.params, start.path)
    # Set the moments by exact name: load_param_into_net(opt, ...) also matches a network
    # weight to its moment with the "moments." prefix dropped (measured on 2.10).
    for moment in opt.moments:
        if moment.name in start.params:
            moment.set_data(start.params[moment.name].data)
    opt.global_step.set_data(ms.Tensor([start.meta.get("global_step", step)], ms.int32))
    epoch, in_epoch = epoch_and_step(step + 1, steps)
    print(f"resume: from {start.path} at epoch {epoch} step {in_epoch}, next lr "
          f"{lr[step]:.8f}", flush=True)


def gather_over_ranks(value: int, rank: int, size: int) -> list:
    """Every rank's ``value``, in rank order: each rank puts its own in its slot of a zero
    vector and one all-reduce sums them (MindSpore's CPU AllReduce only sums, and only floats;
    float32 holds every integer below 2**24 exactly)."""
    slots = np.zeros(size, np.float32)
    slots[rank] = value
    return [int(v) for v in ops.AllReduce()(ms.Tensor(slots)).asnumpy()]


def sinks(config) -> bool:
    """Whether steps run in sinks: dataset_sink_mode off CPU (MindSpore feeds CPU step by step
    whatever the flag says, so there it is off, said once)."""
    if config.dataset_sink_mode and config.device_target == "CPU":
        print("dataset_sink_mode: MindSpore runs CPU training step by step; the flag matters on "
              "Ascend and GPU", flush=True)
    return config.dataset_sink_mode and config.device_target != "CPU"


def sink_size_for(count: int, interval: int) -> int:
    """Steps of one sink: the largest divisor of ``count`` not above ``interval``, so sinks end
    on every epoch's end and a progress line comes at least every ``interval`` steps."""
    return max(d for d in range(1, min(count, interval) + 1) if count % d == 0)


def run_steps(model, dataset, end: int, begin: int, clock, callbacks, sink: bool) -> None:
    """Train from step ``begin`` to ``end`` of ``dataset``'s steps (counted from its start), in
    sinks of ``sink_size_for`` steps when ``sink``, else one step a call. Model.train counts in
    calls: an epoch is a sink in sink mode."""
    size = sink_size_for(dataset.get_dataset_size(), clock.interval) if sink else \
        dataset.get_dataset_size()
    clock.per_call = size if sink else 1
    model.train(end // size, dataset, callbacks=callbacks, dataset_sink_mode=sink,
                sink_size=size if sink else -1, initial_epoch=begin // size)


def any_rank_signal(rank: int, size: int):
    """A function ``signal number or 0 -> the largest over all ranks``, for SignalStop."""
    return lambda signum: max(gather_over_ranks(signum, rank, size))


# ---- the run

def train(config) -> str:
    """Train ``config.network`` as ``config`` says; returns the checkpoint folder."""
    check_recipe(config)  # before a process group starts
    check_layout(config.dataset, config.dataset_path)
    rank, group_size = set_up(config)
    folder = checkpoint_dir(config)
    if rank != 0:
        return _train(config, rank, group_size, folder)
    writable_folder(folder, "--output_path")
    with run_lock(folder):
        return _train(config, rank, group_size, folder)


def _train(config, rank: int, group_size: int, folder: str) -> str:
    start = find_start(config, folder)
    record, pretrained = network_record(config, start)
    dataset = create_dataset(record.data_config(config), training=True, rank_id=rank,
                             rank_size=group_size)
    steps = dataset.get_dataset_size()
    step = start.global_step(steps)
    if step >= config.epoch_size * steps:
        raise UserError(f"checkpoint is at epoch {step // steps} of {config.epoch_size}",
                        start.path, "give a larger --epoch_size to train further")
    take_rank0 = False
    if group_size > 1:
        step, take_rank0 = agree_on_step(step, rank, group_size)
    state, history = prepare_folder(config, folder, start, step, steps) if rank == 0 \
        else (None, [])

    net = record.build(conv_impl=config.conv_impl)
    if pretrained is not None:
        load_weights(net, pretrained, config.pretrained, skip=("classifier",))
        print(f"pretrained: loaded all but the classifier ({config.pretrained})", flush=True)
    scale_manager, optimizer_scale = loss_scaling(config)
    opt, lr = build_optimizer(config, net, steps, group_size, optimizer_scale)
    if start.path:
        restore_train_state(net, opt, start, step, steps, lr)
    if take_rank0:
        broadcast_state(net, opt, step, rank, group_size)

    loss = CrossEntropySmooth(sparse=True, reduction="mean",
                              smooth_factor=config.label_smooth_factor,
                              num_classes=config.num_classes)
    watch = config.eval_interval > 0 and rank == 0
    model = Model(net, loss_fn=loss, optimizer=opt, amp_level=config.amp_level,
                  loss_scale_manager=scale_manager,
                  metrics=eval_metrics(config.num_classes) if watch else None)
    clock = StepClock(step, steps, config.log_interval, rank)
    progress = ProgressMonitor(clock, opt, config.epoch_size, config.batch_size * group_size,
                               history)
    callbacks = [clock, NonFiniteLossGuard(clock, opt, net.trainable_params()[0]), progress]
    recorder = None
    if rank == 0:
        eval_data = create_dataset(record.data_config(config), training=False,
                                   classes=record.class_names or None) if watch else None
        recorder = RunRecorder(folder, state, record.as_checkpoint_meta(), progress,
                               config.epoch_size, save=config.save_checkpoint,
                               save_every=config.save_checkpoint_epochs,
                               keep=config.keep_checkpoint_max, model=model, eval_data=eval_data,
                               eval_interval=config.eval_interval if watch else 0)
        callbacks.append(recorder)
    stopper = SignalStop(clock, recorder,
                         any_rank_signal(rank, group_size) if group_size > 1 else None)
    callbacks.append(stopper)

    first_epoch, skip = divmod(step, steps)
    sink = sinks(config)
    print(f"train: {config.network}, {steps} steps/epoch, epochs {first_epoch + 1}.."
          f"{config.epoch_size}, rank {rank}/{group_size}, checkpoints in {folder}", flush=True)
    started = time.time()
    stopper.install()
    try:
        if skip:  # resumed inside an epoch: its remaining steps first
            run_steps(model, dataset.take(steps - skip), steps - skip, 0, clock, callbacks, sink)
            first_epoch += 1
        if not stopper.signum and first_epoch < config.epoch_size:
            run_steps(model, dataset, config.epoch_size * steps, first_epoch * steps, clock,
                      callbacks, sink)
    finally:
        stopper.restore()
    elapsed = time.time() - started
    if stopper.signum:
        line = stop_line(stopper, steps, rank)
        if group_size == 1:
            raise Stopped(stopper.signum, line)
        # Said before the last all-reduce (which waits for rank 0's save): msrun SIGKILLs the
        # other workers as soon as one exits, so a line printed after it could be lost.
        print(line, file=sys.stderr, flush=True)
        gather_over_ranks(1, rank, group_size)
        raise Stopped(stopper.signum, "", hard_exit=True)
    # Data-parallel ranks must end with the same weights: this lets a log show that they do.
    checksum = sum(float(np.abs(p.asnumpy()).astype(np.float64).sum())
                   for p in net.trainable_params())
    print(f"train: done in {elapsed:.1f} s, rank {rank} weights checksum {checksum:.10e}",
          flush=True)
    if rank == 0:
        print(closing_line(config.network, step // steps, config.epoch_size, elapsed, state,
                           folder), flush=True)
    return folder


def stop_line(stopper, steps: int, rank: int) -> str:
    """What a stop by signal says: which signal, where, and what continues the run."""
    import signal
    done = stopper.clock.done
    epoch, step = epoch_and_step(max(done, 1), steps)
    where = f"after epoch {epoch} step {step} (global step {done})"
    name = signal.Signals(stopper.signum).name
    if stopper.saved:
        return (f"stopped: {name} {where}; saved {stopper.saved} in {stopper.save_seconds:.2f} s:"
                f" --resume auto continues from it")
    if rank != 0:
        return f"stopped: {name} {where} (rank {rank}; rank 0 saves the checkpoint)"
    return f"stopped: {name} {where}; nothing saved (save_checkpoint is False)"


def closing_line(network, start_epoch, epochs, elapsed, state, folder) -> str:
    """What the run gave and where it is: the best top-1, its epoch and the best checkpoint when
    it evaluated, else the last checkpoint."""
    line = f"train: finished {network} epochs {start_epoch + 1}..{epochs} in {elapsed:.1f} s"
    best = state.best() if state is not None else None
    if best and state.best_file_epoch == best[0]:
        return line + (f"; best top-1 {best[1]:.4f} at epoch {best[0]}: "
                       f"{os.path.join(folder, best_name(network))}")
    saved = state.checkpoints() if state is not None else []
    if saved:
        return line + (f"; last checkpoint {os.path.join(folder, saved[-1][1])} (no top-1: give "
                       "--eval_interval N to score the validation set every N epochs)")
    return line + "; no checkpoint saved (save_checkpoint is False)"
