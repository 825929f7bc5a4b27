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
in ``forward_neck`` (ShuffleNetV2's conv_last), makes its classifier in ``make_classifier`` and
initialises new layers as its own in ``initialize``. Every loop below runs over constants, so graph
mode unrolls it.
"""
from mindspore import nn


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
    ``set_levels`` once their layers exist, and build ``pool`` and ``classifier`` (with
    ``make_classifier``) only when ``has_head``."""

    # The modules after the last level that a features-only network leaves out.
    HEAD_MODULES = ("classifier",)

    def set_levels(self, levels: list, features_only: bool = False, out_indices=None) -> None:
        self.level_count = len(levels)
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
        for index in range(self.level_count):
            x = self.forward_level(x, index)
        return self.forward_neck(x)

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

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier of ``num_classes`` outputs (0: none: the head gives the pooled
        features), initialised as the family initialises its own."""
        if self.features_only:
            raise ValueError("a features-only network has no classifier")
        classifier = self.make_classifier(int(num_classes))
        self.initialize(classifier)
        self.classifier = classifier
