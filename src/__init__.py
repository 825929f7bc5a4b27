"""MindSpore model zoo for efficient mobile CNNs: ShuffleNetV1, ShuffleNetV2, MobileNetV1."""
