"""Training: a config's network trained on its data, in a few named steps.

``train(config)`` takes the run folder (one run at a time), finds where the run starts (a
checkpoint to resume, agreed by every rank, or epoch 1), resolves the network record, builds the
data, the network and the optimizer with its schedule, restores the train state, makes the
callbacks, trains, and ends with what the run gave. It changes nothing in ``config``.
"""
import dataclasses
import os
import sys
import time

import mindspore as ms
import numpy as np
from mindspore import nn
from mindspore.train import DynamicLossScaleManager, FixedLossScaleManager, Model

from src.augment import mixes_batches
from src.checkpoint import (
    OPTION_KEYS,
    NetworkRecord,
    load_weights,
    read_checkpoint,
    require_network,
    resolve,
)
from src.CrossEntropySmooth import CrossEntropySmooth
from src.dataset import check_layout, create_dataset, dataset_classes, split_record
from src.deploy.evaluator import eval_metrics
from src.device import use_device
from src.errors import Stopped, UserError, writable_folder
from src.lr_generator import get_lr
from src.models import options_of
from src.training.callbacks import (
    NonFiniteLossGuard,
    ProgressMonitor,
    RunRecorder,
    SignalStop,
    StepClock,
    epoch_and_step,
)
from src.training.distributed import (
    agree_on_step,
    any_rank_signal,
    broadcast_state,
    join_group,
    wait_for_every_rank,
)
from src.training.optim import create_optimizer, state_of
from src.training.run_state import (
    Start,
    best_name,
    prepare_folder,
    resume_candidates,
    run_lock,
)
from src.training.train_step import TrainStep
from src.weights.pretrained import checkpoint_for


def check_recipe(config) -> None:
    """Combinations of keys that cannot train (on this device), refused before anything
    starts."""
    if config.loss_scale_type == "dynamic" and config.device_target == "CPU":
        raise UserError("a dynamic loss scale does not run on CPU (MindSpore 2.10 builds its "
                        "overflow-skipping train step for Ascend and GPU only)",
                        "--loss_scale_type", "give --loss_scale_type fixed on CPU")
    if mixes_batches(config) and config.num_classes < 2:
        raise UserError(f"mixup and CutMix mix the targets of two classes; the network has "
                        f"{config.num_classes}", "--mixup" if config.mixup > 0 else "--cutmix",
                        "give --num_classes 2 or more, or --mixup 0 --cutmix 0")
    if needs_own_step(config) and config.loss_scale_type == "dynamic":
        raise UserError("gradient accumulation, clipping and EMA take a fixed loss scale here",
                        "--loss_scale_type", "give --loss_scale_type fixed")
    if config.val_fraction and config.dataset != "imagenet":
        raise UserError(f"val_fraction holds files out of class folders; --dataset "
                        f"{config.dataset} has none", "--val_fraction",
                        "give --dataset imagenet with a folder of class folders, or "
                        "--val_fraction 0")
    if config.use_nesterov and (config.opt not in ("momentum", "sgd") or not config.momentum):
        raise UserError(f"Nesterov's momentum needs opt momentum or sgd with a momentum above 0 "
                        f"(opt {config.opt}, momentum {config.momentum:g})", "--use_nesterov",
                        "give --use_nesterov False, or --opt momentum with --momentum 0.9")


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
    return join_group() if config.is_distributed else (0, 1)


def checkpoint_dir(config) -> str:
    """The run's checkpoint folder, ``<output_path>/ckpt_0``: only rank 0 writes checkpoints,
    and every rank resumes from them."""
    return os.path.join(os.path.abspath(config.output_path), "ckpt_0")


# ---- where the run starts (the folder's own life is in run_state.py)


def find_start(config, folder: str, held_out: dict) -> Start:
    """The checkpoint ``--resume`` names (``auto``: the newest of the run that loads; a file
    cut off by a crash is skipped with a warning), checked to be of this network and to have
    held out the validation files ``held_out`` records (``split_record``)."""
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
    recorded, mine = str(start.meta.get("val_split", "")), held_out.get("val_split", "")
    if recorded != mine:
        raise UserError(f"the run held out other validation files ({recorded or 'none'}) than "
                        f"this command would ({mine or 'none'}; count:digest)", start.path,
                        "resume with the run's --val_fraction and data folder")
    return start


