"""The config: a yaml of values (document 1) and help text (document 2), every key a ``--key`` flag.

Unlike the zoo's module, importing this parses nothing: call ``get_config(argv)``. Each key's
type is its default's (an int default also takes a float flag where the key is a float,
see FLOAT_KEYS), and every value is checked against RULES; an unknown key, a wrong type,
an out-of-range value or a bad choice raises UserError naming the key and what is allowed.
"""
import argparse
import os
from types import SimpleNamespace

import yaml

from src.errors import UserError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "default_config.yaml")

# Keys whose values are real numbers even where a yaml writes them as 0 or 1.
FLOAT_KEYS = {"lr_init", "lr_max", "lr_end", "warmup_epochs", "momentum", "weight_decay",
              "label_smooth_factor", "loss_scale", "bad_image_limit", "color_jitter"}


def _networks():
    from src.models import list_networks
    return list_networks()


# key -> ("choice", allowed values) or ("range", low, high, high_inclusive).
RULES = {
    "device_target": ("choice", ("Ascend", "GPU", "CPU")),
    "dataset": ("choice", ("cifar10", "imagenet", "synthetic")),
    "network": ("choice", _networks),
    "pool_pad": ("choice", ("pad", "same")),
    "shuffle_order": ("choice", ("paper", "megvii")),
    "activation": ("choice", ("relu", "relu6")),
    "layout": ("choice", ("megvii", "torchvision")),
    "conv_impl": ("choice", ("auto", "standard", "fast", "split", "native")),
    "input_norm": ("choice", ("imagenet", "megvii_bgr", "inception")),
    "lr_decay_mode": ("choice", ("steps", "poly", "cosine", "linear")),
    "amp_level": ("choice", ("O0", "O1", "O2", "O3")),
    "lr_scaling": ("choice", ("none", "linear")),
    "lr_base_batch": ("range", 0, None, True),
    "eval_interval": ("range", 0, None, True),
    "num_classes": ("range", 1, None, True),
    "image_size": ("range", 32, None, True),
    "batch_size": ("range", 1, None, True),
    "epoch_size": ("range", 1, None, True),
    "num_parallel_workers": ("range", 0, None, True),
    "synthetic_size": ("range", 1, None, True),
    "save_checkpoint_epochs": ("range", 1, None, True),
    "keep_checkpoint_max": ("range", 1, None, True),
    "log_interval": ("range", 1, None, True),
    "lr_init": ("range", 0.0, None, True),
    "lr_max": ("range", 0.0, None, True),
    "lr_end": ("range", 0.0, None, True),
    "warmup_epochs": ("range", 0.0, None, True),
    "momentum": ("range", 0.0, 1.0, True),
    "weight_decay": ("range", 0.0, None, True),
    "label_smooth_factor": ("range", 0.0, 1.0, False),
    "loss_scale": ("range", 1.0, None, True),
    "seed": ("range", 0, None, True),
    "bad_image_limit": ("range", 0.0, 1.0, True),
    "color_jitter": ("range", 0.0, 1.0, True),
}


def _parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(text)


def _kind(key, default):
    if isinstance(default, bool):
        return bool
    if key in FLOAT_KEYS or isinstance(default, float):
        return float
    if isinstance(default, int):
        return int
    return str


def _convert(key, value, kind, where):
    """Turn a yaml or command-line value into ``kind``, or raise a UserError."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            return _parse_bool(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(str(value)) if not isinstance(value, (int, float)) else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        return "" if value is None else str(value)
    except ValueError:
        allowed = {bool: "True or False", int: "an integer", float: "a number"}[kind]
        raise UserError(f"{key} must be {allowed}, got {value!r}", where,
                        f"give --{key} {allowed}") from None


def check_value(key, value, where=""):
    """Raise UserError if ``value`` breaks the rule for ``key``."""
    rule = RULES.get(key)
    if rule is None:
        return
    if rule[0] == "choice":
        allowed = rule[1]() if callable(rule[1]) else rule[1]
        if value not in allowed:
            shown = ", ".join(allowed) if len(allowed) <= 8 else \
                f"{_close(str(value), allowed).replace('--', '')} or another of the " \
                f"{len(allowed)} names `python -m src.models.complexity` lists"
            raise UserError(f"{key} {value!r} is not allowed", where, f"choose {shown}")
        return
    _, low, high, high_inclusive = rule
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if value < low or too_high:
        bound = f"at least {low}"
        if high is not None:
            bound += f" and {'at most' if high_inclusive else 'below'} {high}"
        raise UserError(f"{key} = {value} is out of range", where, f"give a value {bound}")


def _close(key, keys) -> str:
    import difflib
    close = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.4)
    return ", ".join(f"--{k}" for k in close) if close else "see --help"


def load_yaml(path):
    """(values, help) from a config yaml; UserError if it is missing or malformed."""
    if not os.path.isfile(path):
        raise UserError("config file not found", path, "give --config_path an existing yaml")
    try:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f)]
    except yaml.YAMLError as err:
        raise UserError(f"config is not valid yaml: {str(err).splitlines()[0]}", path,
                        "fix the yaml syntax") from None
    values = docs[0] if docs else None
    if not isinstance(values, dict):
        raise UserError("config has no key: value mapping", path, "see default_config.yaml")
    helps = docs[1] if len(docs) > 1 and isinstance(docs[1], dict) else {}
    return values, helps


def get_config(argv=None, config_path=None):
    """Parse ``argv`` (a list; None means no flags) over the yaml from ``--config_path``.

    Returns a SimpleNamespace of checked values, plus ``config_path`` and the set
    ``explicit`` of keys given on the command line.
    """
    argv = list(argv or [])
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config_path", default=config_path or DEFAULT_CONFIG)
    known, rest = pre.parse_known_args(argv)
    path = os.path.abspath(known.config_path)
    # default_config.yaml names every key; another yaml overrides some of them.
    values, helps = load_yaml(DEFAULT_CONFIG)
    kinds = {key: _kind(key, value) for key, value in values.items()}
    if path != DEFAULT_CONFIG:
        overrides, more_help = load_yaml(path)
        for key in overrides:
            if key not in values:
                raise UserError(f"unknown key {key!r}", path,
                                f"use a key of default_config.yaml, e.g. {_close(key, values)}")
        values = {**values, **overrides}
        helps = {**helps, **more_help}

    config = {}
    for key, value in values.items():
        if isinstance(value, (dict, list)):
            config[key] = value
            continue
        config[key] = _convert(key, value, kinds[key], path)

    parser = argparse.ArgumentParser(
        description=f"Every key of {os.path.basename(path)} is a flag.", add_help=True,
        allow_abbrev=False)
    parser.add_argument("--config_path", default=path, help="the yaml to start from")
    for key, value in config.items():
        if isinstance(value, (dict, list)):
            continue
        # argparse formats help with %: a literal one (the yaml's "1%") must be doubled.
        text = f"{helps.get(key, '')} (default: {value})".replace("%", "%%")
        parser.add_argument(f"--{key}", dest=key, default=None, metavar=kinds[key].__name__,
                            help=text)
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
