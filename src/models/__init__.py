"""Networks: ShuffleNetV1, ShuffleNetV2 and MobileNetV1, built by name from one registry. What
lies outside this package reads the families through these names only."""
from .registry import (
    checkpoint_sources,
    create_network,
    family_of,
    family_record,
    list_networks,
    mindcv_layout,
    option_values,
    options_of,
    published_weights,
    stem_and_head,
)
from .weights import PORTS_REPORTED

__all__ = ["PORTS_REPORTED", "checkpoint_sources", "create_network", "family_of",
           "family_record", "list_networks", "mindcv_layout", "option_values", "options_of",
           "published_weights", "stem_and_head"]