# ---- the network record

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


# ---- the optimizer, its schedule, the train state

def build_optimizer(config, net, steps: int, group_size: int, loss_scale: float) -> tuple:
    """(optimizer, per-step lr array): the optimizer ``opt`` names (optim.py), the lr schedule
    scaled to the global batch when the recipe says so, weight decay on weights only,
    ``loss_scale`` (``loss_scaling``'s)."""
    lr_init, lr_max = config.lr_init, config.lr_max
    if config.lr_scaling == "linear" and config.lr_base_batch:
        factor = config.batch_size * group_size / config.lr_base_batch
        lr_init, lr_max = lr_init * factor, lr_max * factor
        print(f"lr scaling: global batch {config.batch_size * group_size} / recipe's "
              f"{config.lr_base_batch} = x{factor:g}: lr_init {lr_init:g}, lr_max {lr_max:g}",
              flush=True)
    lr = get_lr(config.lr_decay_mode, lr_init, lr_max, config.lr_end,
                config.warmup_epochs, config.epoch_size, steps)
    return create_optimizer(config, net, lr, loss_scale), lr


def restore_train_state(net, opt, extra: list, start: Start, step: int, steps: int,
                        lr) -> None:
    """The resumed checkpoint's weights, the optimizer's state (moments...) and step counter
    (so the lr continues where it was), and ``extra``, the train step's own state (the EMA,
    the accumulated gradients and the cycle's position)."""
    load_weights(net, start.params, start.path, use_ema=False)  # the EMA: the train step's own
    # Set the state by exact name: load_param_into_net(opt, ...) also matches a network
    # weight to its moment with the "moments." prefix dropped (measured on 2.10).
    for state in state_of(opt, net) + extra:
        if state.name in start.params:
            state.set_data(start.params[state.name].data)
    counter = int(start.meta.get("global_step", step))
    opt.global_step.set_data(ms.Tensor([counter], ms.int32))
    epoch, in_epoch = epoch_and_step(step + 1, steps)
    print(f"resume: from {start.path} at epoch {epoch} step {in_epoch}, next lr "
          f"{lr[min(counter, len(lr) - 1)]:.8f}", flush=True)


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


# ---- the run

@dataclasses.dataclass
class Run:
    """What a run is, worked out once where it starts and handed to each step."""
    config: object
    rank: int
    group_size: int
    folder: str  # the checkpoint folder (rank 0 writes it)
    start: Start
    record: NetworkRecord
    steps: int  # steps of an epoch on this rank
    held_out: dict  # the validation files held out of one folder (split_record), or {}
    step: int = 0  # the global step the run continues after
    take_rank0: bool = False  # this rank takes rank 0's weights and train state


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
    held_out = split_record(config.dataset_path, config.val_fraction)  # {} without val_fraction
    start = find_start(config, folder, held_out)
    record, pretrained = network_record(config, start)
    dataset = create_dataset(record.data_config(config), training=True, rank_id=rank,
                             rank_size=group_size)
    run = Run(config, rank, group_size, folder, start, record, dataset.get_dataset_size(),
              held_out)
    if run.steps % config.gradient_accumulation_steps:
        raise UserError(f"an epoch of {run.steps} steps is not a whole number of cycles of "
                        f"{config.gradient_accumulation_steps} accumulated batches",
                        "--gradient_accumulation_steps", "give a divisor of the epoch's steps, "
                        "or change --batch_size")
    agree_where_to_start(run)
    state, history = prepare_folder(config, folder, start, run.step, run.steps) \
        if rank == 0 else (None, [])
    model, net, opt, step = build_model(run, pretrained)
    clock, callbacks, stopper = make_callbacks(run, model, net, opt, step, state, history)
    elapsed = run_epochs(run, model, dataset, clock, callbacks, stopper)
    if stopper.signum:
        stop(run, stopper)
    # Data-parallel ranks must end with the same weights: this lets a log show that they do.
    checksum = sum(float(np.abs(p.asnumpy()).astype(np.float64).sum())
                   for p in net.trainable_params())
    print(f"train: done in {elapsed:.1f} s, rank {rank} weights checksum {checksum:.10e}",
          flush=True)
    if rank == 0:
        print(closing_line(config.network, run.step // run.steps, config.epoch_size, elapsed,
                           state, folder), flush=True)
    return folder


