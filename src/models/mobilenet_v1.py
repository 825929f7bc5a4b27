"""MobileNetV1 (arXiv 1704.04861) in MindCV's layout: width 0.25, 0.5, 0.75, 1.0."""
import re

from mindspore import nn
from mindspore.common import initializer as init

from . import cpu_kernels
from .backbone import Backbone, level
from .family import Family, SourceLayout
from .layers import (
    FusedSequence,
    GlobalAvgPool,
    batch_norm,
    conv1x1,
    conv3x3,
    depthwise_conv,
)
from .weights import mindcv, timm

# (output channels at 1.0x, stride of the depthwise conv) of the 13 separable blocks.
# The last depthwise conv has stride 1; the paper's Table 1 has a typo there.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
# Layout options a checkpoint records so that the same network is built again.
OPTIONS = ("activation",)
# Published ImageNet weights of each variant (src/models/weights.py). MindCV's have 1001 classes
# (index 1000 unused).
PRETRAINED = {
    "mobilenet_v1_025": (
        mindcv("mobilenet/mobilenetv1/mobilenet_v1_025-d3377fba.ckpt", 53.87, 77.66, 1001),),
    "mobilenet_v1_050": (
        mindcv("mobilenet/mobilenetv1/mobilenet_v1_050-23e9ddbe.ckpt", 65.94, 86.51, 1001),),
    "mobilenet_v1_075": (
        mindcv("mobilenet/mobilenetv1/mobilenet_v1_075-5bed0c73.ckpt", 70.44, 89.49, 1001),),
    "mobilenet_v1_100": (
        mindcv("mobilenet/mobilenetv1/mobilenet_v1_100-91c7b206.ckpt", 72.95, 91.01, 1001),
        timm("timm/mobilenetv1_100.ra4_e3600_r224_in1k", 75.382, 92.312)),
}
# How MindCV's checkpoints of this family look (see shufflenet_v1.MINDCV_LAYOUT).
MINDCV_LAYOUT = {"marker": "features.3.0.weight", "stem": "features.0.weight",
                 "options": {"activation": "relu"}}
VARIANTS = {f"mobilenet_v1_{tag}": {"alpha": alpha}
            for tag, alpha in (("025", 0.25), ("050", 0.5), ("075", 0.75), ("100", 1.0))}
ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}


def stem_and_head(alpha: float) -> tuple:
    """(stem conv outputs, classifier inputs): what tells the variants' checkpoints apart."""
    return int(32 * alpha), int(BLOCKS[-1][0] * alpha)


class SeparableBlock(FusedSequence):
    """3x3 depthwise + BN + act, then 1x1 pointwise + BN + act (a FusedSequence: the same
    children and parameter names). In eval mode with our kernels the whole block is one op
    (cpu_kernels.separable_block_op), a band of rows at a time."""

    def __init__(self, in_channels, out_channels, stride, act, conv_impl):
        super().__init__([
            depthwise_conv(in_channels, 3, stride, conv_impl),
            batch_norm(in_channels, conv_impl), act(),
            conv1x1(in_channels, out_channels, impl=conv_impl),
            batch_norm(out_channels, conv_impl), act(),
        ])
        self.whole_block = [size for _, size in self.groups] == [3, 3]
        if self.whole_block:
            self.block_op = cpu_kernels.separable_block_op(
                stride, "relu6" if act is nn.ReLU6 else "relu")

    def construct(self, x):
        if self.whole_block and self.fused_eval(x):
            return self.block_op(x, *self.conv_bn_tensors(), self.cell_list[1].eps_tensor)
        return super().construct(x)


