"""ShuffleNetV1 (arXiv 1707.01083) in MindCV's layout: 20 variants, g in {1,2,3,4,8} x 4 widths."""
import math
import re
from fractions import Fraction

import numpy as np
from mindspore import nn, ops
from mindspore.common import initializer as init

from . import cpu_kernels
from .backbone import Backbone, level
from .family import Family, SourceLayout
from .layers import (
    ChannelShuffle,
    FusedSequence,
    GlobalAvgPool,
    avg_pool_3x3_s2,
    batch_norm,
    conv1x1,
    conv3x3,
    depthwise_conv,
    max_pool_3x3_s2,
)
from .weights import megvii, mindcv

STAGE_REPEATS = (4, 8, 4)
# Paper Table 1, stage-2 output channels at 1.0x for each group count.
PAPER_STAGE2_1X = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
WIDTHS = {"05": Fraction(1, 2), "10": Fraction(1), "15": Fraction(3, 2), "20": Fraction(2)}

# Layout options a checkpoint records so that the same network is built again.
OPTIONS = ("pool_pad", "shuffle_order")
# Published ImageNet weights of each variant (src/models/weights.py). MindCV 0.3.0 publishes
# g3 0.5x and 1.0x; megvii g3 and g8 at every width.
PRETRAINED = {
    "shufflenet_v1_g3_05": (
        mindcv("shufflenet/shufflenetv1/shufflenet_v1_g3_05-42cfe109.ckpt", 57.05, 79.73),
        megvii(42.7, 20.0)),
    "shufflenet_v1_g3_10": (
        mindcv("shufflenet/shufflenetv1/shufflenet_v1_g3_10-245f0ccf.ckpt", 67.77, 87.73),
        megvii(32.2, 12.3)),
    "shufflenet_v1_g3_15": (megvii(28.4, 9.8),),
    "shufflenet_v1_g3_20": (megvii(25.9, 8.6),),
    "shufflenet_v1_g8_05": (megvii(41.2, 19.0),),
    "shufflenet_v1_g8_10": (megvii(32.0, 13.6),),
    "shufflenet_v1_g8_15": (megvii(29.0, 10.4),),
    "shufflenet_v1_g8_20": (megvii(27.1, 9.2),),
}
# How MindCV's checkpoints of this family look: a parameter only this family has, the stem conv
# whose outputs (with the classifier's inputs) tell the widths apart, and the options under which
# our network computes what MindCV's code computes (tested against MindCV 0.3.0's own).
MINDCV_LAYOUT = {"marker": "features.0.branch_main_1.0.weight", "stem": "first_conv.0.weight",
                 "options": {"pool_pad": "same", "shuffle_order": "megvii"}}
VARIANTS = {
    f"shufflenet_v1_g{g}_{w}": {"group": g, "width": float(WIDTHS[w])}
    for g in PAPER_STAGE2_1X for w in WIDTHS
}


def stage_channels(group: int, width: float) -> tuple:
    """(c1, stage2, stage3, stage4) for a group count and width multiplier.

    Stage widths are the paper's 1.0x widths times ``width``, rounded to the nearest
    multiple of 4g (ties up), since mid = c/4 must split into g groups. c1 is
    24 * 2**floor(log2(width)) (12/24/24/48), rounded up to a multiple of g, since stage-2
    unit 0 emits stage2 - c1 channels through a grouped conv. This reproduces every table
    megvii and MindCV publish (g3, g8) and the paper's 1.0x column; g1/g2/g4 at 0.5x, 1.5x
    and 2.0x have no reference and are derived by it.
    """
    width = Fraction(width).limit_denominator(100)
    unit = 4 * group
    stages = []
    for s in range(3):
        exact = PAPER_STAGE2_1X[group] * 2 ** s * width / unit
        stages.append(math.floor(exact + Fraction(1, 2)) * unit)
    c1 = int(24 * Fraction(2) ** math.floor(math.log2(width)))
    c1 = math.ceil(c1 / group) * group
    return (c1, *stages)


def stem_and_head(group: int, width: float) -> tuple:
    """(stem conv outputs, classifier inputs): what tells the variants' checkpoints apart."""
    c1, *_, last = stage_channels(group, width)
    return c1, last


