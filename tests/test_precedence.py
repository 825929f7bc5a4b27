"""Which value wins, for every consumer of weights: a command-line flag, then what the checkpoint
records, then the yaml. A flag that contradicts what the weights fix (network, classes, layout)
is refused. Each consumer (eval, export, infer, --pretrained) is run far enough to see the
values it uses."""
import json

import pytest

from src.checkpoint import read_checkpoint, resolve
from src.deploy.predictor import Predictor
from src.errors import UserError
from src.model_utils.config import get_config
from tests.helpers import saved_checkpoint, write_image_folder

NET = "mobilenet_v1_025"
# The three sources of image_size and input_norm, each with its own value.
YAML = {"image_size": 32, "input_norm": "imagenet"}
CKPT = {"image_size": 64, "input_norm": "inception"}
FLAG = {"image_size": 96, "input_norm": "megvii_bgr"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("precedence")
    yaml = root / "run.yaml"
    yaml.write_text(f"dataset: imagenet\nnetwork: {NET}\nnum_classes: 2\n" +
                    "".join(f"{k}: {v}\n" for k, v in YAML.items()))
    return {"yaml": str(yaml), "root": root,
            "data": write_image_folder(str(root / "data"), per_class=1, classes=2, size=40),
            # a checkpoint that records its pixels and layout, and one that records none
            "recorded": saved_checkpoint(root / "recorded.ckpt", NET, num_classes=2,
                                         dataset="imagenet", activation="relu6", **CKPT),
            "bare": str(root / "bare.ckpt")}


@pytest.fixture(scope="module")
def bare(world):
    """A checkpoint of our names without any record (read as MindCV's: network, classes and
    layout from its shapes, no pixels)."""
    import mindspore as ms
    params, _ = read_checkpoint(world["recorded"])
    ms.save_checkpoint([{"name": n, "data": p.data} for n, p in params.items()
                        if not n.startswith(("moments", "global_step"))], world["bare"])
    return world["bare"]


CELLS = {  # cell: (flags, checkpoint fixture, the values that must win)
    "flag": (lambda: [f"--{k}={v}" for k, v in FLAG.items()], "recorded", FLAG),
    "checkpoint": (lambda: [], "recorded", CKPT),
    "yaml": (lambda: [], "bare", YAML),
}


def config_of(world, *flags):
    return get_config(["--config_path", world["yaml"], "--dataset_path", world["data"], *flags])


@pytest.mark.parametrize("cell", list(CELLS))
def test_resolve_table(world, bare, cell):
    flags, ckpt, expected = CELLS[cell]
    config = config_of(world, *flags())
    record = resolve(config, read_checkpoint(world[ckpt])[1], world[ckpt])
    assert {"image_size": record.image_size, "input_norm": record.input_norm} == expected
    # The layout the weights were trained with, whatever the yaml says (MindCV's relu for the
    # bare one, which its shapes cannot tell from relu6).
    assert dict(record.options)["activation"] == ("relu6" if ckpt == "recorded" else "relu")


@pytest.mark.parametrize("flag, message", [
    ("--network=shufflenet_v2_x0_5", "--network shufflenet_v2_x0_5 contradicts the checkpoint's "
                                      f"{NET}"),
    ("--num_classes=7", "--num_classes 7 contradicts the checkpoint's 2"),
    ("--activation=relu", "--activation relu contradicts the checkpoint's relu6"),
])
def test_a_flag_that_contradicts_the_weights_is_refused(world, flag, message):
    config = config_of(world, flag)
    with pytest.raises(UserError, match=message):
        resolve(config, read_checkpoint(world["recorded"])[1], world["recorded"])
    # The same value given as a flag agrees and is taken.
    agreeing = config_of(world, "--activation=relu6", "--num_classes=2")
    assert resolve(agreeing, read_checkpoint(world["recorded"])[1], "").num_classes == 2


class Seen(Exception):
    """Raised by a stand-in for create_dataset: the config the data pipeline would get."""


def spy_on_data(monkeypatch, module):
    def create_dataset(config, *args, **kwargs):
        raise Seen(config)
    monkeypatch.setattr(module, "create_dataset", create_dataset)


@pytest.mark.parametrize("cell", list(CELLS))
def test_eval_uses_the_table(world, bare, cell, monkeypatch, cli):
    import src.deploy.evaluator
    spy_on_data(monkeypatch, src.deploy.evaluator)
    flags, ckpt, expected = CELLS[cell]
    with pytest.raises(Seen) as seen:
        cli("eval.py", "--config_path", world["yaml"], "--dataset_path", world["data"],
            "--checkpoint_path", world[ckpt], *flags())
    data = seen.value.args[0]
    assert {"image_size": data.image_size, "input_norm": data.input_norm} == expected


@pytest.mark.parametrize("cell", list(CELLS))
def test_export_uses_the_table(world, bare, cell, cli, tmp_path):
    flags, ckpt, expected = CELLS[cell]
    result = cli("export.py", "--config_path", world["yaml"], "--checkpoint_path", world[ckpt],
                 "--file_format", "ONNX", "--file_name", tmp_path / "net", *flags())
    assert result.returncode == 0, result.stderr
    sidecar = json.load(open(tmp_path / "net.onnx.json"))
    side = expected["image_size"]
    assert sidecar["input_shape"] == [None, 3, side, side]
    assert sidecar["input_norm"] == expected["input_norm"]


@pytest.mark.parametrize("cell", list(CELLS))
def test_infer_uses_the_table(world, bare, cell):
    flags, ckpt, expected = CELLS[cell]
    predictor = Predictor(world[ckpt], config_of(world, *flags()))
    side = expected["image_size"]
    assert predictor.size == (side, side) and predictor.record.input_norm == \
        expected["input_norm"]


@pytest.mark.parametrize("cell", list(CELLS))
def test_pretrained_uses_the_table(world, bare, cell, monkeypatch, cli, tmp_path):
    """Fine-tuning takes the weights' layout and their input normalisation (flag, then the
    checkpoint's, then the yaml's); the image size is the fine-tuning data's (flag, then yaml):
    a checkpoint's recorded size says how it was trained, not how the new data looks."""
    import src.training.trainer
    spy_on_data(monkeypatch, src.training.trainer)
    flags, ckpt, expected = CELLS[cell]
    with pytest.raises(Seen) as seen:
        cli("train.py", "--config_path", world["yaml"], "--dataset_path", world["data"],
            "--pretrained", world[ckpt], "--output_path", tmp_path / "run", *flags())
    data = seen.value.args[0]
    assert data.input_norm == expected["input_norm"]
    assert data.image_size == (FLAG if cell == "flag" else YAML)["image_size"]
