"""ShuffleNetV2 (arXiv 1807.11164): x0.5, x1.0, x1.5, x2.0, in the megvii/MindCV layout or
torchvision's (a different network with the same name, whose weights need it)."""
import re

from mindspore import nn, ops

from . import cpu_kernels
from .family import Family, SourceLayout
from .layers import (
    ChannelShuffle,
    FusedSequence,
    GlobalAvgPool,
    batch_norm,
    conv1x1,
    conv3x3,
    depthwise_conv,
    max_pool_3x3_s2,
)
from .shufflenet_v1 import ShuffleNetTrunk, init_shufflenet_weights
from .weights import megvii, mindcv, torchvision

STAGE_REPEATS = (4, 8, 4)
# (c1, stage2, stage3, stage4, conv5) from the paper's Table 5.
CHANNELS = {
    "0_5": (24, 48, 96, 192, 1024),
    "1_0": (24, 116, 232, 464, 1024),
    "1_5": (24, 176, 352, 704, 1024),
    "2_0": (24, 244, 488, 976, 2048),
}
# Layout options a checkpoint records so that the same network is built again.
OPTIONS = ("pool_pad", "layout")
# Published ImageNet weights of each variant (src/models/weights.py).
PRETRAINED = {
    "shufflenet_v2_x0_5": (
        mindcv("shufflenet/shufflenetv2/shufflenet_v2_x0_5-8c841061.ckpt", 60.53, 82.11),
        torchvision("shufflenetv2_x0.5-f707e7126e.pth", 60.552, 81.746, 5.282),
        megvii(38.9, 17.4)),
    "shufflenet_v2_x1_0": (
        mindcv("shufflenet/shufflenetv2/shufflenet_v2_x1_0-0da4b7fa.ckpt", 69.47, 88.88),
        torchvision("shufflenetv2_x1-5666bf0f80.pth", 69.362, 88.316, 8.791),
        megvii(30.6, 11.1)),
    "shufflenet_v2_x1_5": (
        mindcv("shufflenet/shufflenetv2/shufflenet_v2_x1_5-00b56131.ckpt", 72.79, 90.93),
        torchvision("shufflenetv2_x1_5-3c479a10.pth", 72.996, 91.086, 13.557, eval_resize=232),
        megvii(27.4, 9.4)),
    "shufflenet_v2_x2_0": (
        mindcv("shufflenet/shufflenetv2/shufflenet_v2_x2_0-ed8e698d.ckpt", 75.07, 92.08),
        torchvision("shufflenetv2_x2_0-8be3c8ee.pth", 76.230, 93.006, 28.433, eval_resize=232),
        megvii(25.0, 7.6)),
}
# How MindCV's checkpoints of this family look (see shufflenet_v1.MINDCV_LAYOUT).
MINDCV_LAYOUT = {"marker": "features.0.branch_main.0.weight", "stem": "first_conv.0.weight",
                 "options": {"pool_pad": "same", "layout": "megvii"}}
LAYOUTS = ("megvii", "torchvision")
VARIANTS = {f"shufflenet_v2_x{w}": {"width": w} for w in CHANNELS}


def stem_and_head(width: str) -> tuple:
    """(stem conv outputs, classifier inputs): what tells the variants' checkpoints apart."""
    return CHANNELS[width][0], CHANNELS[width][-1]