class ShuffleV1Block(nn.Cell):
    """1x1 group conv + BN + ReLU -> shuffle -> 3x3 dw + BN -> 1x1 group conv + BN.

    Stride 1: relu(x + main(x)). Stride 2: relu(concat(avgpool(x), main(x))).
    """

    def __init__(self, in_channels, out_channels, stride, group, first_group,
                 pool_pad="pad", shuffle_order="paper", conv_impl="auto"):
        super().__init__()
        self.stride = stride
        mid = out_channels // 4
        main_out = out_channels - in_channels if stride == 2 else out_channels
        self.branch_main_1 = FusedSequence([
            conv1x1(in_channels, mid, 1 if first_group else group, conv_impl),
            batch_norm(mid, conv_impl),
            nn.ReLU(),
        ])
        self.shuffle = ChannelShuffle(group, shuffle_order)
        self.branch_main_2 = FusedSequence([
            depthwise_conv(mid, 3, stride, conv_impl),
            batch_norm(mid, conv_impl),
            conv1x1(mid, main_out, group, conv_impl),
            batch_norm(main_out, conv_impl),
        ])
        if stride == 2:
            self.branch_proj = avg_pool_3x3_s2(pool_pad, conv_impl)
        self.relu = nn.ReLU()
        # Eval mode with our kernels: the whole unit as one op (every conv and BatchNorm fused,
        # the symmetric pools), so no shuffle copy, Add, Concat or executor step sits between the
        # convs.
        self.whole_unit = [size for _, size in self.branch_main_1.groups] == [3] and \
            [size for _, size in self.branch_main_2.groups] == [2, 2] and \
            (stride == 1 or self.branch_proj.fast)
        if self.whole_unit:
            self.unit_op = cpu_kernels.shufflenet_v1_unit_op(stride, shuffle_order)

    def construct(self, x):
        if self.whole_unit and self.branch_main_1.fused_eval(x):
            tensors = self.branch_main_1.conv_bn_tensors() + self.branch_main_2.conv_bn_tensors()
            return self.unit_op(x, *tensors, self.branch_main_1[1].eps_tensor)
        y = self.branch_main_2(self.shuffle(self.branch_main_1(x)))
        if self.stride == 1:
            return self.relu(x + y)
        return self.relu(ops.concat((self.branch_proj(x), y), axis=1))


class ShuffleNetTrunk(Backbone):
    """The ShuffleNets' levels: the stem conv, the max pool, then each stage's blocks of
    ``features`` (``level_blocks``); megvii's initialisation."""

    def set_stages(self, blocks: list, stage_blocks: list, channels: list, features_only: bool,
                   out_indices) -> None:
        """``features`` of ``blocks`` (each stage's indices in ``stage_blocks``) and the levels:
        the stem conv and the max pool (``channels[0]``, strides 2 and 4), then each stage's
        last block (``channels[1:]``, strides 8, 16, 32)."""
        self.features = nn.SequentialCell(blocks)
        self.level_blocks = ((), ()) + tuple(stage_blocks)
        levels = [level(channels[0], 2, "first_conv"), level(channels[0], 4, "max_pool")] + [
            level(c, 2 ** (i + 3), f"features.{stage[-1]}")
            for i, (c, stage) in enumerate(zip(channels[1:], stage_blocks, strict=True))]
        self.set_levels(levels, [["first_conv"], ["max_pool"]] + [
            [f"features.{i}" for i in stage] for stage in stage_blocks], features_only,
            out_indices)

    def forward_level(self, x, index):
        if index == 0:
            return self.first_conv(x)
        if index == 1:
            return self.max_pool(x)
        for i in self.level_blocks[index]:
            x = self.features.cell_list[i](x)
        return x

    def initialize(self, cell) -> None:
        init_shufflenet_weights(cell)


