"""The config: a yaml of values (document 1) and help text (document 2), every key a ``--key`` flag.

Unlike the zoo's module, importing this parses nothing: call ``get_config(argv)``. Each key's
type is its default's (an int default also takes a float flag where the key is a float,
see FLOAT_KEYS), and every value is checked against RULES; an unknown key, a wrong type,
an out-of-range value or a bad choice raises UserError naming the key and what is allowed.
"""
import math
import os
import sys
from types import SimpleNamespace
from typing import NamedTuple, Optional

import yaml

from src.cli import ArgumentParser, run_main
from src.errors import UserError

# The repository's folder: the entry points and the yaml recipes are at its top.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "default_config.yaml")

# Keys whose values are real numbers even where a yaml writes them as 0 or 1.
FLOAT_KEYS = {"lr_init", "lr_max", "lr_end", "warmup_epochs", "momentum", "weight_decay",
              "label_smooth_factor", "loss_scale", "scale_factor", "bad_image_limit",
              "color_jitter"}


def owned(module: str, name: str, *args):
    """The list ``module.name`` owns (a tuple, a dict's keys, or what a function returns given
    ``args``), read when first needed: the modules that use a choice own its values, and
    importing them here would load MindSpore before the config is even parsed."""
    def values() -> tuple:
        import importlib
        found = getattr(importlib.import_module(module), name)
        return tuple(found(*args) if callable(found) else found)
    return values


class Choice(NamedTuple):
    """The value must be one of ``values`` (a tuple, or ``owned``'s reader of the module that
    owns the list); ``hidden`` values are taken too but not listed (old names). ``listed``
    False: a long list (the registry's networks), shown by the names near a wrong value."""
    values: object
    hidden: object = ()
    listed: bool = True

    def allowed(self) -> tuple:
        return self.shown() + _values(self.hidden)

    def shown(self) -> tuple:
        return _values(self.values)


def _values(values) -> tuple:
    return tuple(values() if callable(values) else values)


class Range(NamedTuple):
    """low <= value <= high (value < high when not high_inclusive), and a multiple of
    ``multiple``; high None is unbounded."""
    low: float
    high: Optional[float] = None
    high_inclusive: bool = True
    multiple: int = 1


class Pair(NamedTuple):
    """Two numbers (min, max): low < min <= max (a yaml list [a, b] or a flag "a,b")."""
    low: float = 0.0


class Check(NamedTuple):
    """The value must pass ``module.name(value)``, the parser of the module that uses it, which
    raises a ValueError of (what is wrong, what to do)."""
    module: str
    name: str
    text: str  # what docs/CONFIG.md says is allowed


# The largest image side a run takes (a multiple of 32, as the networks' five stride-2 stages
# need): 1024 is 21x the pixels of ImageNet's 224; beyond it a batch outgrows most memory.
MAX_IMAGE_SIZE = 1024

# MindCV's names of keys that mean what ours mean: taken as ours, so a MindCV recipe reads the
# same.
KEY_ALIASES = {"label_smoothing": "label_smooth_factor"}

