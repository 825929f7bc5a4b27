"""Data: the CIFAR-10 binary reader, class folders, worker count, shards."""
import os

import numpy as np
import pytest

from src.dataset import (cpu_count, create_dataset, cifar10_files, imagenet_folder, read_cifar10,
                         worker_count, write_cifar10)
from src.errors import UserError
from src.model_utils.config import get_config
from tests.helpers import write_cifar_folder, write_image_folder


def test_cifar_binary_round_trip(tmp_path):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (7, 32, 32, 3)).astype(np.uint8)
    labels = np.array([0, 9, 3, 3, 1, 2, 8])
    write_cifar10(str(tmp_path / "data_batch_1.bin"), images, labels)
    assert os.path.getsize(tmp_path / "data_batch_1.bin") == 7 * 3073
    got_images, got_labels = read_cifar10([str(tmp_path / "data_batch_1.bin")])
    assert np.array_equal(got_images, images) and got_labels.tolist() == labels.tolist()
    # The real layout: label byte, then the red plane, green plane, blue plane, row-major.
    raw = np.fromfile(tmp_path / "data_batch_1.bin", np.uint8)
    assert raw[0] == 0 and raw[1] == images[0, 0, 0, 0] and raw[1 + 1024] == images[0, 0, 0, 1]


def test_truncated_cifar_file_is_refused(tmp_path):
    (tmp_path / "data_batch_1.bin").write_bytes(b"\0" * 3073 * 2 + b"\1" * 10)
    with pytest.raises(UserError, match="3073-byte records"):
        read_cifar10(cifar10_files(str(tmp_path), True))


def test_missing_data_is_refused(tmp_path):
    with pytest.raises(UserError, match="data path not found"):
        cifar10_files(str(tmp_path / "nope"), True)
    with pytest.raises(UserError, match="no data_batch"):
        cifar10_files(str(tmp_path), True)
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        imagenet_folder(str(tmp_path), True)
    with pytest.raises(UserError, match="val/ or validation_preprocess/"):
        imagenet_folder(str(tmp_path), False)


def test_worker_count_never_exceeds_the_cores():
    assert worker_count(0) == cpu_count()
    assert worker_count(1000) == cpu_count()
    assert worker_count(1) == 1


def test_cifar_pipeline_shapes_and_shards(tmp_path):
    folder = write_cifar_folder(str(tmp_path / "cifar"), train_count=40, test_count=10)
    config = get_config(["--dataset_path", folder, "--batch_size", "4", "--image_size", "64"])
    data = create_dataset(config, training=True)
    batch = next(data.create_dict_iterator(output_numpy=True))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    assert create_dataset(config, training=False).get_dataset_size() == 1  # 10 images, batch 100
    # Two shards split the 40 images into two disjoint halves.
    config.drop_remainder = False
    seen = []
    for rank in range(2):
        shard = create_dataset(config, training=False, rank_id=rank, rank_size=2, batch_size=1)
        seen.append([tuple(b["image"].ravel()[:50]) for b in
                     shard.create_dict_iterator(output_numpy=True)])
    assert len(seen[0]) == len(seen[1]) == 5 and not set(seen[0]) & set(seen[1])


def test_image_folder_with_validation_preprocess(tmp_path):
    root = write_image_folder(str(tmp_path / "imgs"), per_class=2, classes=2,
                              val_name="validation_preprocess")
    config = get_config(["--dataset", "imagenet", "--dataset_path", root, "--image_size", "32",
                         "--eval_batch_size", "3", "--num_classes", "2"])
    batch = next(create_dataset(config, training=False).create_dict_iterator(output_numpy=True))
    assert batch["image"].shape == (3, 3, 32, 32)
    assert set(batch["label"].tolist()) <= {0, 1}


def test_batch_larger_than_the_data_is_refused(tmp_path):
    folder = write_cifar_folder(str(tmp_path / "cifar"), train_count=8, test_count=4)
    config = get_config(["--dataset_path", folder, "--batch_size", "16"])
    with pytest.raises(UserError, match="batch size 16 is larger than the 8 images"):
        create_dataset(config, training=True)