class ShuffleNetV1(ShuffleNetTrunk):
    """ShuffleNetV1 with ``group`` groups at ``width`` (0.5, 1.0, 1.5, 2.0).

    Options: ``pool_pad`` "pad" (symmetric, default) or "same" (MindCV's pools);
    ``shuffle_order`` "paper" (default) or "megvii" (megvii's and MindCV's permutation);
    ``conv_impl`` how the 1x1 and depthwise convs are computed (layers.resolve_conv_impl);
    ``drop_rate`` the dropout before the classifier in training. ``features_only``,
    ``out_indices``: the feature maps of the stem conv, the max pool and stages 2-4 (strides 2
    to 32; backbone.Backbone).
    """

    def __init__(self, group=3, width=1.0, num_classes=1000, in_channels=3,
                 pool_pad="pad", shuffle_order="paper", conv_impl="auto", drop_rate=0.0,
                 features_only=False, out_indices=None):
        super().__init__()
        c1, *stages = stage_channels(group, width)
        self.first_conv = FusedSequence([conv3x3(in_channels, c1, 2, conv_impl),
                                             batch_norm(c1, conv_impl), nn.ReLU()])
        self.max_pool = max_pool_3x3_s2(pool_pad, conv_impl)
        blocks, c_in, stage_blocks = [], c1, []
        for stage, (repeats, c_out) in enumerate(zip(STAGE_REPEATS, stages, strict=True)):
            stage_blocks.append(tuple(range(len(blocks), len(blocks) + repeats)))
            for i in range(repeats):
                blocks.append(ShuffleV1Block(
                    c_in, c_out, stride=2 if i == 0 else 1, group=group,
                    first_group=stage == 0 and i == 0, pool_pad=pool_pad,
                    shuffle_order=shuffle_order, conv_impl=conv_impl))
                c_in = c_out
        self.set_stages(blocks, stage_blocks, [c1] + stages, features_only, out_indices)
        if self.has_head:
            self.pool = GlobalAvgPool(conv_impl)
        self.set_classifier(c_in, False, conv_impl, drop_rate, num_classes)
        init_shufflenet_weights(self)

def init_shufflenet_weights(net: nn.Cell) -> None:
    """megvii/MindCV init: N(0, 0.01) for the stem conv and the dense layer, N(0, 1/w.shape[1])
    for every other conv (so depthwise weights get std 1); biases zero."""
    for name, cell in net.cells_and_names():
        if isinstance(cell, nn.Conv2d):
            sigma = 0.01 if "first" in name else 1.0 / cell.weight.shape[1]
            cell.weight.set_data(init.initializer(init.Normal(sigma, 0.0), cell.weight.shape,
                                                  cell.weight.dtype))
        elif isinstance(cell, nn.Dense):
            cell.weight.set_data(init.initializer(init.Normal(0.01, 0.0), cell.weight.shape,
                                                  cell.weight.dtype))
        else:
            continue
        if cell.bias is not None:
            cell.bias.set_data(init.initializer("zeros", cell.bias.shape, cell.bias.dtype))


def build(num_classes=1000, **kwargs) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes=num_classes, **kwargs)


# ---- other sources' checkpoints of this family

def megvii_module_name(name: str) -> str:
    """megvii ShuffleNetV1 -> ours: its branch_main_1.{3,4} (dw, BN) and branch_main_2.{0,1}
    are our branch_main_2.{0,1,2,3}; classifier.0 is our classifier."""
    if name == "classifier.0":
        return "classifier"
    match = re.fullmatch(r"(features\.\d+)\.branch_main_(\d)\.(\d)", name)
    if match:
        unit, branch, index = match.group(1), int(match.group(2)), int(match.group(3))
        if branch == 1 and index >= 3:
            return f"{unit}.branch_main_2.{index - 3}"
        if branch == 2:
            return f"{unit}.branch_main_2.{index + 2}"
    return name


def megvii_shuffle_permutation(channels: int, groups: int) -> np.ndarray:
    """sigma with shuffle(x)[j] = x[sigma[j]] for megvii's shuffle (view (C/g, g), transpose)."""
    return np.arange(channels).reshape(channels // groups, groups).T.reshape(-1)


def permute_megvii(params: dict, net) -> None:
    """megvii shuffles after the depthwise conv and its BN, we before: permute that conv's and
    its BN's channels by the shuffle (new[j] = old[sigma[j]])."""
    for name, cell in net.cells_and_names():
        if name.endswith(".branch_main_2"):
            groups = int(cell[2].group)  # the unit's second grouped 1x1 conv
            mid = params[f"{name}.0.weight"].shape[0]
            sigma = megvii_shuffle_permutation(mid, groups)
            for leaf in ("0.weight", "1.gamma", "1.beta", "1.moving_mean", "1.moving_variance"):
                params[f"{name}.{leaf}"] = params[f"{name}.{leaf}"][sigma]


FAMILY = Family(
    "shufflenet_v1", VARIANTS, build, stem_and_head, OPTIONS, pretrained=PRETRAINED,
    mindcv_layout=MINDCV_LAYOUT,
    sources={"megvii": SourceLayout({"pool_pad": "pad", "shuffle_order": "megvii"},
                                    "megvii_bgr", megvii_module_name, permute_megvii)})
