"""CrossEntropySmooth: the zoo's smoothing formula."""
import mindspore as ms
import numpy as np
import pytest

from src.CrossEntropySmooth import CrossEntropySmooth


@pytest.mark.parametrize("smooth", [0.0, 0.1])
def test_matches_the_formula(smooth):
    logits = np.random.RandomState(0).randn(4, 5).astype(np.float32)
    labels = np.array([0, 3, 4, 1], np.int32)
    loss = CrossEntropySmooth(sparse=True, reduction="mean", smooth_factor=smooth, num_classes=5)
    got = float(loss(ms.Tensor(logits), ms.Tensor(labels)).asnumpy())
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    target = np.full((4, 5), smooth / 4)
    target[np.arange(4), labels] = 1 - smooth
    assert got == pytest.approx(float(-(target * log_p).sum(1).mean()), rel=1e-5)


def test_reduction_none_gives_one_loss_per_sample():
    loss = CrossEntropySmooth(reduction="none", smooth_factor=0.1, num_classes=3)
    out = loss(ms.Tensor(np.zeros((6, 3), np.float32)), ms.Tensor(np.zeros(6, np.int32)))
    assert out.shape == (6,)
    assert np.allclose(out.asnumpy(), np.log(3), rtol=1e-5)
