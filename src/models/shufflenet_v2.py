"""ShuffleNetV2 (arXiv 1807.11164) in the megvii/MindCV layout: x0.5, x1.0, x1.5, x2.0."""
from mindspore import nn, ops

from .layers import (GlobalAvgPool, batch_norm, conv1x1, conv3x3, depthwise_conv,
                     max_pool_3x3_s2)
from .shufflenet_v1 import init_shufflenet_weights

STAGE_REPEATS = (4, 8, 4)
# (c1, stage2, stage3, stage4, conv5) from the paper's Table 5.
CHANNELS = {
    "0_5": (24, 48, 96, 192, 1024),
    "1_0": (24, 116, 232, 464, 1024),
    "1_5": (24, 176, 352, 704, 1024),
    "2_0": (24, 244, 488, 976, 2048),
}
# Layout options a checkpoint records so that the same network is built again.
OPTIONS = ("pool_pad",)
VARIANTS = {f"shufflenet_v2_x{w}": {"width": w} for w in CHANNELS}


class ShuffleV2Block(nn.Cell):
    """Stride 1: even channels pass, odd go through main; stride 2: concat(proj(x), main(x)).

    main = 1x1 + BN + ReLU -> 3x3 dw + BN -> 1x1 + BN + ReLU;
    proj = 3x3 dw s2 + BN -> 1x1 + BN + ReLU (stride 2 only). The even/odd split is the
    channel shuffle of the previous unit's concat (megvii's layout, which MindCV keeps).
    """

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.stride = stride
        mid = out_channels // 2
        main_in = in_channels if stride == 2 else in_channels // 2
        main_out = out_channels - main_in
        self.branch_main = nn.SequentialCell([
            conv1x1(main_in, mid), batch_norm(mid), nn.ReLU(),
            depthwise_conv(mid, 3, stride), batch_norm(mid),
            conv1x1(mid, main_out), batch_norm(main_out), nn.ReLU(),
        ])
        if stride == 2:
            self.branch_proj = nn.SequentialCell([
                depthwise_conv(in_channels, 3, stride), batch_norm(in_channels),
                conv1x1(in_channels, in_channels), batch_norm(in_channels), nn.ReLU(),
            ])

    def construct(self, x):
        if self.stride == 2:
            return ops.concat((self.branch_proj(x), self.branch_main(x)), axis=1)
        _, c, h, w = x.shape
        pairs = ops.reshape(x, (-1, c // 2, 2, h, w))  # -1: exports keep a dynamic batch
        even = pairs[:, :, 0]
        odd = pairs[:, :, 1]
        return ops.concat((even, self.branch_main(odd)), axis=1)


class ShuffleNetV2(nn.Cell):
    """ShuffleNetV2 at ``width`` "0_5", "1_0", "1_5" or "2_0"; classifier without bias.

    ``pool_pad`` "pad" (symmetric, default) or "same" (MindCV's stem max pool).
    """

    def __init__(self, width="1_0", num_classes=1000, in_channels=3, pool_pad="pad"):
        super().__init__()
        c1, *stages, c5 = CHANNELS[width]
        self.first_conv = nn.SequentialCell([conv3x3(in_channels, c1, 2), batch_norm(c1), nn.ReLU()])
        self.max_pool = max_pool_3x3_s2(pool_pad)
        blocks, c_in = [], c1
        for repeats, c_out in zip(STAGE_REPEATS, stages):
            for i in range(repeats):
                blocks.append(ShuffleV2Block(c_in, c_out, stride=2 if i == 0 else 1))
                c_in = c_out
        self.features = nn.SequentialCell(blocks)
        self.conv_last = nn.SequentialCell([conv1x1(c_in, c5), batch_norm(c5), nn.ReLU()])
        self.pool = GlobalAvgPool()
        self.classifier = nn.Dense(c5, num_classes, has_bias=False)
        init_shufflenet_weights(self)

    def construct(self, x):
        x = self.features(self.max_pool(self.first_conv(x)))
        return self.classifier(self.pool(self.conv_last(x)))


def build(num_classes=1000, **kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes=num_classes, **kwargs)
