"""Checkpoints: the network metadata they carry, reading them safely, loading them into networks.

Every checkpoint we write records the network name, num_classes and layout options, so eval,
export and resume rebuild exactly the network that was trained (the zoo's ShuffleNetV2 eval
silently built 1.0x whatever the checkpoint).
"""
import os

import mindspore as ms

from src.errors import UserError
from src.models import create_network, options_of

META_KEYS = ("network", "num_classes", "pool_pad", "shuffle_order", "activation")
# What eval transforms the network was trained with (see dataset.eval_image_ops).
PREPROCESS_KEYS = ("dataset", "image_size")
TRAIN_STATE_KEYS = ("epoch_num", "step_num")


def network_meta(config) -> dict:
    """The metadata that rebuilds ``config``'s network: name, num_classes and its layout options."""
    meta = {"network": config.network, "num_classes": int(config.num_classes)}
    for option in options_of(config.network):
        meta[option] = getattr(config, option)
    meta.update({"dataset": config.dataset, "image_size": int(config.image_size)})
    return meta


def build_network(meta: dict, **kwargs):
    """The network that ``meta`` (network_meta or a checkpoint's) describes."""
    options = {k: meta[k] for k in options_of(meta["network"]) if k in meta}
    return create_network(meta["network"], num_classes=int(meta["num_classes"]), **options,
                          **kwargs)


def read_checkpoint(path: str) -> tuple:
    """(parameters, metadata) of a checkpoint; UserError if it is missing or unreadable.

    metadata holds the META_KEYS and TRAIN_STATE_KEYS the file has (none for foreign files).
    """
    if not path or not os.path.isfile(path):
        raise UserError("checkpoint not found", path or "--checkpoint_path",
                        "give the path of an existing .ckpt file")
    try:
        params = ms.load_checkpoint(path)
    except (ValueError, RuntimeError, OSError) as err:
        raise UserError("checkpoint is truncated or not a MindSpore checkpoint", path,
                        "give a complete .ckpt file (an earlier one of the run, if this one "
                        "was cut off)") from err
    meta = {}
    for key in META_KEYS + PREPROCESS_KEYS + TRAIN_STATE_KEYS:
        if key in params:
            value = params.pop(key)
            meta[key] = value if isinstance(value, str) else int(value.asnumpy())
    return params, meta


def load_weights(net, params: dict, path: str, skip=()) -> None:
    """Load ``params`` into ``net``, every parameter of it except those starting with ``skip``.

    Refuses, naming the first offending parameter, when one is missing or has another shape.
    """
    wanted = {p.name: p for p in net.get_parameters() if not p.name.startswith(tuple(skip))}
    for name, param in wanted.items():
        if name not in params:
            raise UserError(f"checkpoint has no parameter {name!r}: it is for another network",
                            path, "give a checkpoint of this network, or the matching --network")
        if tuple(params[name].shape) != tuple(param.shape):
            hint = "give a checkpoint of this network"
            if name.startswith("classifier"):
                hint = (f"it was trained for {params[name].shape[0]} classes, not "
                        f"{param.shape[0]}: use --pretrained to fine-tune it with a new head")
            raise UserError(f"parameter {name!r} has shape {tuple(params[name].shape)} in the "
                            f"checkpoint but {tuple(param.shape)} in the network", path, hint)
    ms.load_param_into_net(net, {n: params[n] for n in wanted}, strict_load=True)


def meta_for_eval(config, meta: dict, path: str) -> dict:
    """The network to evaluate: the checkpoint's own metadata, else the config's.

    A network or num_classes given on the command line that contradicts the checkpoint is an
    error rather than a silently wrong network.
    """
    chosen = network_meta(config)
    if "network" not in meta:
        return chosen
    for key in ("network", "num_classes"):
        if key in config.explicit and str(chosen[key]) != str(meta[key]):
            raise UserError(f"--{key} {chosen[key]} contradicts the checkpoint's {meta[key]}", path,
                            f"drop --{key}: the checkpoint says which network it holds")
    merged = {**chosen, **meta}
    keep = ("network", "num_classes") + options_of(merged["network"]) + PREPROCESS_KEYS
    return {k: merged[k] for k in keep if k in merged}
