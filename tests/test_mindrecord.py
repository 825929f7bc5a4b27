"""MindRecord shards of an image folder (python -m src.tools.mindrecord), read with --dataset
mindrecord; and sharding by rank for every data set kind: each sample once per epoch over all
ranks, the same steps on every rank."""
import hashlib
import json
import os
import shutil
import signal

import pytest

from src.dataset import create_dataset
from src.model_utils.config import get_config
from src.shards import shard_names
from src.tools.mindrecord import convert
from tests.helpers import RESULT, saved_checkpoint, write_cifar_folder, write_image_folder

CLASSES = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An image folder of 3 classes (24 train, 12 val images), its MindRecord shards (12 a
    split: MindSpore numbers them 00..11), and CIFAR-10 binaries of 24 training images."""
    root = tmp_path_factory.mktemp("data")
    folder = write_image_folder(str(root / "imgs"), per_class=8, classes=CLASSES, size=48)
    info = convert(folder, str(root / "shards"), shards=12)
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
    assert (data["info"]["train"], data["info"]["val"], data["info"]["shards"]) == (24, 12, 12)
    assert sorted(os.listdir(data["mindrecord"])) == sorted(
        ["mindrecord.json"] + [f"{split}.mindrecord{i:02d}{db}" for split in ("train", "val")
                               for i in range(12) for db in ("", ".db")])
    for training in (True, False):
        folder = sorted(samples("imagenet", data["imagenet"], 0, 1, training)[1])
        shards = sorted(samples("mindrecord", data["mindrecord"], 0, 1, training)[1])
        assert folder == shards and len(folder) == (24 if training else 12)


@pytest.mark.parametrize("shards, first, last", [(1, "train.mindrecord", "train.mindrecord"),
                                                 (10, "train.mindrecord0", "train.mindrecord9"),
                                                 (11, "train.mindrecord00", "train.mindrecord10"),
                                                 (100, "train.mindrecord00", "train.mindrecord99")])
def test_any_shard_count_is_read_back(data, tmp_path, shards, first, last):
    """The files are named as MindSpore's writer names them (the reader once looked for
    train.mindrecord0..11 where 12 shards are ...00..11), and read back whole, some shards empty
    when there are more shards than images."""
    convert(data["imagenet"], str(tmp_path / "s"), shards=shards)
    names = shard_names("train", shards)
    assert (names[0], names[-1], len(names)) == (first, last, shards)
    assert {n for n in os.listdir(tmp_path / "s") if n.startswith("train")} == \
        set(names) | {n + ".db" for n in names}
    assert sorted(samples("mindrecord", str(tmp_path / "s"), 0, 1)[1]) == \
        sorted(samples("imagenet", data["imagenet"], 0, 1)[1])


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
        "output is a file": ([data["imagenet"], str(full / "keep.txt")],
                             "the output is a file, not a folder"),
        "output under a file": ([data["imagenet"], str(full / "keep.txt" / "shards")],
                                "keep.txt, which is a file"),
        "source not found": ([str(tmp_path / "nope"), str(tmp_path / "o")],
                             "source folder not found"),
        "no train/": ([data["cifar10"], str(tmp_path / "o")], "no train/ folder in the data path"),
        "output not empty": ([data["imagenet"], str(full)], "the output folder is not empty"),
        "0 shards": ([data["imagenet"], str(tmp_path / "o"), "--shards", "0"],
                     "0 shards is out of range"),
        "val classes differ": ([other, str(tmp_path / "o")], "only here: class_9"),
    }


@pytest.mark.parametrize("case", ["source not found", "no train/", "output not empty",
                                  "output is a file", "output under a file", "0 shards",
                                  "val classes differ"])
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


def first_full_shard(folder, split="train"):
    return next(n for n in shard_names(split, 12)
                if os.path.getsize(os.path.join(folder, n)) > 1 << 20)


def cut(path, fraction):
    os.truncate(path, int(os.path.getsize(path) * fraction))


def overwrite(path, size=5000):
    with open(path, "wb") as f:
        f.write(os.urandom(size))


# id: (damage done to a copy of the 12-shard folder, the file named, what the line says)
DAMAGES = {
    "shard cut to half": (lambda d, s: cut(d / s, 0.5), "{s}", "(cut short)"),
    "shard emptied": (lambda d, s: cut(d / s, 0), "{s}", "0 bytes, shorter than a header"),
    "shard of random bytes": (lambda d, s: overwrite(d / s), "{s}", "no header length"),
    "index cut to half": (lambda d, s: cut(d / (s + ".db"), 0.5), "{s}.db", "does not read"),
    "index emptied": (lambda d, s: cut(d / (s + ".db"), 0), "{s}.db", "the index is empty"),
    "index of random bytes": (lambda d, s: overwrite(d / (s + ".db"), 16384), "{s}.db",
                              "does not read"),
    "a val shard as a train shard": (
        lambda d, s: shutil.copy(d / s.replace("train", "val"), d / s), "{s}",
        "it is val.mindrecord"),
    "a shard of another conversion": (
        lambda d, s: shutil.copy(d / "other" / "train.mindrecord", d / s), "{s}",
        "it is train.mindrecord of a set of 1"),
}


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_shard_is_one_line_before_training(data, cli, tmp_path, case):
    """Each damage, which MindSpore's reader meets mid-epoch with a C++ traceback, is found
    before training starts: one line naming the file and saying to convert again, exit 2,
    nothing written (train.py; eval.py for one of them)."""
    folder = tmp_path / "shards"
    shutil.copytree(data["mindrecord"], folder)
    convert(data["imagenet"], str(folder / "other"), shards=1)
    damage, named, expected = DAMAGES[case]
    shard = first_full_shard(folder)
    damage(folder, shard)
    def state():
        return {n: (os.stat(folder / n).st_size, os.stat(folder / n).st_mtime_ns)
                for n in os.listdir(folder)}
    before = state()
    result = cli("train.py", "--network", "mobilenet_v1_025", "--dataset", "mindrecord",
                 "--dataset_path", folder, "--num_classes", str(CLASSES), "--image_size", "32",
                 "--batch_size", "8", "--epoch_size", "1", "--output_path", tmp_path / "run")
    lines = result.error_lines()
    assert result.returncode == 2 and len(lines) == 1, (result.stdout, result.stderr)
    assert lines[0].startswith("error: damaged MindRecord file: ") and expected in lines[0]
    assert f"({folder / named.format(s=shard)}): convert the data set again" in lines[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
    assert state() == before
    if case == "shard cut to half":  # eval reads the val shards
        val = first_full_shard(folder, "val")
        cut(folder / val, 0.5)
        ckpt = saved_checkpoint(tmp_path / "m-1_2.ckpt", "mobilenet_v1_025",
                                num_classes=CLASSES, dataset="imagenet", image_size=32)
        result = cli("eval.py", "--checkpoint_path", ckpt, "--dataset", "mindrecord",
                     "--dataset_path", folder)
        lines = result.error_lines()
        assert result.returncode == 2 and len(lines) == 1 and "(cut short)" in lines[0]
        assert f"({folder / val}): convert the data set again" in lines[0]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_conversion_says_so_and_its_folder_is_refused(data, cli, tmp_path,
                                                                monkeypatch, signum):
    """Ctrl-C (SIGINT) or SIGTERM while the shards are written: one "stopped:" line, the
    signal's exit code, no traceback; the folder it leaves is refused as unfinished."""
    from mindspore.mindrecord import FileWriter
    commit = FileWriter.commit

    def signalled_commit(writer):
        os.kill(os.getpid(), signum)  # delivered to our handler at the next bytecode
        return commit(writer)
    monkeypatch.setattr(FileWriter, "commit", signalled_commit)
    result = cli("src.tools.mindrecord", data["imagenet"], tmp_path / "s", "--shards", "3")
    lines = result.error_lines()
    assert result.returncode == 128 + signum and len(lines) == 1, (result.stdout, result.stderr)
    assert lines[0].startswith(f"stopped: {signal.Signals(signum).name} during the conversion;")
    assert "is unfinished" in lines[0] and "Traceback" not in result.stderr
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are put back
    monkeypatch.undo()
    result = cli("eval.py", "--checkpoint_path", saved_checkpoint(
        tmp_path / "m-1_2.ckpt", "mobilenet_v1_025", num_classes=CLASSES, dataset="imagenet",
        image_size=32), "--dataset", "mindrecord", "--dataset_path", tmp_path / "s")
    assert result.returncode == 2 and result.error_lines() == [
        f"error: the conversion into this folder did not finish ({tmp_path / 's'}): delete the "
        "folder and convert the data set again (python -m src.tools.mindrecord SOURCE OUTPUT)"]