def agree_where_to_start(run: Run) -> None:
    """The global step the run continues after, the same on every rank, and whether this rank
    takes rank 0's state; a checkpoint at or past the last epoch is refused."""
    run.step = run.start.global_step(run.steps)
    if run.step >= run.config.epoch_size * run.steps:
        raise UserError(f"checkpoint is at epoch {run.step // run.steps} of "
                        f"{run.config.epoch_size}", run.start.path,
                        "give a larger --epoch_size to train further")
    if run.group_size > 1:
        run.step, run.take_rank0 = agree_on_step(run.step, run.rank, run.group_size)


def build_model(run: Run, pretrained) -> tuple:
    """(Model, network, optimizer): the network with its pretrained, resumed or rank 0's
    weights, the optimizer with its schedule and train state, the loss and loss scaling."""
    config = run.config
    net = run.record.build(conv_impl=config.conv_impl, drop_rate=config.drop_rate)
    if pretrained is not None:
        which = load_weights(net, pretrained, config.pretrained, skip=("classifier",),
                             use_ema=config.use_ema_weights)
        print(f"pretrained: loaded all but the classifier ({config.pretrained}, {which} "
              "weights)", flush=True)
    if config.freeze != "none":
        frozen = net.freeze(config.freeze)
        print(f"freeze {config.freeze}: {len(frozen)} of {len(list(net.get_parameters()))} "
              "parameters frozen (no update, no weight decay; their BatchNorms keep their "
              "statistics)", flush=True)
    scale_manager, optimizer_scale = loss_scaling(config)
    own_step = needs_own_step(config)
    opt, lr = build_optimizer(config, net, run.steps // config.gradient_accumulation_steps,
                              run.group_size, 1.0 if own_step else optimizer_scale)
    # Mixed batches carry soft targets with the label smoothing in them; evals score hard ones.
    soft = mixes_batches(config)
    loss = CrossEntropySmooth(sparse=not soft, reduction="mean",
                              smooth_factor=0.0 if soft else config.label_smooth_factor,
                              num_classes=config.num_classes)
    metrics = eval_metrics(config.num_classes) if watches(run) else None
    evaluation = {}
    if metrics and (soft or own_step):
        evaluation = {"eval_network": nn.WithEvalCell(net, CrossEntropySmooth(
            sparse=True, reduction="mean", smooth_factor=config.label_smooth_factor,
            num_classes=config.num_classes)), "eval_indexes": [0, 1, 2]}
    step = None
    if own_step:
        if config.amp_level != "O0":
            ms.amp.auto_mixed_precision(net, config.amp_level)
        step = TrainStep(nn.WithLossCell(net, loss), opt, net, sens=config.loss_scale,
                         accumulation=config.gradient_accumulation_steps,
                         clip_norm=config.clip_value if config.clip_grad else 0.0,
                         ema_decay=config.ema_decay if config.ema else 0.0)
        model = Model(step, metrics=metrics, **evaluation)
    else:
        model = Model(net, loss_fn=loss, optimizer=opt, amp_level=config.amp_level,
                      loss_scale_manager=scale_manager, metrics=metrics, **evaluation)
    extra = step.own_state() if step is not None else []
    if run.start.path:
        restore_train_state(net, opt, extra, run.start, run.step, run.steps, lr)
    if run.take_rank0:
        broadcast_state(net, opt, extra, run.step, run.rank, run.group_size)
    return model, net, opt, step


