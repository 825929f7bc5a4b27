"""Layers shared by the three families: 1x1 and depthwise convs, channel shuffle, pooling.

Every family builds its convolutions here, so a faster way to compute one kind of layer
changes all networks at once and never changes a parameter's name or shape.
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops

from . import cpu_kernels

# conv_impl: what computes the depthwise, 1x1 and stem convs and BatchNorm (their parameters
# are the same whatever computes them). The names before 2026-11 still work (ALIASES).
CONV_IMPLS = ("auto", "ours", "mindspore", "mindspore_split", "mindspore_grouped", "mindspore_taps")
ALIASES = {"fast": "ours", "standard": "mindspore", "split": "mindspore_split",
           "native": "mindspore_grouped"}
SHUFFLE_ORDERS = ("paper", "megvii")
POOL_PADS = ("pad", "same")


def resolve_conv_impl(impl: str = "auto") -> str:
    """How this backend computes the convs and BatchNorm: "ours", "mindspore_split",
    "mindspore_grouped" or "mindspore_taps" (``impl`` as given, "auto" and "mindspore" made one of
    them; the old names in ALIASES taken as input).

    - "ours": our CPU kernels (cpu_kernels.py) for the depthwise, 1x1 and stem convs and
      BatchNorm, forward and backward; CPU only, refused elsewhere (ValueError).
    - "mindspore_split": MindSpore's operators, a grouped 1x1 conv as one plain conv per group
      over slices of its one weight. MindSpore's CPU grouped conv is far slower than that
      (docs/PERFORMANCE.md), and Ascend runs grouped convs natively only when depthwise.
    - "mindspore_grouped": MindSpore's ``nn.Conv2d`` with ``group=`` throughout.
    - "mindspore_taps": "mindspore_split", with the 3x3 stem and depthwise convs built from the
      nine shifted windows of the input (``windows3x3``): the stem as a 1x1 conv of them, the
      depthwise conv as their per-channel weighted sum, which MindSpore 2.10's CPU runs faster
      than its Conv2D of those (docs/PERFORMANCE.md). What export writes for MINDIR
      (exporter.EXPORT_CONV_IMPL), whatever device exports; standard operators only, so it runs
      on every device.
    - "mindspore": the faster of those two here: grouped on GPU, split elsewhere. Only standard
      operators: what export writes.
    - "auto": "ours" on CPU when the kernels build (else "mindspore", with one line saying
      why), "mindspore" elsewhere.
    """
    impl = ALIASES.get(impl, impl)
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl {impl!r} is not one of {CONV_IMPLS}")
    target = ms.get_context("device_target")
    if impl == "ours" and (target != "CPU" or not cpu_kernels.library()):
        raise ValueError(f"conv_impl ours (our CPU kernels) does not run here ({target}"
                         f"{'' if target != 'CPU' else ', the kernels did not build'})")
    if impl in ("auto", "ours") and target == "CPU" and cpu_kernels.library():
        return "ours"
    if impl in ("mindspore_split", "mindspore_grouped", "mindspore_taps"):
        return impl
    return "mindspore_grouped" if target == "GPU" else "mindspore_split"


def _fast_call(op, x, weight):
    """``op(x, weight)`` computed in float32, the one dtype our kernels take."""
    if x.dtype == ms.float32 and weight.dtype == ms.float32:
        return op(x, weight)
    return ops.cast(op(ops.cast(x, ms.float32), ops.cast(weight, ms.float32)), x.dtype)


class Conv1x1(nn.Conv2d):
    """1x1 convolution with ``group`` groups (1: a plain pointwise conv), no bias.

    Holds the one ``(out, in/g, 1, 1)`` weight that ``nn.Conv2d(group=g)`` holds (same name,
    same shape), so checkpoints are the same whatever ``impl`` (resolve_conv_impl) computes it.
    """

    def __init__(self, in_channels: int, out_channels: int, group: int = 1, impl: str = "auto"):
        super().__init__(in_channels, out_channels, 1, stride=1, pad_mode="valid",
                         group=group, has_bias=False)
        impl = resolve_conv_impl(impl)
        self.fast = impl == "ours"  # as ConvKxK and BatchNorm say it
        self.split = impl in ("mindspore_split", "mindspore_taps") and group > 1  # else grouped
        if self.fast:
            self.fast_op = cpu_kernels.conv_op("1x1")
        self.split_input = ops.Split(axis=1, output_num=group)
        self.split_weight = ops.Split(axis=0, output_num=group)
        # kernel_size as a tuple: an int attribute fails ONNX export on 2.10.
        self.group_conv = ops.Conv2D(out_channel=out_channels // group, kernel_size=(1, 1))

    def construct(self, x):
        if self.fast:
            out = _fast_call(self.fast_op, x, self.weight)
        elif not self.split:
            out = self.conv2d(x, self.weight)
        else:
            xs = self.split_input(x)
            ws = self.split_weight(self.weight)
            outs = ()
            for i in range(self.group):
                outs = outs + (self.group_conv(xs[i], ws[i]),)
            out = ops.concat(outs, axis=1)
            if self.has_bias:  # as (1, C, 1, 1): ONNX broadcasts a (C,) Add against W
                return out + ops.reshape(self.bias, (1, -1, 1, 1))
        return self.bias_add(out, self.bias) if self.has_bias else out

    def bn_act_op(self, activation):
        """The inference op of this conv with a BatchNorm and ``activation`` after it."""
        return cpu_kernels.conv_bn_act_op("1x1", 1, activation)


class ConvKxK(nn.Conv2d):
    """k x k convolution with symmetric padding k // 2 and no bias, dense (``group=1``) or
    depthwise (``group`` = channels).

    Its weight is ``nn.Conv2d``'s; ``impl`` "ours" (stride 1 or 2, odd k <= 7) computes it
    with our CPU kernels, anything else with MindSpore's.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, group: int = 1, impl: str = "auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, pad_mode="pad",
                         padding=kernel_size // 2, group=group, has_bias=False)
        depthwise = group == in_channels == out_channels
        fits = (group == 1 or depthwise) and stride in cpu_kernels.STRIDES \
            and kernel_size % 2 == 1 and kernel_size <= cpu_kernels.MAX_KERNEL
        impl = resolve_conv_impl(impl)
        self.fast = fits and impl == "ours"
        self.kind = "depthwise" if depthwise else "dense"
        # The nine windows ("mindspore_taps"): the dense and depthwise 3x3 convs
        self.taps = impl == "mindspore_taps" and kernel_size == 3 and \
            stride in cpu_kernels.STRIDES and (group == 1 or depthwise)
        if self.fast:
            self.fast_op = cpu_kernels.conv_op(self.kind, stride)
        if self.taps and self.kind == "dense":  # the 1x1 conv of the nine windows
            self.one_by_one = ops.Conv2D(out_channel=out_channels, kernel_size=(1, 1))

    def construct(self, x):
        if self.fast:
            out = _fast_call(self.fast_op, x, self.weight)
        elif self.taps:
            out = self.from_windows(x)
        else:
            out = self.conv2d(x, self.weight)
        return self.bias_add(out, self.bias) if self.has_bias else out

    def from_windows(self, x):
        """The 3x3 conv from windows3x3: dense as a 1x1 conv of the nine windows, depthwise as
        their per-channel weighted sum. Its gradients in training mode only: eval mode slices
        the whole, possibly open, batch (an export), which MindSpore's SliceGrad refuses."""
        batch = -1  # eval mode (an export's batch may be open); a constant in graph mode
        if self.training:
            batch = x.shape[0]
        windows = windows3x3(x, self.stride[0], batch)
        if self.kind == "dense":  # (Cout, Cin, 3, 3) -> (Cout, 9 Cin, 1, 1)
            weight = ops.reshape(ops.transpose(self.weight, (0, 2, 3, 1)),
                                 (self.out_channels, -1, 1, 1))
            return self.one_by_one(ops.concat(windows, axis=1), weight)
        taps = ops.split(ops.reshape(self.weight, (self.out_channels, 9)), 1, axis=1)
        out = None
        for tap, window in zip(taps, windows):  # noqa: B905  (graph-mode syntax: MindSpore's parser takes no strict=)
            term = window * ops.reshape(tap, (1, -1, 1, 1))
            out = term if out is None else out + term
        return out

    def bn_act_op(self, activation):
        """The inference op of this conv with a BatchNorm and ``activation`` after it."""
        return cpu_kernels.conv_bn_act_op(self.kind, self.stride[0], activation)


