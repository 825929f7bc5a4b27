"""Training: builds data, network, loss, lr, optimizer and callbacks from a config and runs them."""
import glob
import json
import os
import time

import mindspore as ms
import numpy as np
from mindspore import nn
from mindspore.train import FixedLossScaleManager, Model, TimeMonitor

from src.callbacks import EpochCheckpoint, EvalMonitor, NonFiniteLossGuard, ProgressMonitor
from src.checkpoint import (CLASS_NAMES, build_network, load_weights, network_meta, partial_path,
                            read_checkpoint)
from src.CrossEntropySmooth import CrossEntropySmooth
from src.dataset import check_layout, create_dataset, dataset_classes
from src.device import use_device
from src.errors import UserError, writable_folder
from src.evaluator import eval_metrics
from src.lr_generator import get_lr
from src.models import options_of


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
    check_layout(config.dataset, config.dataset_path)  # before a process group starts
    rank, group_size = set_up(config)
    ckpt_dir = checkpoint_dir(config, rank)
    if rank == 0:  # the rank that writes checkpoints, metrics and curves
        writable_folder(ckpt_dir, "--output_path")
    start_epoch, resume_params = 0, None
    for stale in glob.glob(partial_path(os.path.join(ckpt_dir, "*.ckpt"))):
        os.remove(stale)
        print(f"removed {stale}: a save that a crash cut short", flush=True)
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

    if config.pretrained:
        pretrained, pretrained_meta = read_checkpoint(config.pretrained)
        if pretrained_meta.get("network", config.network) != config.network:
            raise UserError(f"checkpoint is of {pretrained_meta['network']}, not "
                            f"{config.network}", config.pretrained,
                            f"give --network {pretrained_meta['network']} to fine-tune it, or a "
                            f"checkpoint of {config.network}")
        # The weights need the layout and the pixels they were trained with.
        for key in options_of(config.network) + ("input_norm",):
            value = pretrained_meta.get(key, getattr(config, key))
            if key not in config.explicit and value != getattr(config, key):
                setattr(config, key, value)
                print(f"pretrained: {key} {value}, as its weights were trained", flush=True)
    dataset = create_dataset(config, training=True, rank_id=rank, rank_size=group_size)
    steps = dataset.get_dataset_size()
    meta = network_meta(config)
    classes = dataset_classes(config, training=True)
    if classes:
        meta[CLASS_NAMES] = json.dumps(classes)
    net = build_network(meta, conv_impl=config.conv_impl)
    if config.pretrained:
        load_weights(net, pretrained, config.pretrained, skip=("classifier",))
        print(f"pretrained: loaded all but the classifier from {config.pretrained}", flush=True)

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
    watch = config.eval_interval > 0 and rank == 0
    model = Model(net, loss_fn=loss, optimizer=opt, amp_level=config.amp_level,
                  loss_scale_manager=FixedLossScaleManager(config.loss_scale,
                                                           drop_overflow_update=False),
                  metrics=eval_metrics(config.num_classes) if watch else None)
    progress = ProgressMonitor(opt, steps, config.log_interval, config.epoch_size,
                               config.batch_size * group_size)
    callbacks = [NonFiniteLossGuard(opt, steps, net.trainable_params()[0]), TimeMonitor(steps),
                 progress]
    evaluator = saver = None
    if watch:
        evaluator = EvalMonitor(model, create_dataset(config, training=False, classes=classes),
                                config.eval_interval, ckpt_dir, config.network, meta, progress)
        callbacks.append(evaluator)
    if config.save_checkpoint and rank == 0:
        saver = EpochCheckpoint(config.network, ckpt_dir, config.save_checkpoint_epochs,
                                config.keep_checkpoint_max, meta)
        callbacks.append(saver)
    print(f"train: {config.network}, {steps} steps/epoch, epochs {start_epoch + 1}.."
          f"{config.epoch_size}, rank {rank}/{group_size}, checkpoints in {ckpt_dir}", flush=True)
    started = time.time()
    model.train(config.epoch_size, dataset, callbacks=callbacks,
                dataset_sink_mode=config.dataset_sink_mode, initial_epoch=start_epoch)
    # Data-parallel ranks must end with the same weights: this lets a log show that they do.
    checksum = sum(float(np.abs(p.asnumpy()).astype(np.float64).sum()) for p in net.trainable_params())
    elapsed = time.time() - started
    print(f"train: done in {elapsed:.1f} s, rank {rank} weights checksum {checksum:.10e}",
          flush=True)
    if rank == 0:
        print(closing_line(config.network, start_epoch, config.epoch_size, elapsed, evaluator,
                           saver), flush=True)
    return ckpt_dir


def closing_line(network, start_epoch, epochs, elapsed, evaluator, saver) -> str:
    """What the run gave and where it is: the best top-1, its epoch and the best checkpoint when
    it evaluated, else the last checkpoint."""
    line = f"train: finished {network} epochs {start_epoch + 1}..{epochs} in {elapsed:.1f} s"
    if evaluator is not None and evaluator.best is not None:
        return line + (f"; best top-1 {evaluator.best:.4f} at epoch {evaluator.best_epoch}: "
                       f"{evaluator.best_path}")
    if saver is not None and saver.saved:
        return line + (f"; last checkpoint {saver.saved[-1]} (no top-1: give --eval_interval N "
                       "to score the validation set every N epochs)")
    return line + "; no checkpoint saved (save_checkpoint is False)"