# Every key that is not free text has a rule (tests check that each number and choice does).
RULES = {
    "device_target": Choice(("Ascend", "GPU", "CPU")),
    "dataset": Choice(("cifar10", "imagenet", "mindrecord", "synthetic")),
    "network": Choice(owned("src.models", "list_networks"), listed=False),
    "pool_pad": Choice(owned("src.models.layers", "POOL_PADS")),
    "shuffle_order": Choice(owned("src.models.layers", "SHUFFLE_ORDERS")),
    "activation": Choice(owned("src.models", "option_values", "activation")),
    "layout": Choice(owned("src.models", "option_values", "layout")),
    # conv_impl's names before 2026-11 (layers.ALIASES) are still taken, not listed.
    "conv_impl": Choice(owned("src.models.layers", "CONV_IMPLS"),
                        hidden=owned("src.models.layers", "ALIASES")),
    "input_norm": Choice(owned("src.dataset", "INPUT_NORMS")),
    "runtime": Choice(owned("src.deploy.runtimes", "RUNTIMES")),
    "lr_decay_mode": Choice(owned("src.lr_generator", "DECAY_MODES")),
    "amp_level": Choice(("O0", "O1", "O2", "O3")),
    "lr_scaling": Choice(("none", "linear")),
    "loss_scale_type": Choice(("fixed", "dynamic")),
    "device_id": Range(-1),
    "seed": Range(0, 2 ** 32 - 1),  # numpy's and MindSpore's seeds are unsigned 32-bit
    "log_interval": Range(1),
    "image_size": Range(32, MAX_IMAGE_SIZE, multiple=32),
    "eval_resize": Range(0, 2 * MAX_IMAGE_SIZE),
    "num_parallel_workers": Range(0),
    "synthetic_size": Range(1),
    "bad_image_limit": Range(0.0, 1.0),
    "color_jitter": Range(0.0, 1.0),
    "num_classes": Range(1),
    "epoch_size": Range(1),
    "batch_size": Range(1),
    "lr_init": Range(0.0),
    "lr_max": Range(0.0),
    "lr_end": Range(0.0),
    "warmup_epochs": Range(0.0),
    "opt": Choice(owned("src.training.optim", "OPTIMIZERS")),
    "momentum": Range(0.0, 1.0),
    "beta1": Range(0.0, 1.0, high_inclusive=False),
    "beta2": Range(0.0, 1.0, high_inclusive=False),
    "eps": Range(1e-12),
    "rmsprop_decay": Range(0.0, 1.0, high_inclusive=False),
    "drop_rate": Range(0.0, 1.0, high_inclusive=False),
    "mixup": Range(0.0),
    "cutmix": Range(0.0),
    "cutmix_prob": Range(0.0, 1.0),
    "mixup_switch_prob": Range(0.0, 1.0),
    "gradient_accumulation_steps": Range(1),
    "clip_value": Range(1e-12),
    "ema_decay": Range(1e-12, 1.0, high_inclusive=False),
    "auto_augment": Check("src.augment", "parse_auto_augment",
                          "\"\", randaug-m<M>[-n<N>][-mstd<S>][-mmax<X>][-inc<0 or 1>], autoaug, "
                          "trivialaugwide"),
    "re_prob": Range(0.0, 1.0),
    "re_scale": Pair(0.0),
    "re_ratio": Pair(0.0),
    "re_value": Check("src.augment", "check_erasing_value", "a whole number, or random"),
    "weight_decay": Range(0.0),
    "freeze": Check("src.models.backbone", "parse_freeze", "none, backbone, stages:N (N = 0 to 5)"),
    "head_lr_scale": Range(0.0),
    "val_fraction": Range(0.0, 1.0, high_inclusive=False),
    "label_smooth_factor": Range(0.0, 1.0, high_inclusive=False),
    "loss_scale": Range(1.0),
    "scale_factor": Range(1.0),
    "scale_window": Range(1),
    "save_checkpoint_epochs": Range(1),
    "keep_checkpoint_max": Range(1),
    "lr_base_batch": Range(0),
    "eval_interval": Range(0),
    "eval_batch_size": Range(1),
}


def _parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(text)


def parse_bool(text: str, key: str) -> bool:
    """True/False (also true, 1, yes / false, 0, no) as every boolean flag takes it; a typo is a
    UserError, not a silent False."""
    return _convert(key, text, bool, f"--{key}")


def _kind(key, default):
    if isinstance(default, bool):
        return bool
    if isinstance(default, list):
        return tuple
    if key in FLOAT_KEYS or isinstance(default, float):
        return float
    if isinstance(default, int):
        return int
    return str


