"""What every network here offers beyond image -> logits, in timm's names, so that one can be a
detector's or segmenter's backbone or get a new head:

- ``forward_features(x)``: the last feature map (before pooling);
- ``forward_intermediates(x)``: that map and the maps at ``out_indices`` in one pass;
- ``forward_head(x, pre_logits=False)``: pooling and the classifier on that map (the pooled
  features with ``pre_logits``);
- ``reset_classifier(num_classes)``: a new classifier (0: none, the head gives the pooled
  features);
- built with ``features_only=True`` (``create_network(name, features_only=True,
  out_indices=(1, 2, 3, 4))``), the network returns a tuple of the feature maps at
  ``out_indices``, and ``feature_info`` says each one's channels, reduction (stride) and module;
  the classifier (and any layer after the last map) is not built.

A family's network subclasses ``Backbone``: it lists every level in ``set_levels`` (the map at
strides 2, 4, 8, 16, 32: the output of the last layer at that stride), computes one level from
the previous one in ``forward_level(x, index)`` and what follows the last level before pooling
in ``forward_neck`` (ShuffleNetV2's conv_last), says how its classifier is made in
``set_classifier`` and initialises new layers as its own in ``initialize``. Every loop below
runs over constants, so graph mode unrolls it.
"""
from mindspore import nn

from .layers import Classifier, FusedSequence

FREEZE_TEXT = "none, backbone, or stages:N (the layers up to the N-th feature map, N = 0 to 5)"


def parse_freeze(spec: str):
    """"none" -> 0 levels, "stages:N" -> N, "backbone" -> "backbone"; ValueError(what, todo)
    for anything else."""
    spec = str(spec).strip()
    if spec in ("none", ""):
        return 0
    if spec == "backbone":
        return spec
    count = spec[len("stages:"):] if spec.startswith("stages:") else ""
    if not count.isdigit() or int(count) > 5:
        raise ValueError(f"not {FREEZE_TEXT}", "give e.g. backbone or stages:2")
    return int(count)


class FeatureInfo(list):
    """[{"num_chs", "reduction", "module"}] of the returned maps, with timm's accessors."""

    def channels(self) -> list:
        return [level["num_chs"] for level in self]

    def reduction(self) -> list:
        return [level["reduction"] for level in self]

    def module_name(self) -> list:
        return [level["module"] for level in self]


def level(num_chs: int, reduction: int, module: str) -> dict:
    return {"num_chs": int(num_chs), "reduction": int(reduction), "module": module}


class Backbone(nn.Cell):
    """The model API over a family's trunk (see the module's docstring). Subclasses call
    ``set_levels`` once their layers exist, build ``pool`` (and any neck) only when
    ``has_head``, and call ``set_classifier``."""

    # What follows the last level before pooling (ShuffleNetV2's conv_last), and the modules a
    # features-only network leaves out: that and the classifier.
    NECK_MODULES = ()
    HEAD_MODULES = ("classifier",)

    def set_levels(self, levels: list, modules: list, features_only: bool = False,
                   out_indices=None) -> None:
        """``levels``: each level's map (``level``); ``modules``: the names of the modules that
        compute each level from the one before (what ``freeze`` freezes)."""
        self.level_count = len(levels)
        self.level_modules = tuple(tuple(names) for names in modules)
        self.features_only = bool(features_only)
        indices = tuple(range(len(levels))) if out_indices is None else tuple(out_indices)
        if not indices or len(set(indices)) != len(indices) or \
                any(not isinstance(i, int) or not 0 <= i < len(levels) for i in indices):
            raise ValueError(f"out_indices {out_indices!r} are not distinct levels of 0.."
                             f"{len(levels) - 1} (strides "
                             f"{', '.join(str(lv['reduction']) for lv in levels)})")
        self.out_indices = tuple(sorted(indices))
        self.last_level = self.out_indices[-1] if self.features_only else len(levels) - 1
        self.feature_info = FeatureInfo(levels[i] for i in self.out_indices) \
            if self.features_only else FeatureInfo(levels)

    @property
    def has_head(self) -> bool:
        return not self.features_only

    def construct(self, x):
        if self.features_only:
            return self.forward_maps(x)
        return self.forward_head(self.forward_features(x))

    def forward_maps(self, x):
        """The feature maps at ``out_indices``, in order."""
        return self._trunk(x, self.last_level)[1]

    def forward_intermediates(self, x):
        """(the last feature map, as ``forward_features`` gives it; the maps at
        ``out_indices``) from one pass through the trunk (full networks)."""
        x, maps = self._trunk(x, self.level_count - 1)
        return self.forward_neck(x), maps

    def forward_features(self, x):
        """The last feature map, before pooling (full networks)."""
        return self.forward_intermediates(x)[0]

    def _trunk(self, x, last: int):
        maps = ()
        for index in range(last + 1):
            x = self.forward_level(x, index)
            if index in self.out_indices:
                maps = maps + (x,)
        return x, maps

    def forward_neck(self, x):
        return x

    def forward_head(self, x, pre_logits=False):
        """Pooling and the classifier on ``forward_features``' map; ``pre_logits``: the pooled
        features."""
        x = self.pool(x)
        if pre_logits:
            return x
        return self.classifier(x)

    def freeze(self, spec: str) -> list:
        """Freeze the part of the network ``spec`` names (``parse_freeze``): "backbone", every
        layer but the classifier; "stages:N", the layers up to the N-th feature map
        (feature_info's first N levels); "none". Frozen parameters take no gradient
        (requires_grad False: the optimizer leaves them out, so no update and no weight decay)
        and frozen BatchNorms keep their moving statistics in training. Returns the frozen
        parameters' names."""
        count = parse_freeze(spec)
        if count == "backbone":
            names = [m for level in self.level_modules for m in level] + list(self.NECK_MODULES)
        else:
            names = [m for level in self.level_modules[:count] for m in level]
        cells, frozen = dict(self.cells_and_names()), []
        for name in names:
            for param in cells[name].get_parameters():
                param.requires_grad = False
                frozen.append(param.name)
            for _, cell in cells[name].cells_and_names():
                if isinstance(cell, nn.BatchNorm2d):
                    cell.use_batch_statistics = False
        for _, cell in self.cells_and_names():
            if isinstance(cell, FusedSequence):
                cell.set_training_cells()
        return frozen

    def set_classifier(self, in_channels: int, has_bias: bool, conv_impl: str,
                       drop_rate: float, num_classes: int) -> None:
        """Remember how the family makes its classifier (``make_classifier``), and make it
        unless the network is features-only."""
        self.classifier_args = (in_channels, has_bias, conv_impl, drop_rate)
        if self.has_head:
            self.classifier = self.make_classifier(num_classes)

    def make_classifier(self, num_classes: int):
        """The family's classifier of ``num_classes`` outputs (0: none)."""
        if not num_classes:
            return nn.Identity()
        in_channels, has_bias, conv_impl, drop_rate = self.classifier_args
        return Classifier(in_channels, num_classes, has_bias, conv_impl, drop_rate)

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier of ``num_classes`` outputs (0: none: the head gives the pooled
        features), initialised as the family initialises its own."""
        if self.features_only:
            raise ValueError("a features-only network has no classifier")
        classifier = self.make_classifier(int(num_classes))
        self.initialize(classifier)
        self.classifier = classifier
