"""src/checkpoint.py on its own: the metadata a checkpoint carries, the refusals when loading it,
and saves that leave nothing half-written, a full disk included."""
import errno
import json
import os

import mindspore as ms
import numpy as np
import pytest

from src.checkpoint import (
    load_weights,
    partial_path,
    read_checkpoint,
    save_atomically,
)
from src.errors import UserError
from tests.helpers import network_of, saved_checkpoint

NET = "mobilenet_v1_025"


def test_metadata_round_trip(tmp_path):
    path = saved_checkpoint(tmp_path / f"{NET}-3_7.ckpt", NET, num_classes=5, epoch=3, steps=7,
                            activation="relu6", dataset="imagenet", image_size=64,
                            input_norm="inception", class_names=json.dumps(list("abcde")))
    params, meta = read_checkpoint(path)
    assert meta == {"network": NET, "num_classes": 5, "activation": "relu6",
                    "dataset": "imagenet", "image_size": 64, "input_norm": "inception",
                    "eval_resize": 0, "epoch_num": 3, "step_num": 21,
                    "class_names": list("abcde")}
    assert "classifier.weight" in params and "network" not in params
    net = network_of(meta)
    load_weights(net, params, path)
    assert net.classifier.weight.shape == (5, 256)


def test_loading_refuses_another_network_other_classes_and_nan(tmp_path):
    params, _ = read_checkpoint(saved_checkpoint(tmp_path / "a.ckpt", NET, num_classes=4))
    with pytest.raises(UserError, match="trained for 4 classes, not 7: use --pretrained"):
        load_weights(network_of({"network": NET, "num_classes": 7}), params, "a.ckpt")
    other = network_of({"network": "shufflenet_v2_x0_5", "num_classes": 4})
    with pytest.raises(UserError, match="checkpoint has no parameter 'first_conv.0.weight'"):
        load_weights(other, params, "a.ckpt")
    params["features.3.0.weight"].set_data(ms.Tensor(
        np.full(params["features.3.0.weight"].shape, np.inf, np.float32)))
    with pytest.raises(UserError, match=r"NaN or Inf weights \('features.3.0.weight'\)"):
        load_weights(network_of({"network": NET, "num_classes": 4}), params, "a.ckpt")
    # All but the classifier (--pretrained) still checks what it loads, and only that.
    params, _ = read_checkpoint(saved_checkpoint(tmp_path / "b.ckpt", NET, num_classes=4))
    load_weights(network_of({"network": NET, "num_classes": 9}), params, "b.ckpt",
                 skip=("classifier",))


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    """MindSpore raises OSError(ENOSPC) from save_checkpoint when the disk fills (measured on a
    2 MB tmpfs), after writing part of its own temporary file: the same here, in-process."""
    earlier = saved_checkpoint(tmp_path / f"{NET}-1_2.ckpt", NET)
    real_save = ms.save_checkpoint

    def full_disk(network, name, **kwargs):
        with open(os.path.splitext(name)[0] + ".tmp", "wb") as f:  # MindSpore's own temp file
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ms, "save_checkpoint", full_disk)
    net = network_of({"network": NET, "num_classes": 4})
    with pytest.raises(UserError) as err:
        save_atomically(net, str(tmp_path / f"{NET}-2_2.ckpt"), {"epoch_num": 2})
    line = err.value.line()
    assert line.startswith(f"error: disk full writing {NET}-2_2.ckpt: ")
    assert "MB free, about" in line
    assert f"({tmp_path})" in line and "--resume auto" in line
    assert sorted(os.listdir(tmp_path)) == [f"{NET}-1_2.ckpt"]  # no partial, no .tmp
    monkeypatch.setattr(ms, "save_checkpoint", real_save)
    assert read_checkpoint(earlier)[1]["epoch_num"] == 1


def test_a_save_writes_a_hidden_partial_first(tmp_path):
    path = str(tmp_path / "x.ckpt")
    assert partial_path(path) == str(tmp_path / ".partial-x.ckpt")
    save_atomically(network_of({"network": NET, "num_classes": 4}), path, {"epoch_num": 1})
    assert os.listdir(tmp_path) == ["x.ckpt"]