def _convert(key, value, kind, where):
    """Turn a yaml or command-line value into ``kind``, or raise a UserError."""
    try:
        if kind is tuple:  # two numbers: a yaml list, or "a,b" on the command line
            parts = value.split(",") if isinstance(value, str) else value
            if not isinstance(parts, (list, tuple)) or len(parts) != 2 or \
                    any(isinstance(p, bool) for p in parts):
                raise ValueError(value)
            pair = tuple(float(p) for p in parts)
            if not all(math.isfinite(p) for p in pair):
                raise ValueError(value)
            return pair
        if isinstance(value, (list, dict)):  # no other key takes a yaml list or mapping
            raise ValueError(value)
        if kind is bool:
            if isinstance(value, bool):
                return value
            return _parse_bool(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(str(value)) if not isinstance(value, (int, float)) else int(value)
        if kind is float:
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise ValueError(value)  # NaN and Inf compare false with every bound
            return float(value)
        return "" if value is None else str(value)
    except (ValueError, TypeError):
        allowed = {bool: "True or False", int: "an integer", float: "a finite number",
                   str: "one text value", tuple: "two numbers a,b"}[kind]
        flag = f"--{key}" if where.startswith("--") else key
        raise UserError(f"{key} must be {allowed}, got {value!r}", where,
                        f"give {flag} {allowed}") from None


def check_value(key, value, where=""):
    """Raise UserError if ``value`` breaks the rule for ``key``."""
    rule = RULES.get(key)
    if isinstance(rule, Check) and value != "":
        import importlib
        try:
            getattr(importlib.import_module(rule.module), rule.name)(value)
        except ValueError as err:
            what, todo = err.args
            raise UserError(f"{key} {value!r}: {what}", where, todo) from None
    elif isinstance(rule, Pair):
        if not rule.low < value[0] <= value[1]:
            raise UserError(f"{key} = {value[0]:g},{value[1]:g} is out of range", where,
                            f"give two numbers above {rule.low:g}, the smaller first")
    elif isinstance(rule, Choice):
        allowed = rule.allowed()
        if value not in allowed:  # a registry's long list: the near names and where it is
            shown = ", ".join(rule.shown()) if rule.listed else \
                f"{_close(str(value), allowed).replace('--', '')} or another of the " \
                f"{len(allowed)} names `python -m src.tools.complexity` lists"
            raise UserError(f"{key} {value!r} is not allowed", where, f"choose {shown}")
    elif isinstance(rule, Range):
        too_high = rule.high is not None and (
            value > rule.high if rule.high_inclusive else value >= rule.high)
        if value < rule.low or too_high or (rule.multiple > 1 and value % rule.multiple):
            bound = f"at least {rule.low}"
            if rule.high is not None:
                bound += f" and {'at most' if rule.high_inclusive else 'below'} {rule.high}"
            if rule.multiple > 1:
                bound = f"a multiple of {rule.multiple}, {bound}"
            raise UserError(f"{key} = {value} is out of range", where, f"give a value {bound}")


def _close(key, keys) -> str:
    import difflib
    close = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.4)
    return ", ".join(f"--{k}" for k in close) if close else "see --help"


