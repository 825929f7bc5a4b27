"""Training: builds data, network, loss, lr, optimizer and callbacks from a config and runs them."""
import glob
import os
import time

import mindspore as ms
import numpy as np
from mindspore import nn
from mindspore.train import (Callback, CheckpointConfig, FixedLossScaleManager, LossMonitor, Model,
                             ModelCheckpoint, TimeMonitor)

from src.checkpoint import build_network, load_weights, network_meta, read_checkpoint
from src.CrossEntropySmooth import CrossEntropySmooth
from src.dataset import create_dataset
from src.device import use_device
from src.errors import UserError
from src.lr_generator import get_lr


def set_up(config) -> tuple:
    """Seed, device, graph mode and (when distributed) the communication group: (rank, size)."""
    ms.set_seed(config.seed)
    np.random.seed(config.seed)
    ms.dataset.config.set_seed(config.seed)
    use_device(config.device_target)
    if not config.is_distributed:
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init
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


def decay_groups(net, weight_decay: float) -> list:
    """Momentum parameter groups: weight decay on weights only, not BN gamma/beta or biases."""
    params = net.trainable_params()
    no_decay = [p for p in params if p.name.endswith((".gamma", ".beta", ".bias"))]
    decay = [p for p in params if not p.name.endswith((".gamma", ".beta", ".bias"))]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            {"order_params": params}]


