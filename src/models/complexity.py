"""Parameter and multiply-add counts of the networks (``python -m src.tools.complexity`` prints
the table)."""
import mindspore as ms
import numpy as np
from mindspore import nn

from .layers import FusedSequence


def count_params(net: nn.Cell) -> int:
    """Trainable parameters (BN gamma/beta included, moving statistics not)."""
    return int(sum(np.prod(p.shape) for p in net.trainable_params()))


def count_macs(net: nn.Cell, image_size: int = 224) -> int:
    """Multiply-adds of one ``image_size`` RGB image through convolutions and dense layers.

    Runs one forward pass in PyNative mode with hooks that read each layer's output shape;
    a conv costs out_elements * (in_channels / groups) * kh * kw, a dense in * out.
    """
    macs = []

    def conv_hook(cell, _inputs, output):
        kh, kw = cell.kernel_size
        macs.append(int(np.prod(output.shape[1:])) * (cell.in_channels // cell.group) * kh * kw)

    def dense_hook(cell, _inputs, output):
        macs.append(cell.in_channels * cell.out_channels)

    handles, fused = [], []
    for _, cell in net.cells_and_names():
        if isinstance(cell, FusedSequence) and cell.fusing:
            fused.append(cell)  # its convs run inside one fused op, which no hook sees
            cell.fusing = False
        elif isinstance(cell, nn.Conv2d):
            handles.append(cell.register_forward_hook(conv_hook))
        elif isinstance(cell, nn.Dense):
            handles.append(cell.register_forward_hook(dense_hook))
    mode = ms.get_context("mode")
    was_training = net.training
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net.set_train(False)
        net(ms.Tensor(np.zeros((1, 3, image_size, image_size), np.float32)))
    finally:
        for handle in handles:
            handle.remove()
        for cell in fused:
            cell.fusing = True
        net.set_train(was_training)
        ms.set_context(mode=mode)
    return sum(macs)


def complexity_table(names, num_classes=1000, image_size=224) -> list:
    """[(name, params, macs)] for each network name."""
    from .registry import create_network
    rows = []
    for name in names:
        net = create_network(name, num_classes=num_classes)
        rows.append((name, count_params(net), count_macs(net, image_size)))
    return rows