def conv1x1(in_channels: int, out_channels: int, group: int = 1, impl: str = "auto") -> Conv1x1:
    """1x1 convolution with ``group`` groups and no bias (see Conv1x1)."""
    return Conv1x1(in_channels, out_channels, group, impl)


def depthwise_conv(channels: int, kernel_size: int = 3, stride: int = 1,
                   impl: str = "auto") -> ConvKxK:
    """k x k depthwise convolution with padding k // 2 and no bias (see ConvKxK)."""
    return ConvKxK(channels, channels, kernel_size, stride, channels, impl)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, impl: str = "auto") -> ConvKxK:
    """Dense 3x3 convolution with symmetric padding 1 and no bias (the stems; see ConvKxK)."""
    return ConvKxK(in_channels, out_channels, 3, stride, 1, impl)


class BatchNorm(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with MindSpore's convention, momentum 0.9 (PyTorch's 0.1), eps 1e-5.

    Same parameters. With ``impl`` "ours", training mode computes the batch statistics, the
    normalisation and its gradient with our CPU kernel and updates the moving statistics as
    MindSpore's does (the moving variance from the unbiased batch variance); eval mode, and
    every other impl, is MindSpore's own. ``fuse_activation`` (FusedSequence calls it) puts the
    ReLU / ReLU6 after it into that training kernel, forward and gradient.
    """

    def __init__(self, channels: int, impl: str = "auto"):
        super().__init__(channels, momentum=0.9, eps=1e-5)
        self.fast = resolve_conv_impl(impl) == "ours"
        self.eps_tensor = ms.Tensor([self.eps], ms.float32)
        if self.fast:
            self.fast_op = cpu_kernels.batch_norm_op()

    def fuse_activation(self, activation: str) -> None:
        """Apply ``activation`` ("relu", "relu6") in the training kernel too. The caller still
        applies it after: both are idempotent, so where this kernel runs (training, float32 in)
        the second one changes nothing, and where it does not the caller's is the one."""
        self.fast_op = cpu_kernels.batch_norm_op(activation)

    def construct(self, x):
        if self.fast and self.training and self.use_batch_statistics is None and \
                x.dtype == ms.float32:
            y, mean, _, variance = self.fast_op(x, self.gamma, self.beta, self.eps_tensor)
            count = x.shape[0] * x.shape[2] * x.shape[3]
            unbiased = ops.stop_gradient(variance) * (count / max(count - 1, 1))
            keep = 1.0 - self.momentum  # nn.BatchNorm2d stores 1 - momentum
            ops.assign(self.moving_mean,
                       self.moving_mean * keep + ops.stop_gradient(mean) * self.momentum)
            ops.assign(self.moving_variance,
                       self.moving_variance * keep + unbiased * self.momentum)
            return y
        return super().construct(x)


