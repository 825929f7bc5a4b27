"""docs/SIZING.md is what `python -m src.tools.sizing` prints, and its rules compute what they
say."""
import os

import pytest

from src.tools.sizing import (
    allreduce_rows,
    markdown,
    parameter_counts,
    reading_rows,
    recipe,
    scaling_rows,
)
from tests.helpers import ROOT


def test_scaling_keeps_the_per_device_batch_and_scales_lr_linearly():
    rows = scaling_rows(batch=128, lr_max=0.5, lr_base_batch=1024)
    assert [r[0] for r in rows] == [1, 2, 4, 8, 16, 32, 64]
    nodes, devices, global_batch, lr, steps = rows[0]
    assert (devices, global_batch, lr, steps) == (8, 1024, 0.5, 1252)  # 1,281,167 / 1,024
    assert rows[-1][1:4] == (512, 65536, 32.0)


def test_ring_allreduce_sends_about_twice_the_gradients():
    (name, count, grad, ring8, ring512), = allreduce_rows({"net": 1_000_000})
    assert (grad, ring8) == (4.0, 7.0) and abs(ring512 - 4.0 * 2 * 511 / 512) < 1e-9
    assert reading_rows((1000,)) == [(1000, 8000, 880.0, 20.0)]


@pytest.mark.slow
def test_the_doc_is_the_scripts_output():
    """Builds the 28 networks for their parameter counts (about 20 s)."""
    with open(os.path.join(ROOT, "docs", "SIZING.md"), encoding="utf-8") as f:
        assert f.read() == markdown(parameter_counts(), recipe()), \
            "run: python -m src.tools.sizing > docs/SIZING.md"
