"""What one family of networks is, in one record the registry reads: its variants, its layout
options, how to build it, the weights sources publish of it, and how each source's checkpoints
of it land on our parameters (as timm's model files carry their ``checkpoint_filter_fn``).

Each family module (shufflenet_v1, shufflenet_v2, mobilenet_v1) ends with its ``FAMILY``.
"""
import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class SourceLayout:
    """How one source's PyTorch checkpoints of a family map onto our network: the options our
    network needs to compute what its code computes, the pixels its weights expect, its module
    names -> ours, and a fix-up of the mapped tensors (in place, given our built network)."""
    options: dict
    input_norm: str
    module_name: Callable[[str], str]
    fixup: Callable = None


@dataclasses.dataclass(frozen=True)
class Family:
    """One family of networks (see the module's docstring)."""
    name: str
    variants: dict  # network name -> the constructor's arguments (group, width, alpha...)
    build: Callable  # (num_classes=..., **variant args, **options) -> the network
    stem_and_head: Callable  # (**variant args) -> (stem conv channels, classifier inputs)
    options: tuple  # the layout options the family takes (pool_pad, layout, activation...)
    option_values: dict = dataclasses.field(default_factory=dict)  # option -> its own values
    pretrained: dict = dataclasses.field(default_factory=dict)  # name -> PublishedWeights, ...
    # How MindCV's checkpoints look: {"marker": a parameter only this family has, "stem": the
    # stem conv's parameter, "options": our options for its code}.
    mindcv_layout: dict = dataclasses.field(default_factory=dict)
    sources: dict = dataclasses.field(default_factory=dict)  # source tag -> SourceLayout
