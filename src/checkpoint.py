"""Checkpoints: the network metadata they carry, reading them safely, loading them into networks.

Every checkpoint we write records the network name, num_classes and layout options, so eval,
export and resume rebuild exactly the network that was trained (the zoo's ShuffleNetV2 eval
silently built 1.0x whatever the checkpoint).
"""
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import time

import mindspore as ms
import numpy as np

from src.errors import UserError
from src.models import create_network, family_of, list_networks, options_of, stem_and_head

META_KEYS = ("network", "num_classes", "pool_pad", "shuffle_order", "activation", "layout")
# The class-folder names of an image-folder run, label order, as a JSON list (infer prints them).
CLASS_NAMES = "class_names"
# What eval transforms the network was trained with (see dataset.eval_image_ops).
PREPROCESS_KEYS = ("dataset", "image_size", "input_norm")
TRAIN_STATE_KEYS = ("epoch_num", "step_num")
# A checkpoint without our metadata is read as MindCV's: its networks are ours with these
# options (tested against MindCV 0.3.0's own), trained on ImageNet at 224.
MINDCV_META = {"pool_pad": "same", "shuffle_order": "megvii", "activation": "relu",
               "layout": "megvii", "dataset": "imagenet", "image_size": 224,
               "input_norm": "imagenet"}
# Parameters each family's checkpoints have, and the stem conv whose outputs tell widths apart.
FAMILY_KEYS = {"shufflenet_v1": ("features.0.branch_main_1.0.weight", "first_conv.0.weight"),
               "shufflenet_v2": ("features.0.branch_main.0.weight", "first_conv.0.weight"),
               "mobilenet_v1": ("features.3.0.weight", "features.0.weight")}


def network_meta(config) -> dict:
    """The metadata that rebuilds ``config``'s network: name, num_classes and its layout options."""
    meta = {"network": config.network, "num_classes": int(config.num_classes)}
    for option in options_of(config.network):
        meta[option] = getattr(config, option)
    meta.update({"dataset": config.dataset, "image_size": int(config.image_size),
                 "input_norm": config.input_norm})
    return meta


def build_network(meta: dict, **kwargs):
    """The network that ``meta`` (network_meta or a checkpoint's) describes."""
    options = {k: meta[k] for k in options_of(meta["network"]) if k in meta}
    return create_network(meta["network"], num_classes=int(meta["num_classes"]), **options,
                          **kwargs)


