"""Networks: ShuffleNetV1, ShuffleNetV2 and MobileNetV1, built by name from one registry."""
from .registry import (
                       create_network,
                       family_of,
                       list_networks,
                       mindcv_layout,
                       options_of,
                       published_weights,
                       stem_and_head,
)

__all__ = ["create_network", "family_of", "list_networks", "mindcv_layout", "options_of",
           "published_weights", "stem_and_head"]
