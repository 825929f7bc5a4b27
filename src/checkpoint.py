"""Checkpoints: the record of network and pixels they carry, reading them safely, loading them.

Every checkpoint we write records a NetworkRecord (network, classes, layout options, the pixels
its weights expect, the class names), so eval, export, infer and resume rebuild exactly the
network that was trained (the zoo's ShuffleNetV2 eval silently built 1.0x whatever the
checkpoint). ``resolve`` is the one rule for which value wins: a command-line flag, then the
checkpoint's record, then the yaml; a flag that contradicts what the weights fix is refused.
"""
import contextlib
import dataclasses
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
from src.model_utils.config import with_values
from src.models import create_network, list_networks, mindcv_layout, options_of, stem_and_head

# What the weights fix: the network, its classes, and the layout options of its family
# (pool_pad, shuffle_order, activation, layout).
WEIGHT_KEYS = ("network", "num_classes")
OPTION_KEYS = ("pool_pad", "shuffle_order", "activation", "layout")
# What eval transforms feed the weights (see dataset.eval_image_ops).
PIXEL_KEYS = ("dataset", "image_size", "input_norm", "eval_resize")
# The class-folder names of an image-folder run, label order, as a JSON list (infer prints them).
CLASS_NAMES = "class_names"
# Where a checkpoint stands in its run: the epoch and step of its name, and the optimizer's own
# step counter (``global_step``, saved with the train network), which a resume continues from.
TRAIN_STATE_KEYS = ("epoch_num", "step_num", "global_step")
# The validation files a run held out of one folder (dataset.split_record), as text.
SPLIT_KEYS = ("val_fraction", "val_split")
# The moving average of the weights a run with ``ema`` keeps beside them: "ema.<parameter>".
EMA_PREFIX = "ema."


@dataclasses.dataclass(frozen=True)
class NetworkRecord:
    """What network and what pixels: everything a checkpoint (or an export's sidecar json)
    records for its weights to be used again, and what every consumer of weights builds from.

    ``options`` holds the family's layout options (options_of(network)) as sorted pairs.
    """
    network: str
    num_classes: int
    options: tuple = ()
    dataset: str = "imagenet"
    image_size: int = 224
    input_norm: str = "imagenet"
    eval_resize: int = 0
    class_names: tuple = ()

    @classmethod
    def from_values(cls, values: dict) -> "NetworkRecord":
        """The record of ``values`` (a config's attributes, or a checkpoint's metadata): its
        network and classes, the family options it gives, its pixels (the defaults where it
        gives none)."""
        network = values["network"]
        options = tuple(sorted((k, values[k]) for k in options_of(network) if k in values))
        return cls(network, int(values["num_classes"]), options,
                   values.get("dataset", cls.dataset), int(values.get("image_size",
                                                                      cls.image_size)),
                   values.get("input_norm", cls.input_norm), int(values.get("eval_resize", 0)),
                   tuple(values.get(CLASS_NAMES) or ()))

    @classmethod
    def from_config(cls, config, class_names=()) -> "NetworkRecord":
        return cls.from_values({**vars(config), CLASS_NAMES: class_names})

    def as_dict(self) -> dict:
        """Flat metadata: network, num_classes, each option, the pixel keys, class names."""
        out = {"network": self.network, "num_classes": self.num_classes, **dict(self.options),
               "dataset": self.dataset, "image_size": self.image_size,
               "input_norm": self.input_norm, "eval_resize": self.eval_resize}
        if self.class_names:
            out[CLASS_NAMES] = list(self.class_names)
        return out

    def as_checkpoint_meta(self) -> dict:
        """as_dict() in the form save_checkpoint's append_dict takes (class names as JSON)."""
        meta = self.as_dict()
        if self.class_names:
            meta[CLASS_NAMES] = json.dumps(list(self.class_names))
        return meta

    def build(self, **kwargs):
        """The network this record describes, random weights (``kwargs``: conv_impl,
        in_channels): every network built from weights' metadata is built here."""
        return create_network(self.network, num_classes=self.num_classes, **dict(self.options),
                              **kwargs)

    def data_config(self, config):
        """``config`` with this record's pixels and classes, for the data pipeline."""
        return with_values(config, dataset=self.dataset, image_size=self.image_size,
                           input_norm=self.input_norm, eval_resize=self.eval_resize,
                           num_classes=self.num_classes)


