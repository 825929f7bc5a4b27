"""The one registry of networks: every variant by name, built by ``create_network``, read from
the families' records (family.Family: each family module's ``FAMILY``)."""
import difflib

from . import mobilenet_v1, shufflenet_v1, shufflenet_v2

FAMILIES = (shufflenet_v1.FAMILY, shufflenet_v2.FAMILY, mobilenet_v1.FAMILY)
# name -> (family record, constructor arguments)
_REGISTRY = {name: (family, args) for family in FAMILIES for name, args in family.variants.items()}


def list_networks() -> list:
    """Every registered network name, sorted."""
    return sorted(_REGISTRY)


def family_record(name: str):
    """The record of ``name``'s family (family.Family): its options, published weights, MindCV
    layout and other sources' checkpoint layouts."""
    _check_name(name)
    return _REGISTRY[name][0]


def family_of(name: str) -> str:
    """The family's short name (shufflenet_v1, shufflenet_v2, mobilenet_v1)."""
    return family_record(name).name


def options_of(name: str) -> tuple:
    """The layout options the family of ``name`` takes (pool_pad, shuffle_order, activation...)."""
    return family_record(name).options


def published_weights(name: str) -> tuple:
    """The ImageNet weights sources publish of ``name`` (weights.PublishedWeights), in the order
    its family lists them (the first is the default)."""
    return family_record(name).pretrained.get(name, ())


def mindcv_layout(name: str) -> dict:
    """How MindCV's checkpoints of ``name``'s family look: {"marker": a parameter only that
    family has, "stem": the stem conv's parameter, "options": our options for its code}."""
    return family_record(name).mindcv_layout


def option_values(option: str) -> tuple:
    """The values a family's own option takes (``layout``, ``activation``), from the family that
    owns it."""
    for family in FAMILIES:
        if option in family.option_values:
            return tuple(family.option_values[option])
    raise KeyError(f"no family owns the option {option!r}")


def checkpoint_sources() -> dict:
    """source tag -> the families whose checkpoints of that source convert (megvii, torchvision,
    timm), in registry order."""
    found = {}
    for family in FAMILIES:
        for tag in family.sources:
            found.setdefault(tag, []).append(family.name)
    return {tag: tuple(names) for tag, names in found.items()}


def variant_args(name: str) -> dict:
    """The family constructor's arguments that make ``name`` (group, width, alpha...)."""
    _check_name(name)
    return dict(_REGISTRY[name][1])


def stem_and_head(name: str) -> tuple:
    """(stem conv output channels, classifier input features) of the network ``name``."""
    _check_name(name)
    family, args = _REGISTRY[name]
    return family.stem_and_head(**args)


def create_network(name: str, num_classes: int = None, **kwargs):
    """Build the network ``name`` with ``num_classes`` outputs (default 1000), random weights
    (MindCV's initialisation).

    ``kwargs`` are the family's options (``pool_pad``, ``shuffle_order``, ``conv_impl``,
    ``drop_rate``, ``activation``, ``in_channels``). An unknown name raises ValueError with close
    matches.
    This layer knows nothing of weights files: ``src.create_network(name, pretrained=TAG)``
    (src/weights/pretrained.py) builds through here and loads a source's published weights.
    """
    _check_name(name)
    if kwargs.get("pretrained"):
        raise ValueError("src.models builds networks with random weights; for published "
                         "weights call src.create_network(name, pretrained=TAG) "
                         "(from src import create_network)")
    kwargs.pop("pretrained", None)
    num_classes = 1000 if num_classes is None else num_classes
    family, args = _REGISTRY[name]
    return family.build(num_classes=num_classes, **args, **kwargs)


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown network {name!r}{hint} (list_networks() has all "
                         f"{len(_REGISTRY)})")
