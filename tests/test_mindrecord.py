"""MindRecord shards of an image folder (python -m src.tools.mindrecord), read with --dataset
mindrecord; and sharding by rank for every data set kind: each sample once per epoch over all
ranks, the same steps on every rank."""
import hashlib
import json
import os
import shutil

import pytest

from src.dataset import create_dataset
from src.model_utils.config import get_config
from src.tools.mindrecord import convert
from tests.helpers import RESULT, saved_checkpoint, write_cifar_folder, write_image_folder

CLASSES = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An image folder of 3 classes (24 train, 12 val images), its MindRecord shards (2 a
    split), and CIFAR-10 binaries of 24 training images."""
    root = tmp_path_factory.mktemp("data")
    folder = write_image_folder(str(root / "imgs"), per_class=8, classes=CLASSES, size=48)
    info = convert(folder, str(root / "shards"), shards=2)
    return {"imagenet": folder, "mindrecord": str(root / "shards"), "info": info,
            "cifar10": write_cifar_folder(str(root / "cifar"), train_count=24, test_count=6,
                                          classes=CLASSES)}


def samples(kind, path, rank, size, training=True):
    """(steps, [(pixels' hash, label)]) that ``rank`` of ``size`` reads in one epoch (eval
    transforms: the same pixels every time)."""
    config = get_config(["--dataset", kind, "--dataset_path", path, "--num_classes",
                         str(CLASSES), "--image_size", "32"])
    data = create_dataset(config, training=training, rank_id=rank, rank_size=size, batch_size=1,
                          augment=False)
    return data.get_dataset_size(), [
        (hashlib.sha256(image.tobytes()).hexdigest(), int(label[0]))
        for image, label in data.create_tuple_iterator(output_numpy=True)]


def test_the_shards_hold_the_folders_images_labels_and_classes(data):
    assert data["info"]["classes"] == ["class_0", "class_1", "class_2"]
    assert (data["info"]["train"], data["info"]["val"], data["info"]["shards"]) == (24, 12, 2)
    assert sorted(os.listdir(data["mindrecord"])) == sorted(
        ["mindrecord.json"] + [f"{split}.mindrecord{i}{db}" for split in ("train", "val")
                               for i in range(2) for db in ("", ".db")])
    for training in (True, False):
        folder = sorted(samples("imagenet", data["imagenet"], 0, 1, training)[1])
        shards = sorted(samples("mindrecord", data["mindrecord"], 0, 1, training)[1])
        assert folder == shards and len(folder) == (24 if training else 12)


@pytest.mark.parametrize("kind", ["cifar10", "imagenet", "mindrecord"])
@pytest.mark.parametrize("ranks", [2, 3])
def test_every_sample_once_per_epoch_over_the_ranks(data, kind, ranks):
    everything = sorted(samples(kind, data[kind], 0, 1)[1])
    steps, seen = zip(*(samples(kind, data[kind], rank, ranks) for rank in range(ranks)),
                      strict=True)
    assert set(steps) == {24 // ranks}  # the same steps on every rank
    assert sorted(s for part in seen for s in part) == everything  # each sample exactly once


def test_eval_of_the_shards_is_eval_of_the_folder(data, cli, tmp_path):
    """The same checkpoint scores the same on the val folder and on its shards."""
    ckpt = saved_checkpoint(tmp_path / "m-1_2.ckpt", "mobilenet_v1_025", num_classes=CLASSES,
                            dataset="imagenet", image_size=32,
                            class_names=json.dumps(data["info"]["classes"]))
    figures = []
    for kind in ("imagenet", "mindrecord"):
        result = cli("eval.py", "--checkpoint_path", ckpt, "--dataset", kind, "--dataset_path",
                     data[kind])
        assert result.returncode == 0, result.stderr
        figures.append(RESULT.search(result.stdout).groups()[:3])
    assert figures[0] == figures[1]


@pytest.mark.slow
def test_train_reads_the_shards(data, cli, tmp_path):
    result = cli("train.py", "--network", "mobilenet_v1_025", "--dataset", "mindrecord",
                 "--dataset_path", data["mindrecord"], "--num_classes", str(CLASSES),
                 "--image_size", "32", "--batch_size", "8", "--epoch_size", "1",
                 "--output_path", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "3 steps/epoch" in result.stdout
    from src.checkpoint import read_checkpoint
    _, meta = read_checkpoint(str(tmp_path / "run" / "ckpt_0" / "mobilenet_v1_025-1_3.ckpt"))
    assert meta["dataset"] == "mindrecord"
    assert list(meta["class_names"]) == data["info"]["classes"]


def bad_conversions(data, tmp_path):
    """id: (argv, what the line says)."""
    other = str(tmp_path / "other")
    shutil.copytree(data["imagenet"], other)
    os.rename(os.path.join(other, "val", "class_2"), os.path.join(other, "val", "class_9"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    return {
        "source not found": ([str(tmp_path / "nope"), str(tmp_path / "o")],
                             "source folder not found"),
        "no train/": ([data["cifar10"], str(tmp_path / "o")], "no train/ folder in the data path"),
        "output not empty": ([data["imagenet"], str(full)], "the output folder is not empty"),
        "0 shards": ([data["imagenet"], str(tmp_path / "o"), "--shards", "0"],
                     "0 shards is out of range"),
        "val classes differ": ([other, str(tmp_path / "o")], "only here: class_9"),
    }


@pytest.mark.parametrize("case", ["source not found", "no train/", "output not empty",
                                  "0 shards", "val classes differ"])
def test_bad_input_to_the_converter_is_one_line(data, cli, tmp_path, case):
    argv, expected = bad_conversions(data, tmp_path)[case]
    result = cli("src.tools.mindrecord", *argv)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.error_lines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")


def test_a_folder_that_holds_no_shards_is_one_line(data, cli, tmp_path):
    result = cli("train.py", "--dataset", "mindrecord", "--dataset_path", data["imagenet"],
                 "--output_path", tmp_path / "run")
    assert result.returncode == 2
    assert result.error_lines()[0].startswith("error: no mindrecord.json in the data folder")