def resolve(config, recorded: dict, where: str, fixed=None, carried=PIXEL_KEYS) -> NetworkRecord:
    """The one rule for what network and what pixels: a flag given on the command line wins,
    then what the checkpoint (or export) records, then the yaml. It returns a record and changes
    nothing it was handed.

    ``fixed``: the keys the weights fix (default: network, num_classes and the network's layout
    options): the recorded value is used, and a flag that contradicts it is refused. ``carried``:
    the recorded keys that apply unless a flag says otherwise (the pixels). Keys in neither come
    from ``config``. Only what the checkpoint records is used: a checkpoint without a record (and
    not identified by its shapes) leaves every value to the flags and the yaml.
    """
    def value(key, is_fixed):
        given = getattr(config, key)
        if key not in recorded:
            return given
        if is_fixed and key in config.explicit and str(given) != str(recorded[key]):
            raise UserError(f"--{key} {given} contradicts the checkpoint's {recorded[key]}", where,
                            f"drop --{key}: the checkpoint says which {key} its weights are for")
        if is_fixed or (key in carried and key not in config.explicit):
            return recorded[key]
        return given

    fixed = WEIGHT_KEYS + OPTION_KEYS if fixed is None else fixed
    values = {"network": value("network", "network" in fixed)}
    for key in ("num_classes",) + options_of(values["network"]) + PIXEL_KEYS:
        values[key] = value(key, key in fixed)
    values[CLASS_NAMES] = recorded.get(CLASS_NAMES, ())
    return NetworkRecord.from_values(values)


def require_network(config, recorded: dict, path: str, use: str) -> None:
    """Training weights (``use``: "resume", "fine-tune") must be of the network being trained:
    the checkpoint does not silently change which network a run trains."""
    if recorded.get("network", config.network) != config.network:
        raise UserError(f"checkpoint is of {recorded['network']}, not {config.network}", path,
                        f"give --network {recorded['network']} to {use} it, or a checkpoint of "
                        f"{config.network}")


def read_checkpoint(path: str) -> tuple:
    """(parameters, metadata) of a checkpoint; UserError if it is missing or unreadable.

    metadata holds the record keys (WEIGHT_KEYS, OPTION_KEYS, PIXEL_KEYS, class names) and the
    TRAIN_STATE_KEYS the file has; for a file without them whose shapes are one of our networks,
    what those shapes prove (``identify_network``).
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
    for key in WEIGHT_KEYS + OPTION_KEYS + PIXEL_KEYS + TRAIN_STATE_KEYS + SPLIT_KEYS:
        if key in params:
            value = params.pop(key)
            meta[key] = value if isinstance(value, str) else int(value.asnumpy().reshape(-1)[0])
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
    """The record of a checkpoint that has none (MindCV's), as far as its shapes prove it: which
    of our networks has exactly these parameter shapes in MindCV's layout, its classes, and the
    layout options that compute what MindCV's code computes. Not the pixels: those are the
    user's flags and yaml. {} if no network matches."""
    shapes = {name: tuple(p.shape) for name, p in params.items()}
    if "classifier.weight" not in shapes:
        return {}
    classes, features = shapes["classifier.weight"]
    for name in list_networks():
        layout = mindcv_layout(name)
        if layout["marker"] not in shapes or \
                stem_and_head(name) != (shapes[layout["stem"]][0], features):
            continue
        meta = {"network": name, "num_classes": classes, **layout["options"]}
        net = create_network(name, num_classes=classes, conv_impl="mindspore", **layout["options"])
        if all(shapes.get(p.name) == tuple(p.shape) for p in net.get_parameters()):
            return meta
    return {}


def load_weights(net, params: dict, path: str, skip=(), use_ema: bool = True) -> str:
    """Load ``params`` into ``net``, every parameter of it except those starting with ``skip``;
    returns which weights: "ema" (the moving average a run with ``ema`` saved beside its weights,
    taken unless ``use_ema`` is False) or "raw".

    Refuses, naming the first offending parameter, when one is missing, has another shape or
    holds NaN or Inf.
    """
    wanted = {p.name: p for p in net.get_parameters() if not p.name.startswith(tuple(skip))}
    which = "ema" if use_ema and wanted and all(EMA_PREFIX + n in params for n in wanted) \
        else "raw"
    if which == "ema":
        params = {n: params[EMA_PREFIX + n] for n in wanted}
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
    return which


PARTIAL_PREFIX = ".partial-"  # a checkpoint being written, before its rename


def partial_path(path: str) -> str:
    """Where ``save_atomically`` writes ``path`` before the rename."""
    folder, name = os.path.split(path)
    return os.path.join(folder, PARTIAL_PREFIX + name)


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