class ShuffleV2Block(nn.Cell):
    """One ShuffleNetV2 unit; main = 1x1 + BN + ReLU -> 3x3 dw + BN -> 1x1 + BN + ReLU,
    proj = 3x3 dw s2 + BN -> 1x1 + BN + ReLU (stride 2 only).

    layout "megvii" (MindCV's too): stride 1 passes the even channels and sends the odd ones
    through main (that split is the shuffle of the previous unit's concat); stride 2 is
    concat(proj(x) with in channels, main(x) with out - in).
    layout "torchvision": stride 1 passes the first half and sends the second through main;
    stride 2 is concat(proj(x), main(x)) with out/2 channels each; every unit ends with a
    2-group channel shuffle.
    """

    def __init__(self, in_channels, out_channels, stride, layout="megvii", conv_impl="auto"):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
        self.stride, self.torchvision = stride, layout == "torchvision"
        mid = out_channels // 2
        main_in = in_channels if stride == 2 else in_channels // 2
        main_out = mid if self.torchvision else out_channels - main_in
        proj_out = mid if self.torchvision else in_channels
        self.branch_main = FusedSequence([
            conv1x1(main_in, mid, impl=conv_impl), batch_norm(mid, conv_impl), nn.ReLU(),
            depthwise_conv(mid, 3, stride, conv_impl), batch_norm(mid, conv_impl),
            conv1x1(mid, main_out, impl=conv_impl), batch_norm(main_out, conv_impl), nn.ReLU(),
        ])
        if stride == 2:
            self.branch_proj = FusedSequence([
                depthwise_conv(in_channels, 3, stride, conv_impl),
                batch_norm(in_channels, conv_impl),
                conv1x1(in_channels, proj_out, impl=conv_impl), batch_norm(proj_out, conv_impl),
                nn.ReLU(),
            ])
        self.shuffle = ChannelShuffle(2, "paper") if self.torchvision else None
        # Eval mode with our kernels: the whole unit as one op (megvii's layout, every conv and
        # BatchNorm fused: main's (conv, BN, ReLU), (dw, BN), (conv, BN, ReLU), proj's (dw, BN),
        # (conv, BN, ReLU)), so no Split, Concat or executor step sits between the convs.
        fused = (self.branch_main,) + ((self.branch_proj,) if stride == 2 else ())
        self.whole_unit = not self.torchvision and all(
            [size for _, size in seq.groups] == expected
            for seq, expected in zip(fused, ([3, 2, 3], [2, 3]), strict=False))
        if self.whole_unit:
            self.unit_op = cpu_kernels.shufflenet_v2_unit_op(stride)

    def construct(self, x):
        if self.whole_unit and self.branch_main.fused_eval(x):
            tensors = self.branch_main.conv_bn_tensors()
            if self.stride == 2:
                tensors = tensors + self.branch_proj.conv_bn_tensors()
            return self.unit_op(x, *tensors, self.branch_main[1].eps_tensor)
        if self.stride == 2:
            out = ops.concat((self.branch_proj(x), self.branch_main(x)), axis=1)
        elif self.torchvision:  # first half passes, second half goes through main
            passed, main = ops.split(x, x.shape[1] // 2, axis=1)  # split: see below
            out = ops.concat((passed, self.branch_main(main)), axis=1)
        else:
            # Even channels pass, odd ones go through main. A split of the (N, C/2, 2 HW) view:
            # MindSpore's CPU StridedSlice of [:, :, 0] took 12x as long (docs/PERFORMANCE.md).
            _, c, h, w = x.shape
            even, odd = ops.split(ops.reshape(x, (-1, c // 2, 2 * h * w)), h * w, axis=2)
            # -1: exports keep a dynamic batch
            even, odd = ops.reshape(even, (-1, c // 2, h, w)), ops.reshape(odd, (-1, c // 2, h, w))
            return ops.concat((even, self.branch_main(odd)), axis=1)
        return self.shuffle(out) if self.torchvision else out


class ShuffleNetV2(ShuffleNetTrunk):
    """ShuffleNetV2 at ``width`` "0_5", "1_0", "1_5" or "2_0".

    ``pool_pad`` "pad" (symmetric, default) or "same" (MindCV's stem max pool); ``layout``
    "megvii" (default: megvii, MindCV, the zoo; classifier without bias) or "torchvision"
    (ShuffleV2Block; classifier with bias). Parameter names are ours in both layouts.
    ``conv_impl`` how the 1x1 and depthwise convs are computed (layers.resolve_conv_impl);
    ``drop_rate`` the dropout before the classifier in training. ``features_only``,
    ``out_indices``: the feature maps of the stem conv, the max pool and stages 2-4 (strides 2
    to 32; backbone.Backbone); conv_last, which follows stage 4, belongs to the head then.
    """

    NECK_MODULES = ("conv_last",)
    HEAD_MODULES = ("conv_last", "classifier")

    def __init__(self, width="1_0", num_classes=1000, in_channels=3, pool_pad="pad",
                 layout="megvii", conv_impl="auto", drop_rate=0.0, features_only=False,
                 out_indices=None):
        super().__init__()
        c1, *stages, c5 = CHANNELS[width]
        self.first_conv = FusedSequence([conv3x3(in_channels, c1, 2, conv_impl),
                                             batch_norm(c1, conv_impl), nn.ReLU()])
        self.max_pool = max_pool_3x3_s2(pool_pad, conv_impl)
        blocks, c_in, stage_blocks = [], c1, []
        for repeats, c_out in zip(STAGE_REPEATS, stages, strict=True):
            stage_blocks.append(tuple(range(len(blocks), len(blocks) + repeats)))
            for i in range(repeats):
                blocks.append(ShuffleV2Block(c_in, c_out, stride=2 if i == 0 else 1,
                                             layout=layout, conv_impl=conv_impl))
                c_in = c_out
        self.set_stages(blocks, stage_blocks, [c1] + stages, features_only, out_indices)
        if self.has_head:
            self.conv_last = FusedSequence([conv1x1(c_in, c5, impl=conv_impl),
                                                batch_norm(c5, conv_impl), nn.ReLU()])
            self.pool = GlobalAvgPool(conv_impl)
        self.set_classifier(c5, layout == "torchvision", conv_impl, drop_rate, num_classes)
        init_shufflenet_weights(self)

    def forward_neck(self, x):
        return self.conv_last(x)


def build(num_classes=1000, **kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes=num_classes, **kwargs)


# ---- other sources' checkpoints of this family

TORCHVISION_STAGE_START = {"stage2": 0, "stage3": 4, "stage4": 12}  # index in our features


def megvii_module_name(name: str) -> str:
    """megvii ShuffleNetV2 -> ours: the same names but classifier.0."""
    return "classifier" if name == "classifier.0" else name


def torchvision_module_name(name: str) -> str:
    """torchvision ShuffleNetV2 -> ours (layout torchvision): conv1/conv5/fc are our
    first_conv/conv_last/classifier, stageS.i.branch1/branch2 our features.n.branch_proj/main."""
    match = re.fullmatch(r"(stage\d)\.(\d+)\.branch([12])\.(\d+)", name)
    if match:
        unit = TORCHVISION_STAGE_START.get(match.group(1), -1000) + int(match.group(2))
        branch = "branch_proj" if match.group(3) == "1" else "branch_main"
        return f"features.{unit}.{branch}.{match.group(4)}"
    for theirs, ours in (("conv1.", "first_conv."), ("conv5.", "conv_last.")):
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return "classifier" if name == "fc" else name


FAMILY = Family(
    "shufflenet_v2", VARIANTS, build, stem_and_head, OPTIONS,
    option_values={"layout": LAYOUTS}, pretrained=PRETRAINED, mindcv_layout=MINDCV_LAYOUT,
    sources={
        "megvii": SourceLayout({"pool_pad": "pad", "layout": "megvii"}, "megvii_bgr",
                               megvii_module_name),
        # torchvision's ShuffleNetV2 is another network (branch widths, split, shuffle place):
        # it loads into ours built with layout torchvision.
        "torchvision": SourceLayout({"pool_pad": "pad", "layout": "torchvision"}, "imagenet",
                                    torchvision_module_name)})