def batch_norm(channels: int, impl: str = "auto") -> BatchNorm:
    """BatchNorm with MindSpore's convention: momentum 0.9 (PyTorch's 0.1), eps 1e-5."""
    return BatchNorm(channels, impl)


def _fold_into(conv, bn) -> None:
    """Fold the eval-mode BatchNorm ``bn`` into the conv before it: weight * scale and a bias
    shift per output channel (scale = gamma / sqrt(var + eps), shift = beta - mean * scale)."""
    scale = bn.gamma.asnumpy() / np.sqrt(bn.moving_variance.asnumpy() + bn.eps)
    shift = bn.beta.asnumpy() - bn.moving_mean.asnumpy() * scale
    weight = conv.weight.asnumpy()
    conv.weight.set_data(ms.Tensor((weight * scale.reshape(-1, 1, 1, 1)).astype(weight.dtype)))
    conv.bias = ms.Parameter(ms.Tensor(shift.astype(weight.dtype)), name=conv.weight.name[:-6]
                             + "bias")
    conv.has_bias = True
    conv.bias_add = ops.BiasAdd()


class FusedSequence(nn.SequentialCell):
    """A SequentialCell (the same children and parameter names: checkpoints do not change) whose
    conv -> BatchNorm (-> ReLU / ReLU6) runs, in eval mode, as one op of our CPU kernels: the
    conv with the BatchNorm's moving statistics and the activation applied as its output is
    written (cpu_kernels.conv_bn_act_op). In training the BatchNorm's kernel applies the
    activation, forward and gradient (BatchNorm.fuse_activation), and the activation's own op is
    left out. Float16 (amp) and convs without our kernels run the children one by one.
    ``fold()`` folds each BatchNorm into its conv's weights and a bias instead, for an export of
    standard operators."""

    def __init__(self, cells):
        super().__init__(cells)
        groups, i, cells = [], 0, list(self.cell_list)
        while i < len(cells):
            conv, bn = cells[i], cells[i + 1] if i + 1 < len(cells) else None
            if isinstance(conv, (Conv1x1, ConvKxK)) and isinstance(bn, nn.BatchNorm2d) and \
                    conv.fast:
                after = cells[i + 2] if i + 2 < len(cells) else None
                activation = "relu6" if isinstance(after, nn.ReLU6) else \
                    "relu" if isinstance(after, nn.ReLU) else None
                conv.bn_act = conv.bn_act_op(activation)
                size = 2 if activation is None else 3
                if activation is not None and isinstance(bn, BatchNorm) and bn.fast:
                    bn.fuse_activation(activation)
            else:
                size = 1
            groups.append((i, size))
            i += size
        self.groups = tuple(groups)
        self.fusing = any(size > 1 for _, size in groups)
        self.group_cells = tuple(tuple(range(start, start + size)) for start, size in groups)
        self.set_training_cells()

    def set_training_cells(self) -> None:
        """Each group's children in training: without the activation that its BatchNorm's
        kernel applies (fuse_activation), unless that BatchNorm is frozen (its moving
        statistics kept, ``use_batch_statistics`` False: then MindSpore's own runs)."""
        cells = list(self.cell_list)
        self.training_cells = tuple(tuple(
            i for i in group if not (size == 3 and i == start + 2 and
                                     getattr(cells[start + 1], "fast", False) and
                                     cells[start + 1].use_batch_statistics is None))
            for (start, size), group in zip(self.groups, self.group_cells, strict=True))

    def construct(self, x):
        return self.run(x, 0, len(self.groups))

    def run(self, x, first: int, stop: int):
        """The groups ``first`` to ``stop`` - 1 on ``x`` (a network's level that ends inside
        the sequence; ``group_of``)."""
        if self.training and x.dtype == ms.float32:
            for cells in self.training_cells[first:stop]:
                for i in cells:
                    x = self.cell_list[i](x)
            return x
        if not self.fused_eval(x):
            for cells in self.group_cells[first:stop]:
                for i in cells:
                    x = self.cell_list[i](x)
            return x
        for start, size in self.groups[first:stop]:
            cell = self.cell_list[start]
            if size == 1:
                x = cell(x)
            else:
                bn = self.cell_list[start + 1]
                x = cell.bn_act(x, cell.weight, bn.gamma, bn.beta, bn.moving_mean,
                                bn.moving_variance, bn.eps_tensor)
        return x

    def group_of(self, cell: int) -> int:
        """The index of the group that starts at child ``cell``."""
        return [start for start, _ in self.groups].index(cell)

    def fused_eval(self, x) -> bool:
        """Whether ``x`` runs through the fused eval kernels: eval mode, float32, and a conv
        fused with its BatchNorm in this sequence (the whole-unit ops ask the same)."""
        return self.fusing and not self.training and x.dtype == ms.float32

    def conv_bn_tensors(self) -> tuple:
        """(weight, gamma, beta, moving mean, moving variance) of each fused conv -> BatchNorm,
        in order, flat: what the whole-unit and whole-block kernels take (cpu_kernels'
        shufflenet_v2_unit_op, shufflenet_v1_unit_op, separable_block_op)."""
        tensors = ()
        for start, size in self.groups:
            if size > 1:
                conv, bn = self.cell_list[start], self.cell_list[start + 1]
                tensors = tensors + (conv.weight, bn.gamma, bn.beta, bn.moving_mean,
                                     bn.moving_variance)
        return tensors

    def fold(self) -> None:
        """Fold every BatchNorm that follows a conv into the conv (in place; eval mode only):
        the sequence then computes the same with fewer, standard operators."""
        cells = list(self.cell_list)
        for i in range(len(cells) - 1):
            if isinstance(cells[i], (Conv1x1, ConvKxK)) and isinstance(cells[i + 1],
                                                                        nn.BatchNorm2d):
                _fold_into(cells[i], cells[i + 1])
                self[i + 1] = nn.Identity()
        self.fusing = False