def read_checkpoint(path: str) -> tuple:
    """(parameters, metadata) of a checkpoint; UserError if it is missing or unreadable.

    metadata holds the META_KEYS, PREPROCESS_KEYS and TRAIN_STATE_KEYS the file has; for a file
    without them whose shapes are one of our networks, MindCV's (``identify_network``).
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
    if CLASS_NAMES in params:
        meta[CLASS_NAMES] = json.loads(params.pop(CLASS_NAMES))
    if "network" not in meta:
        meta = identify_network(merge_split_groups(params))
        if meta:
            print(f"checkpoint: no metadata; its shapes are MindCV's {meta['network']} with "
                  f"{meta['num_classes']} classes, read as such ({path})", flush=True)
    return params, meta


def merge_split_groups(params: dict) -> dict:
    """MindCV after PR #763 stores a grouped 1x1 conv as ``X.convs.k.weight``, one per group;
    0.3.0 (and we) as one ``X.weight``. Returns ``params`` with the split ones concatenated."""
    split = {}
    for name in list(params):
        match = re.fullmatch(r"(.*)\.convs\.(\d+)\.weight", name)
        if match:
            split.setdefault(match.group(1), {})[int(match.group(2))] = params.pop(name)
    for prefix, parts in split.items():
        data = ms.ops.concat([parts[k].data for k in sorted(parts)], axis=0)
        params[f"{prefix}.weight"] = ms.Parameter(data, name=f"{prefix}.weight")
    return params


def identify_network(params: dict) -> dict:
    """Metadata for a checkpoint that has none (MindCV's): which of our networks has exactly
    these parameter shapes in MindCV's layout, and how many classes. {} if none has."""
    shapes = {name: tuple(p.shape) for name, p in params.items()}
    if "classifier.weight" not in shapes:
        return {}
    classes, features = shapes["classifier.weight"]
    for family, (marker, stem) in FAMILY_KEYS.items():
        if marker not in shapes:
            continue
        for name in list_networks():
            if family_of(name) != family or stem_and_head(name) != (shapes[stem][0], features):
                continue
            meta = {"network": name, "num_classes": classes,
                    **{k: MINDCV_META[k] for k in options_of(name)}}
            net = build_network(meta, conv_impl="standard")
            if all(shapes.get(p.name) == tuple(p.shape) for p in net.get_parameters()):
                return {**meta, **{k: MINDCV_META[k] for k in PREPROCESS_KEYS}}
    return {}


def load_weights(net, params: dict, path: str, skip=()) -> None:
    """Load ``params`` into ``net``, every parameter of it except those starting with ``skip``.

    Refuses, naming the first offending parameter, when one is missing, has another shape or
    holds NaN or Inf.
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
    broken = [name for name in wanted if not np.isfinite(params[name].asnumpy()).all()]
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        raise UserError(f"checkpoint holds NaN or Inf weights ({broken[0]!r}{more})", path,
                        "use an earlier checkpoint of the run: this one would give NaN scores")
    ms.load_param_into_net(net, {n: params[n] for n in wanted}, strict_load=True)


def use_checkpoint_preprocess(config, meta: dict) -> None:
    """Set the config's data set, image size and input normalisation to the ones the checkpoint
    was trained with, except those given on the command line."""
    for key in PREPROCESS_KEYS:
        if key in meta and key not in config.explicit:
            setattr(config, key, meta[key])


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
    keep = ("network", "num_classes") + options_of(merged["network"]) + PREPROCESS_KEYS + \
        (CLASS_NAMES,)
    return {k: merged[k] for k in keep if k in merged}


def partial_path(path: str) -> str:
    """Where ``save_atomically`` writes ``path`` before the rename."""
    folder, name = os.path.split(path)
    return os.path.join(folder, ".partial-" + name)


def save_atomically(network, path: str, append: dict) -> None:
    """Write a checkpoint so that ``path`` is always either absent or whole.

    The weights go to ``.partial-<name>`` beside it (hidden, so no glob of checkpoints sees it),
    are flushed to disk, and only then renamed to ``path``
    (a rename within a folder is atomic), so a run killed at any moment leaves every earlier
    checkpoint, and this one if it exists, loadable. A full disk or another write error is one
    UserError naming the folder (and the free and needed space), with nothing half-written left
    behind. Test hook: with the environment variable ZOO_TEST_HANG_IN_SAVE=E the save of epoch E
    stops for 10 minutes between the write and the rename, so a test can kill the run inside
    the save.
    """
    tmp = partial_path(path)
    try:
        with _mindspore_log_muted():  # it logs a CRITICAL line of its own before raising
            ms.save_checkpoint(network, tmp, append_dict=append)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except OSError as err:
        for leftover in (tmp, os.path.splitext(tmp)[0] + ".tmp"):  # ours, and MindSpore's own
            if os.path.exists(leftover):
                os.remove(leftover)
        raise write_error(err, path, checkpoint_bytes(network)) from err
    if os.environ.get("ZOO_TEST_HANG_IN_SAVE") == str(append.get("epoch_num")):
        print(f"test hook: hanging inside the save of {tmp}", flush=True)
        time.sleep(600)
    os.replace(tmp, path)


def write_error(err: OSError, path: str, needed: int) -> UserError:
    """The one line for a file that could not be written: for a full disk, the folder, its free
    space and what the file needs."""
    folder = os.path.dirname(os.path.abspath(path))
    if err.errno == errno.ENOSPC:
        free = shutil.disk_usage(folder).free
        return UserError(f"disk full writing {os.path.basename(path)}: {free / 2**20:.1f} MB free, "
                         f"about {needed / 2**20:.1f} MB needed", folder,
                         "free that much space (what was saved before is whole and loads) or "
                         "give another folder, then --resume auto")
    return UserError(f"cannot write {os.path.basename(path)} ({err.strerror})", folder,
                     "give a folder you can write to")


def checkpoint_bytes(network) -> int:
    """About what a checkpoint of ``network`` (a Cell, or a list of {"name", "data"}) takes."""
    tensors = [p["data"] for p in network] if isinstance(network, list) else \
        network.get_parameters()
    return sum(int(np.prod(t.shape)) * t.itemsize for t in tensors)


@contextlib.contextmanager
def _mindspore_log_muted():
    """Silence MindSpore's Python logger (named ME.mindspore.log.<pid> in 2.10) for a moment."""
    log = logging.getLogger(f"ME.mindspore.log.{os.getpid()}")
    was, log.disabled = log.disabled, True
    try:
        yield
    finally:
        log.disabled = was