class MobileNetV1(Backbone):
    """MobileNetV1 at width ``alpha``; channels are ``int(c * alpha)``; dense with bias.

    ``activation`` "relu" (paper, MindCV; default) or "relu6" (timm's and the zoo's weights).
    ``conv_impl`` how the 1x1 and depthwise convs are computed (layers.resolve_conv_impl);
    ``drop_rate`` the dropout before the classifier in training. ``features_only``,
    ``out_indices``: the feature maps after separable blocks 1, 3, 5, 11 and 13 (strides 2 to
    32, the last block at each; backbone.Backbone).
    """

    def __init__(self, alpha=1.0, num_classes=1000, in_channels=3, activation="relu",
                 conv_impl="auto", drop_rate=0.0, features_only=False, out_indices=None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {tuple(ACTIVATIONS)}")
        act = ACTIVATIONS[activation]
        c = int(32 * alpha)
        layers = [conv3x3(in_channels, c, 2, conv_impl), batch_norm(c, conv_impl), act()]
        levels, ends, stride = [], [], 2
        for i, (out, block_stride) in enumerate(BLOCKS):
            layers.append(SeparableBlock(c, int(out * alpha), block_stride, act, conv_impl))
            c, stride = int(out * alpha), stride * block_stride
            if i + 1 == len(BLOCKS) or BLOCKS[i + 1][1] == 2:  # the last block at this stride
                levels.append(level(c, stride, f"features.{len(layers) - 1}"))
                ends.append(len(layers))
        self.features = FusedSequence(layers)
        # each level's groups of the sequence (the stem conv, BN and act are one group when fused)
        bounds = [self.features.group_of(0)] + [
            self.features.group_of(end) if end < len(layers) else len(self.features.groups)
            for end in ends]
        self.level_groups = tuple(zip(bounds[:-1], bounds[1:], strict=True))
        self.set_levels(levels, [[f"features.{i}" for i in range(start, end)]
                                 for start, end in zip([0] + ends[:-1], ends, strict=True)],
                        features_only, out_indices)
        if self.has_head:
            self.pool = GlobalAvgPool(conv_impl)
        self.set_classifier(c, True, conv_impl, drop_rate, num_classes)
        init_mobilenet_weights(self)

    def forward_level(self, x, index):
        first, stop = self.level_groups[index]
        return self.features.run(x, first, stop)

    def initialize(self, cell) -> None:
        init_mobilenet_weights(cell)


def init_mobilenet_weights(net: nn.Cell) -> None:
    """MindCV's init: Xavier-uniform convs, truncated N(0, 0.01) dense weights, zero biases."""
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.Conv2d):
            cell.weight.set_data(init.initializer(init.XavierUniform(), cell.weight.shape,
                                                  cell.weight.dtype))
        elif isinstance(cell, nn.Dense):
            cell.weight.set_data(init.initializer(init.TruncatedNormal(0.01), cell.weight.shape,
                                                  cell.weight.dtype))
            cell.bias.set_data(init.initializer("zeros", cell.bias.shape, cell.bias.dtype))


def build(num_classes=1000, **kwargs) -> MobileNetV1:
    return MobileNetV1(num_classes=num_classes, **kwargs)


# ---- other sources' checkpoints of this family

TIMM_STAGE_BLOCKS = (1, 2, 2, 6, 2)  # timm's blocks.s.b: separable blocks per stage


def timm_module_name(name: str) -> str:
    """timm mobilenetv1_100 -> ours: conv_stem/bn1 are features.0/1, blocks.s.b's conv_dw, bn1,
    conv_pw, bn2 are features.(3 + block).{0,1,3,4}."""
    stem = {"conv_stem": "features.0", "bn1": "features.1"}
    if name in stem:
        return stem[name]
    match = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(conv_dw|bn1|conv_pw|bn2)", name)
    if match:
        stage, block = int(match.group(1)), int(match.group(2))
        unit = 3 + sum(TIMM_STAGE_BLOCKS[:stage]) + block
        index = {"conv_dw": 0, "bn1": 1, "conv_pw": 3, "bn2": 4}[match.group(3)]
        return f"features.{unit}.{index}"
    return name


FAMILY = Family(
    "mobilenet_v1", VARIANTS, build, stem_and_head, OPTIONS,
    option_values={"activation": tuple(ACTIVATIONS)}, pretrained=PRETRAINED,
    mindcv_layout=MINDCV_LAYOUT,
    sources={"timm": SourceLayout({"activation": "relu6"}, "inception", timm_module_name)})
