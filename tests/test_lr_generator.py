"""Learning-rate arrays: formulas, boundaries and length."""
import math

import numpy as np
import pytest

from src.lr_generator import get_lr


@pytest.mark.parametrize("mode", ["steps", "poly", "cosine", "linear"])
def test_length_dtype_and_warmup(mode):
    lr = get_lr(mode, 0.01, 0.1, 0.001, warmup_epochs=2, total_epochs=10, steps_per_epoch=5)
    assert lr.shape == (50,) and lr.dtype == np.float32
    # Linear warm-up from lr_init to lr_max over W = 10 steps, reaching lr_max at step W - 1.
    for i in range(10):
        assert lr[i] == pytest.approx(0.01 + 0.09 * (i + 1) / 10, rel=1e-6)
    assert lr[9] == pytest.approx(0.1)
    assert lr.max() == pytest.approx(0.1)


def test_cosine_formula_and_ends():
    lr = get_lr("cosine", 0.0, 0.5, 0.0, warmup_epochs=4, total_epochs=20, steps_per_epoch=10)
    w, t = 40, 200
    assert lr[w] == pytest.approx(0.5)  # first step after warm-up is the peak
    for i in (w, 77, 150, t - 1):
        assert lr[i] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * (i - w) / (t - w))),
                                      rel=1e-5, abs=1e-8)
    assert lr[-1] < 1e-4 and np.all(np.diff(lr[w:]) <= 0)


def test_poly_formula():
    lr = get_lr("poly", 0.01, 0.1, 0.0, warmup_epochs=5, total_epochs=90, steps_per_epoch=3)
    w, t = 15, 270
    for i in (w, 100, t - 1):
        assert lr[i] == pytest.approx(0.1 * (1 - (i - w) / (t - w)) ** 2, rel=1e-5)


def test_linear_formula_reaches_lr_end():
    lr = get_lr("linear", 0.0, 0.8, 0.0, warmup_epochs=0, total_epochs=90, steps_per_epoch=4)
    assert lr[0] == pytest.approx(0.8)
    assert lr[180] == pytest.approx(0.8 - 0.8 * 180 / 360, rel=1e-6)
    assert lr[-1] == pytest.approx(0.8 / 360, rel=1e-4)


def test_steps_boundaries():
    lr = get_lr("steps", 0.1, 0.1, 0.0, warmup_epochs=0, total_epochs=10, steps_per_epoch=10)
    assert lr[29] == pytest.approx(0.1) and lr[30] == pytest.approx(0.01)
    assert lr[59] == pytest.approx(0.01) and lr[60] == pytest.approx(0.001)
    assert lr[79] == pytest.approx(0.001) and lr[80] == pytest.approx(0.0001)


def test_warmup_longer_than_training_is_all_warmup():
    lr = get_lr("cosine", 0.0, 1.0, 0.0, warmup_epochs=5, total_epochs=2, steps_per_epoch=2)
    assert lr.tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="lr_decay_mode"):
        get_lr("exp", 0.0, 1.0, 0.0, 0, 1, 1)
