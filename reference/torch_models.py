"""The sources' PyTorch networks, written here from their published architectures: the same
computation and the same state_dict key names and shapes as megvii's ShuffleNet-Series,
torchvision's ShuffleNetV2 and timm's mobilenetv1_100. The conversion tests check our converted
weights against them; the benchmark times them as the PyTorch reference (``torch_network``).
Needs torch, so it lives outside src/: the zoo itself never imports it."""
import torch
from torch import nn
from torch.nn import functional as F

from src.models.shufflenet_v1 import stage_channels
from src.models.shufflenet_v2 import CHANNELS


def conv_bn(cin, cout, k=1, stride=1, groups=1, relu=True):
    """[conv, bn(, relu)] as a list, bias-free conv with 'same' symmetric padding."""
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class MegviiV1Unit(nn.Module):
    """megvii: 1x1 g-conv, BN, ReLU, dw, BN | shuffle (view C/g, g) | 1x1 g-conv, BN."""

    def __init__(self, cin, cout, group, first_group, stride):
        super().__init__()
        mid, self.stride, self.group = cout // 4, stride, group
        out = cout - cin if stride == 2 else cout
        self.branch_main_1 = nn.Sequential(*conv_bn(cin, mid, groups=1 if first_group else group),
                                           *conv_bn(mid, mid, 3, stride, mid, relu=False))
        self.branch_main_2 = nn.Sequential(*conv_bn(mid, out, groups=group, relu=False))
        if stride == 2:
            self.branch_proj = nn.AvgPool2d(3, 2, 1)

    def forward(self, x):
        y = self.branch_main_1(x)
        if self.group > 1:
            n, c, h, w = y.shape
            y = y.reshape(n, c // self.group, self.group, h, w).transpose(1, 2).reshape(n, c, h, w)
        y = self.branch_main_2(y)
        if self.stride == 1:
            return F.relu(x + y)
        return torch.cat((self.branch_proj(x), F.relu(y)), 1)


class MegviiShuffleNetV1(nn.Module):
    def __init__(self, group=3, width=1.0, num_classes=1000):
        super().__init__()
        c1, *stages = stage_channels(group, width)
        self.first_conv = nn.Sequential(*conv_bn(3, c1, 3, 2))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        units, cin = [], c1
        for s, (repeats, cout) in enumerate(zip((4, 8, 4), stages, strict=True)):
            for i in range(repeats):
                units.append(MegviiV1Unit(cin, cout, group, s == 0 and i == 0, 2 if i == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*units)
        self.classifier = nn.Sequential(nn.Linear(cin, num_classes, bias=False))

    def forward(self, x):
        x = self.features(self.maxpool(self.first_conv(x)))
        return self.classifier(x.mean((2, 3)))


class MegviiV2Unit(nn.Module):
    """megvii: stride 1 splits even/odd channels; stride 2 concat(proj (inp), main (oup - inp))."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride, mid = stride, cout // 2
        main_in = cin if stride == 2 else cin // 2
        self.branch_main = nn.Sequential(*conv_bn(main_in, mid),
                                         *conv_bn(mid, mid, 3, stride, mid, relu=False),
                                         *conv_bn(mid, cout - main_in))
        if stride == 2:
            self.branch_proj = nn.Sequential(*conv_bn(cin, cin, 3, 2, cin, relu=False),
                                             *conv_bn(cin, cin))

    def forward(self, x):
        if self.stride == 2:
            return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)
        return torch.cat((x[:, 0::2], self.branch_main(x[:, 1::2])), 1)


class MegviiShuffleNetV2(nn.Module):
    def __init__(self, width="1_0", num_classes=1000):
        super().__init__()
        c1, *stages, c5 = CHANNELS[width]
        self.first_conv = nn.Sequential(*conv_bn(3, c1, 3, 2))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        units, cin = [], c1
        for repeats, cout in zip((4, 8, 4), stages, strict=True):
            for i in range(repeats):
                units.append(MegviiV2Unit(cin, cout, 2 if i == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*units)
        self.conv_last = nn.Sequential(*conv_bn(cin, c5))
        self.classifier = nn.Sequential(nn.Linear(c5, num_classes, bias=False))

    def forward(self, x):
        x = self.conv_last(self.features(self.maxpool(self.first_conv(x))))
        return self.classifier(x.mean((2, 3)))


class TorchvisionV2Unit(nn.Module):
    """torchvision: branch1 (stride 2) and branch2 emit oup/2 each; split halves; shuffle last."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride, half = stride, cout // 2
        if stride == 2:
            self.branch1 = nn.Sequential(*conv_bn(cin, cin, 3, 2, cin, relu=False),
                                         *conv_bn(cin, half))
        self.branch2 = nn.Sequential(*conv_bn(cin if stride == 2 else half, half),
                                     *conv_bn(half, half, 3, stride, half, relu=False),
                                     *conv_bn(half, half))

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.branch2(b)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        n, c, h, w = out.shape
        return out.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class TorchvisionShuffleNetV2(nn.Module):
    def __init__(self, width="1_0", num_classes=1000):
        super().__init__()
        c1, *stages, c5 = CHANNELS[width]
        self.conv1 = nn.Sequential(*conv_bn(3, c1, 3, 2))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = c1
        names = ("stage2", "stage3", "stage4")
        for name, repeats, cout in zip(names, (4, 8, 4), stages, strict=True):
            setattr(self, name, nn.Sequential(*[TorchvisionV2Unit(cin if i == 0 else cout, cout,
                                                                  2 if i == 0 else 1)
                                                for i in range(repeats)]))
            cin = cout
        self.conv5 = nn.Sequential(*conv_bn(cin, c5))
        self.fc = nn.Linear(c5, num_classes)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean((2, 3)))


class TimmSeparable(nn.Module):
    """timm's DepthwiseSeparableConv with pointwise activation: conv_dw, bn1 (+act), conv_pw,
    bn2 (+act); timm's BatchNormAct2d keeps BatchNorm2d's parameter names."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv_dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu6(self.bn2(self.conv_pw(F.relu6(self.bn1(self.conv_dw(x))))))


class TimmMobileNetV1(nn.Module):
    """timm mobilenetv1_100: conv_stem, bn1, blocks.s.b (1, 2, 2, 6, 2 blocks), classifier;
    ``alpha`` scales the channels as ours do (timm publishes 1.0 only)."""

    def __init__(self, num_classes=1000, alpha=1.0):
        super().__init__()
        cin = int(32 * alpha)
        self.conv_stem = nn.Conv2d(3, cin, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        stages = []
        for cout, repeats in ((64, 1), (128, 2), (256, 2), (512, 6), (1024, 2)):
            cout, blocks = int(cout * alpha), []
            for i in range(repeats):
                blocks.append(TimmSeparable(cin, cout, 2 if i == 0 and stages else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.blocks(F.relu6(self.bn1(self.conv_stem(x))))
        return self.classifier(x.mean((2, 3)))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics (not the defaults 0/1, which would hide BN mistakes),
    scaled so that activations stay near 1 through the residual units; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype != torch.float32:
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif tensor.ndim == 1:  # BN weight
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.4 + 0.2)
            else:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (1 / fan_in) ** 0.5)
    return model.eval()


def torch_network(name: str, num_classes: int = 1000) -> nn.Module:
    """The PyTorch network of the same architecture as our ``name`` (megvii's ShuffleNets,
    timm's MobileNetV1 with ours' widths), for timing against."""
    from src.models.registry import family_of, variant_args
    family, args = family_of(name), variant_args(name)
    if family == "shufflenet_v1":
        return MegviiShuffleNetV1(args["group"], args["width"], num_classes)
    if family == "shufflenet_v2":
        return MegviiShuffleNetV2(args["width"], num_classes)
    return TimmMobileNetV1(num_classes, args["alpha"])