class LrMonitor(Callback):
    """Prints the learning rate the optimizer used at the step just taken.

    It reads the optimizer's own step counter and lr array, so after a resume it shows what
    training really used, not what the schedule intended.
    """

    def __init__(self, optimizer, steps_per_epoch: int, interval: int):
        super().__init__()
        self.optimizer, self.steps, self.interval = optimizer, steps_per_epoch, interval

    def on_train_step_end(self, run_context):
        params = run_context.original_args()
        step_in_epoch = (params.cur_step_num - 1) % self.steps + 1
        if step_in_epoch != 1 and step_in_epoch % self.interval:
            return
        used = int(self.optimizer.global_step.asnumpy().reshape(-1)[0]) - 1
        lr = float(self.optimizer.learning_rate.learning_rate.asnumpy()[used])
        print(f"epoch: {params.cur_epoch_num} step: {step_in_epoch}, lr: {lr:.8f}", flush=True)


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
        loss = params.net_outputs[0] if isinstance(params.net_outputs, (tuple, list)) \
            else params.net_outputs
        value = float(np.mean(loss.asnumpy()))
        if np.isfinite(value) and np.isfinite(self.sentinel.asnumpy()).all():
            return
        step = int(self.optimizer.global_step.asnumpy().reshape(-1)[0])
        lr = float(self.optimizer.learning_rate.learning_rate.asnumpy()[max(step - 1, 0)])
        raise UserError(f"loss or weights not finite (loss {value}) at epoch {params.cur_epoch_num} step "
                        f"{(params.cur_step_num - 1) % self.steps + 1} (global step {step}), "
                        f"lr {lr:g}; stopped without saving this step's weights", "training",
                        "lower --lr_max (or --loss_scale with amp), then --resume the last "
                        "checkpoint")


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that keeps the names ``{network}-{epoch}_{step}.ckpt``.

    MindSpore renames to ``{network}_1-…`` when the folder already has checkpoints; a resumed
    run must continue the same names, and a fresh run refuses a used folder instead.
    """

    def __init__(self, prefix, directory, config):
        super().__init__(prefix=prefix, directory=directory, config=config)
        self._prefix = prefix


def checkpoint_dir(config, rank: int) -> str:
    return os.path.join(os.path.abspath(config.output_path), f"ckpt_{rank}")


def existing_checkpoints(directory: str, network: str) -> list:
    return sorted(glob.glob(os.path.join(directory, f"{network}-*.ckpt")), key=os.path.getmtime)


def newest_loadable_checkpoint(directory: str, network: str) -> str:
    """The checkpoint of ``network`` in ``directory`` with the highest epoch that loads; "" if none.

    A file cut off by a crash is skipped with a warning, so the run goes on from the one before.
    """
    candidates = []
    for path in existing_checkpoints(directory, network):
        try:
            _, meta = read_checkpoint(path)
        except UserError:
            print(f"warning: skipping unreadable checkpoint {path}", flush=True)
            continue
        candidates.append((meta.get("epoch_num", 0), os.path.getmtime(path), path))
    return max(candidates)[2] if candidates else ""


def train(config) -> str:
    """Train ``config.network`` as ``config`` says; returns the checkpoint folder."""
    rank, group_size = set_up(config)
    ckpt_dir = checkpoint_dir(config, rank)
    start_epoch, resume_params = 0, None
    if config.resume == "auto":
        config.resume = newest_loadable_checkpoint(ckpt_dir, config.network)
        print(f"resume auto: {config.resume or 'no checkpoint yet, starting at epoch 1'}",
              flush=True)
    if config.resume:
        resume_params, meta = read_checkpoint(config.resume)
        if meta.get("network", config.network) != config.network:
            raise UserError(f"checkpoint is of {meta['network']}, not {config.network}",
                            config.resume, f"give --network {meta['network']} to resume it")
        start_epoch = meta.get("epoch_num", 0)
        if start_epoch >= config.epoch_size:
            raise UserError(f"checkpoint is at epoch {start_epoch} of {config.epoch_size}",
                            config.resume, "give a larger --epoch_size to train further")
    elif config.save_checkpoint and rank == 0 and existing_checkpoints(ckpt_dir, config.network):
        raise UserError("the output folder already holds checkpoints of an earlier run", ckpt_dir,
                        "give another --output_path, or --resume one of those checkpoints")

    dataset = create_dataset(config, training=True, rank_id=rank, rank_size=group_size)
    steps = dataset.get_dataset_size()
    meta = network_meta(config)
    net = build_network(meta)
    if config.pretrained:
        params, _ = read_checkpoint(config.pretrained)
        load_weights(net, params, config.pretrained, skip=("classifier",))
        print(f"pretrained: loaded all but the classifier from {config.pretrained}", flush=True)

    lr = get_lr(config.lr_decay_mode, config.lr_init, config.lr_max, config.lr_end,
                config.warmup_epochs, config.epoch_size, steps)
    opt = nn.Momentum(decay_groups(net, config.weight_decay), ms.Tensor(lr), config.momentum,
                      loss_scale=config.loss_scale)
    if resume_params is not None:
        load_weights(net, resume_params, config.resume)
        # Set the moments by exact name: load_param_into_net(opt, ...) also matches a
        # network weight to its moment with the "moments." prefix dropped (measured on 2.10).
        for moment in opt.moments:
            if moment.name in resume_params:
                moment.set_data(resume_params[moment.name].data)
        opt.global_step.set_data(ms.Tensor([start_epoch * steps], ms.int32))
        print(f"resume: from epoch {start_epoch} of {config.resume}, next lr "
              f"{lr[start_epoch * steps]:.8f}", flush=True)

    loss = CrossEntropySmooth(sparse=True, reduction="mean",
                              smooth_factor=config.label_smooth_factor,
                              num_classes=config.num_classes)
    model = Model(net, loss_fn=loss, optimizer=opt, amp_level=config.amp_level,
                  loss_scale_manager=FixedLossScaleManager(config.loss_scale,
                                                           drop_overflow_update=False))
    callbacks = [NonFiniteLossGuard(opt, steps, net.trainable_params()[0]), TimeMonitor(steps),
                 LossMonitor(config.log_interval), LrMonitor(opt, steps, config.log_interval)]
    if config.save_checkpoint and rank == 0:
        ckpt_config = CheckpointConfig(
            save_checkpoint_steps=config.save_checkpoint_epochs * steps,
            keep_checkpoint_max=config.keep_checkpoint_max,
            append_info=["epoch_num", "step_num", meta])
        callbacks.append(RunCheckpoint(config.network, ckpt_dir, ckpt_config))
    print(f"train: {config.network}, {steps} steps/epoch, epochs {start_epoch + 1}.."
          f"{config.epoch_size}, rank {rank}/{group_size}, checkpoints in {ckpt_dir}", flush=True)
    started = time.time()
    model.train(config.epoch_size, dataset, callbacks=callbacks,
                dataset_sink_mode=config.dataset_sink_mode, initial_epoch=start_epoch)
    # Data-parallel ranks must end with the same weights: this lets a log show that they do.
    checksum = sum(float(np.abs(p.asnumpy()).astype(np.float64).sum()) for p in net.trainable_params())
    print(f"train: done in {time.time() - started:.1f} s, rank {rank} weights checksum "
          f"{checksum:.10e}", flush=True)
    return ckpt_dir