def needs_own_step(config) -> bool:
    """Whether the recipe needs TrainStep (accumulation, clipping or EMA) rather than
    MindSpore's own train step."""
    return config.ema or config.clip_grad or config.gradient_accumulation_steps > 1



def watches(run: Run) -> bool:
    """Whether this rank evaluates during training (rank 0, when eval_interval asks)."""
    return run.config.eval_interval > 0 and run.rank == 0


def make_callbacks(run: Run, model, net, opt, step, state, history) -> tuple:
    """(clock, callbacks in call order, the signal stopper): the host step count, the loss
    guard, the progress line, on rank 0 the recorder (checkpoints, evals on the EMA weights
    when the recipe keeps them, run state), and the stop on a signal (agreed over the
    ranks)."""
    config = run.config
    clock = StepClock(run.step, run.steps, config.log_interval, run.rank)
    progress = ProgressMonitor(clock, opt, config.epoch_size,
                               config.batch_size * run.group_size, history,
                               accumulation=config.gradient_accumulation_steps)
    callbacks = [clock, NonFiniteLossGuard(clock, opt, net.trainable_params()[0]), progress]
    recorder = None
    if run.rank == 0:
        eval_data = create_dataset(run.record.data_config(config), training=False,
                                   classes=run.record.class_names or None) \
            if watches(run) else None
        recorder = RunRecorder(run.folder, state, {**run.record.as_checkpoint_meta(),
                                                   **run.held_out}, progress,
                               config.epoch_size, save=config.save_checkpoint,
                               save_every=config.save_checkpoint_epochs,
                               keep=config.keep_checkpoint_max, model=model, eval_data=eval_data,
                               eval_interval=config.eval_interval if watches(run) else 0,
                               eval_weights=step.ema_weights if step is not None else None)
        callbacks.append(recorder)
    stopper = SignalStop(clock, recorder, any_rank_signal(run.rank, run.group_size)
                         if run.group_size > 1 else None)
    callbacks.append(stopper)
    return clock, callbacks, stopper


def run_epochs(run: Run, model, dataset, clock, callbacks, stopper) -> float:
    """Train from the run's step to its last epoch's end, or to a stop by signal; returns the
    seconds it took. A resumed run's data pipeline starts at the run's step of the same
    shuffled order (MindSpore's recovery from a failure: ``set_init_step``), inside an epoch
    too; with ``exact_resume`` it replays the random augmentations of the steps before, so the
    run goes on to the digit as if it had never stopped."""
    config, steps = run.config, run.steps
    first_epoch = run.step // steps
    sink = sinks(config)
    print(f"train: {config.network}, {steps} steps/epoch, epochs {first_epoch + 1}.."
          f"{config.epoch_size}, rank {run.rank}/{run.group_size}, checkpoints in {run.folder}",
          flush=True)
    started = time.time()
    stopper.install()
    try:
        if run.step:
            ms.dataset.config.set_fast_recovery(not config.exact_resume)
            dataset.set_init_step(run.step)
            if config.exact_resume:
                print(f"resume: the data pipeline replays its {run.step} steps before this one "
                      "(exact_resume; False starts at once, with fresh augmentation draws)",
                      flush=True)
        run_steps(model, dataset, config.epoch_size * steps, first_epoch * steps, clock,
                  callbacks, sink)
    finally:
        stopper.restore()
    return time.time() - started


def stop(run: Run, stopper) -> None:
    """End a run a signal stopped: raise Stopped with what it says (every rank has stopped
    after the same step, rank 0 has saved)."""
    line = stop_line(stopper, run.steps, run.rank)
    if run.group_size == 1:
        raise Stopped(stopper.signum, line)
    # Said before the last all-reduce (which waits for rank 0's save): msrun SIGKILLs the
    # other workers as soon as one exits, so a line printed after it could be lost.
    print(line, file=sys.stderr, flush=True)
    wait_for_every_rank(run.rank, run.group_size)
    raise Stopped(stopper.signum, "", hard_exit=True)


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