class _RepeatedKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, except that a key written twice in one mapping is an error (plain
    yaml keeps the last value without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _RepeatedKey(f"key {key!r} is written twice (line "
                                   f"{key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path):
    """(values, help) from a config yaml; UserError if it is missing or malformed."""
    if not os.path.isfile(path):
        raise UserError("config file not found", path, "give --config_path an existing yaml")
    try:
        with open(path, encoding="utf-8") as f:
            docs = list(yaml.load_all(f, Loader=_UniqueKeyLoader))
    except UnicodeDecodeError as err:
        raise UserError(f"config is not UTF-8 text (byte {err.object[err.start]:#04x} at "
                        f"offset {err.start})", path, "save the yaml as UTF-8") from None
    except _RepeatedKey as err:
        raise UserError(f"config {err}", path, "keep one of the two values") from None
    except yaml.YAMLError as err:
        raise UserError(f"config is not valid yaml: {str(err).splitlines()[0]}", path,
                        "fix the yaml syntax") from None
    values = docs[0] if docs else None
    if not isinstance(values, dict):
        raise UserError("config has no key: value mapping", path, "see default_config.yaml")
    helps = docs[1] if len(docs) > 1 and isinstance(docs[1], dict) else {}
    return values, helps


def _rename_aliases(overrides: dict, path: str) -> None:
    """A yaml's MindCV names (KEY_ALIASES) as our keys, in place."""
    for alias, key in KEY_ALIASES.items():
        if alias in overrides:
            if key in overrides:
                raise UserError(f"both {alias!r} and {key!r} are given", path,
                                f"keep one: {alias} is MindCV's name of {key}")
            overrides[key] = overrides.pop(alias)


def get_config(argv=None, config_path=None):
    """Parse ``argv`` (a list; None means no flags) over the yaml from ``--config_path``.

    Returns a SimpleNamespace of checked values, plus ``config_path`` and the set
    ``explicit`` of keys given on the command line.
    """
    argv = list(argv or [])
    pre = ArgumentParser(add_help=False)
    pre.add_argument("--config_path", default=config_path or DEFAULT_CONFIG)
    known, rest = pre.parse_known_args(argv)
    path = os.path.abspath(known.config_path)
    # default_config.yaml names every key; another yaml overrides some of them.
    values, helps = load_yaml(DEFAULT_CONFIG)
    kinds = {key: _kind(key, value) for key, value in values.items()}
    if path != DEFAULT_CONFIG:
        overrides, more_help = load_yaml(path)
        _rename_aliases(overrides, path)
        for key in overrides:
            if key not in values:
                raise UserError(f"unknown key {key!r}", path,
                                f"use a key of default_config.yaml, e.g. {_close(key, values)}")
        values = {**values, **overrides}
        helps = {**helps, **more_help}

    config = {key: _convert(key, value, kinds[key], path) for key, value in values.items()}

    parser = ArgumentParser(
        description=f"Every key of {os.path.basename(path)} is a flag.", add_help=True,
        allow_abbrev=False)
    parser.add_argument("--config_path", default=path, help="the yaml to start from")
    for key, value in config.items():
        # argparse formats help with %: a literal one (the yaml's "1%") must be doubled.
        text = f"{helps.get(key, '')} (default: {value})".replace("%", "%%")
        parser.add_argument(f"--{key}", dest=key, default=None, metavar=kinds[key].__name__,
                            help=text)
    for alias, key in KEY_ALIASES.items():
        parser.add_argument(f"--{alias}", dest=key, default=None, metavar=kinds[key].__name__,
                            help=f"MindCV's name of --{key}")
    flags, unknown = parser.parse_known_args(rest)
    if unknown:
        bad = next(u for u in unknown if u.startswith("--")) if any(
            u.startswith("--") for u in unknown) else unknown[0]
        name = bad[2:].split("=")[0]
        raise UserError(f"unknown key {name!r}" if bad.startswith("--") else
                        f"unexpected argument {bad!r}", "command line",
                        f"use a key of default_config.yaml, e.g. {_close(name, values)}")

    explicit = set()
    for key, value in vars(flags).items():
        if key == "config_path" or value is None:
            continue
        config[key] = _convert(key, value, kinds[key], f"--{key}")
        explicit.add(key)
    for key, value in config.items():
        check_value(key, value, f"--{key}" if key in explicit else path)
    return SimpleNamespace(**config, config_path=path, explicit=explicit)


def with_values(config, **values):
    """A copy of ``config`` with ``values`` set: layers derive a config rather than change the
    one they were handed."""
    return SimpleNamespace(**{**vars(config), **values})


def split_config_args(argv) -> tuple:
    """(config flags, the rest) of a command line: every ``--key value`` or ``--key=value`` whose
    key is a config key (or config_path), wherever it stands, so an entry point with its own
    flags and positional arguments takes config keys anywhere on the line."""
    keys = set(load_yaml(DEFAULT_CONFIG)[0]) | {"config_path"}
    config_args, rest, argv = [], [], list(argv)
    while argv:
        token = argv.pop(0)
        name = token[2:].split("=", 1)[0] if token.startswith("--") else None
        if name in keys:
            config_args.append(token)
            if "=" not in token and argv:
                config_args.append(argv.pop(0))
        else:
            rest.append(token)
    return config_args, rest


def markdown_table() -> str:
    """docs/CONFIG.md: every key of default_config.yaml with its default, its rule and its help
    (``python -m src.model_utils.config > docs/CONFIG.md``; a test checks the file is this)."""
    values, helps = load_yaml(DEFAULT_CONFIG)
    lines = ["# Config keys", "",
             "Generated from `default_config.yaml` by `python -m src.model_utils.config > "
             "docs/CONFIG.md`.", "",
             "`default_config.yaml` names every key; another yaml given by `--config_path` "
             "overrides some of them, and every key is also a flag (`--epoch_size 3`, "
             "`--is_distributed True`). A value of the wrong type, out of its range or not one of "
             "its choices is refused in one line naming the key. A checkpoint's record wins over "
             "the yaml for the network, its classes and layout and its pixels; a flag wins over "
             "both (see TRAINING.md).", "",
             "| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for key, value in values.items():
        rule = RULES.get(key)
        if isinstance(rule, Choice):
            allowed = ", ".join(rule.shown()) if rule.listed else "a network name"
        elif isinstance(rule, Range):
            allowed = f"{rule.low} .. {rule.high if rule.high is not None else ''}"
            if rule.multiple > 1:
                allowed += f", a multiple of {rule.multiple}"
        elif isinstance(rule, Check):
            allowed = rule.text
        elif isinstance(rule, Pair):
            allowed = f"two numbers above {rule.low:g}, the smaller first"
        else:
            allowed = "True, False" if isinstance(value, bool) else "text"
        text = str(helps.get(key, "")).replace("|", "\\|")
        lines.append(f"| `{key}` | `{value!r}` | {allowed} | {text} |")
    return "\n".join(lines) + "\n"


def main(argv) -> None:
    """``python -m src.model_utils.config``: docs/CONFIG.md's table."""
    ArgumentParser(prog="python -m src.model_utils.config", allow_abbrev=False,
                   description="Print every config key as docs/CONFIG.md's table.").parse_args(argv)
    print(markdown_table(), end="")


if __name__ == "__main__":
    sys.exit(run_main(main))