def fold_batch_norms(net) -> None:
    """Fold every BatchNorm of ``net`` that follows a conv into that conv, in place (see
    FusedSequence.fold): what export writes, with the moving statistics of eval mode."""
    for _, cell in list(net.cells_and_names()):
        if isinstance(cell, FusedSequence):
            cell.fold()


class ChannelShuffle(nn.Cell):
    """Channel shuffle with ``groups`` groups.

    ``order="paper"``: view (N, g, C/g) -> transpose -> flatten, so channel ``i*(C/g) + j``
    moves to ``j*g + i`` (ShuffleNet paper, Fig. 1). ``order="megvii"``: view (N, C/g, g),
    the inverse permutation, which megvii's and MindCV's code use; weights trained with it
    need it to reproduce their logits.
    """

    def __init__(self, groups: int, order: str = "paper"):
        super().__init__()
        if order not in SHUFFLE_ORDERS:
            raise ValueError(f"shuffle order {order!r} is not one of {SHUFFLE_ORDERS}")
        self.groups = groups
        self.paper_order = order == "paper"

    def construct(self, x):
        if self.groups == 1:
            return x
        _, c, h, w = x.shape
        # -1 for the batch, so an exported graph keeps a dynamic batch dimension.
        if self.paper_order:
            x = ops.reshape(x, (-1, self.groups, c // self.groups, h, w))
        else:
            x = ops.reshape(x, (-1, c // self.groups, self.groups, h, w))
        x = ops.transpose(x, (0, 2, 1, 3, 4))
        return ops.reshape(x, (-1, c, h, w))


def zero_pad(x, bottom: int = 1, right: int = 1):
    """x with one row and column of zeros before it and ``bottom`` rows and ``right`` columns
    after it (H and W). Split and Concat, because both ``ops.pad`` (PadV3) and MindSpore's
    padded pools (MaxPool3DWithArgmax, AvgPool3D) fail to export to ONNX on 2.10, and not
    slices: MindSpore's CPU StridedSlice is slower. Keeps the batch dynamic."""
    row = ops.split(x, (1, x.shape[2] - 1), axis=2)[0] * 0
    x = ops.concat((row, x) + (row,) * bottom, axis=2)
    col = ops.split(x, (1, x.shape[3] - 1), axis=3)[0] * 0
    return ops.concat((col, x) + (col,) * right, axis=3)


class ZeroPad1(nn.Cell):
    """Pad H and W with one row/column of zeros on each side (zero_pad)."""

    def construct(self, x):
        return zero_pad(x)


def windows3x3(x, stride: int, batch: int = -1) -> list:
    """The nine (N, C, Ho, Wo) windows a 3x3 conv with padding 1 and ``stride`` 1 or 2 reads,
    tap by tap (kh, kw row-major), from standard operators: x zero-padded, then one Slice a
    window; for stride 2 the padded x is viewed as (N, C, Ho + 1, 2, Wo + 1, 2), its rows and
    columns in pairs (an odd side padded once more), so that a window is one Slice too.
    ``batch``: x's, or -1 (all) where no gradient is taken (MindSpore's SliceGrad takes no -1)
    and the batch may be open (an export)."""
    _, c, h, w = x.shape
    windows = []  # loops: graph mode takes one for clause a comprehension
    if stride == 1:
        x = zero_pad(x)
        for kh in range(3):
            for kw in range(3):
                windows.append(ops.slice(x, (0, 0, kh, kw), (batch, c, h, w)))
        return windows
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    pairs = ops.reshape(zero_pad(x, 1 + h % 2, 1 + w % 2), (-1, c, ho + 1, 2, wo + 1, 2))
    for kh in range(3):
        for kw in range(3):
            window = ops.slice(pairs, (0, 0, kh // 2, kh % 2, kw // 2, kw % 2),
                               (batch, c, ho, 1, wo, 1))
            windows.append(ops.reshape(window, (-1, c, ho, wo)))
    return windows


class Pool3x3s2(nn.Cell):
    """3x3 stride-2 max or average pool with symmetric padding 1 (paper, PyTorch, megvii).

    Zero padding is exact for both uses here: the average pool counts the padded zeros
    (PyTorch's count_include_pad=True), and the max pool follows a ReLU, so its inputs are
    never below the zeros. ``pad_mode="same"`` gives MindCV's TF-style pools instead (the
    extra row/column at the bottom/right only), to reproduce its weights' logits. With ``impl``
    "ours" (resolve_conv_impl) the symmetric pool is our CPU kernel, the padding included,
    forward and gradient; float16 and "same" take MindSpore's pad and pool.
    """

    def __init__(self, kind: str, pad_mode: str = "pad", impl: str = "auto"):
        super().__init__()
        if pad_mode not in POOL_PADS:
            raise ValueError(f"pool padding {pad_mode!r} is not one of {POOL_PADS}")
        pool = nn.MaxPool2d if kind == "max" else nn.AvgPool2d
        self.symmetric = pad_mode == "pad"
        self.pad = ZeroPad1()
        self.pool = pool(3, 2, pad_mode="valid" if self.symmetric else "same")
        self.fast = self.symmetric and resolve_conv_impl(impl) == "ours"
        if self.fast:
            self.fast_op = cpu_kernels.pool_op(kind)

    def construct(self, x):
        if self.fast and x.dtype == ms.float32:
            return self.fast_op(x)
        if self.symmetric:
            x = self.pad(x)
        return self.pool(x)


def max_pool_3x3_s2(pad_mode: str = "pad", impl: str = "auto") -> Pool3x3s2:
    """The stems' 3x3 stride-2 max pool (after a ReLU)."""
    return Pool3x3s2("max", pad_mode, impl)


def avg_pool_3x3_s2(pad_mode: str = "pad", impl: str = "auto") -> Pool3x3s2:
    """ShuffleNetV1's stride-2 shortcut, counting the padded zeros."""
    return Pool3x3s2("avg", pad_mode, impl)


class Classifier(nn.Dense):
    """``nn.Dense`` (the same parameters and names), whose eval mode with ``impl`` "ours" takes
    our CPU kernel (MindSpore's MatMul is a visible share of a batch-1 inference). In training,
    ``drop_rate`` > 0 drops its inputs with that chance first (dropout, as timm's and MindCV's
    heads do); eval mode never does."""

    def __init__(self, in_channels: int, out_channels: int, has_bias: bool, impl: str = "auto",
                 drop_rate: float = 0.0):
        super().__init__(in_channels, out_channels, has_bias=has_bias)
        self.fast = resolve_conv_impl(impl) == "ours"
        if self.fast:
            self.fast_op = cpu_kernels.fully_connected_op(has_bias)
        self.drop_rate = float(drop_rate)
        self.dropout = nn.Dropout(p=self.drop_rate) if self.drop_rate > 0 else None

    def construct(self, x):
        if self.fast and not self.training and x.dtype == ms.float32:
            if self.has_bias:
                return self.fast_op(x, self.weight, self.bias)
            return self.fast_op(x, self.weight)
        if self.dropout is not None and self.training:
            x = self.dropout(x)
        return super().construct(x)


class GlobalAvgPool(nn.Cell):
    """Mean over H and W, (N, C, H, W) -> (N, C). Exports to ONNX, unlike AdaptiveAvgPool2d.
    With ``impl`` "ours", float32 takes our CPU kernel, forward and gradient (MindSpore's
    ReduceMean and its gradient are slow on CPU: docs/PERFORMANCE.md)."""

    def __init__(self, impl: str = "auto"):
        super().__init__()
        self.fast = resolve_conv_impl(impl) == "ours"
        if self.fast:
            self.fast_op = cpu_kernels.global_mean_op()

    def construct(self, x):
        if self.fast and x.dtype == ms.float32:
            return self.fast_op(x)
        return ops.mean(x, (2, 3), False)
