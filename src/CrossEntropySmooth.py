"""Cross entropy with label smoothing, as the model_zoo ports define it."""
from mindspore import Tensor, nn, ops
from mindspore.common import dtype as mstype


class CrossEntropySmooth(nn.LossBase):
    """Softmax cross entropy against smoothed one-hot labels.

    The target is ``1 - smooth_factor`` on the true class and ``smooth_factor / (C - 1)`` on
    each other class: the zoo's formula (MindCV and PyTorch put ``1 - s + s/C`` and ``s/C``).
    ``sparse=True`` takes class indices; otherwise labels are already one-hot/probabilities.
    """

    def __init__(self, sparse=True, reduction="mean", smooth_factor=0.0, num_classes=1000):
        super().__init__()
        self.sparse = sparse
        self.on_value = Tensor(1.0 - smooth_factor, mstype.float32)
        self.off_value = Tensor(smooth_factor / (num_classes - 1) if num_classes > 1 else 0.0,
                                mstype.float32)
        self.ce = nn.SoftmaxCrossEntropyWithLogits(reduction=reduction)

    def construct(self, logits, label):
        if self.sparse:
            depth = logits.shape[1]
            label = ops.one_hot(ops.cast(label, mstype.int32), depth, self.on_value,
                                self.off_value)
        logits = ops.cast(logits, mstype.float32)
        return self.ce(logits, label)
