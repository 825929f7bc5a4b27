"""Data: the CIFAR-10 binary reader, class folders, worker count, shards."""
import os

import numpy as np
import pytest

from src.dataset import (
    cifar10_files,
    cpu_count,
    create_dataset,
    imagenet_folder,
    read_cifar10,
    worker_count,
    write_cifar10,
)
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


def png_header_claiming(width, height):
    """A PNG of one IHDR chunk that claims width x height pixels, and an IEND: a header the
    scan must refuse without decoding it."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_the_scan_passes_exactly_what_mindspore_decodes(tmp_path, monkeypatch):
    """Every format and mode MindSpore 2.10's Decode reads passes; a GIF, WebP or ICO named .jpg,
    an absurd header, text, a cut-off JPEG, a folder, a broken link and a link loop do not, each
    with its reason."""
    import mindspore.dataset.vision as V
    from PIL import Image

    from src.dataset import scan_image_folder
    monkeypatch.chdir(tmp_path)  # a failing Decode drops unsupported_image.* into the cwd
    root = tmp_path / "train" / "cat"
    root.mkdir(parents=True)
    rgb = Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 50, 3), np.uint8))
    good = {"a.jpg": (rgb, "JPEG"), "grey.jpg": (rgb.convert("L"), "JPEG"),
            "cmyk.jpg": (rgb.convert("CMYK"), "JPEG"), "b.png": (rgb.convert("RGBA"), "PNG"),
            "c.bmp": (rgb, "BMP"), "d.tif": (rgb, "TIFF"), "e.ppm": (rgb, "PPM")}
    for name, (image, fmt) in good.items():
        image.save(root / name, format=fmt)
    for name, fmt in (("gif.jpg", "GIF"), ("webp.jpg", "WEBP"), ("ico.jpg", "ICO")):
        rgb.save(root / name, format=fmt)
    (root / "huge.png").write_bytes(png_header_claiming(60000, 60000))
    (root / "wide.png").write_bytes(png_header_claiming(20000, 10))
    (root / "page.jpg").write_text("<html>404</html>")
    whole = (root / "a.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(whole[:len(whole) // 2])
    (root / "folder").mkdir()
    (root / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    files, labels, bad = scan_image_folder(str(tmp_path / "train"))
    assert sorted(os.path.basename(f) for f in files) == sorted(good) and set(labels) == {0}
    why = {os.path.basename(path): reason for path, reason in bad}
    assert why["gif.jpg"].startswith("GIF, which MindSpore's decoder does not read")
    assert why["webp.jpg"].startswith("WEBP") and why["ico.jpg"].startswith("ICO")
    assert "header claims more than" in why["huge.png"]
    assert why["wide.png"] == "its header claims 20000x10 pixels"
    assert why["page.jpg"] == "not an image" and why["cut.jpg"] == "cut short"
    for name in ("folder", "broken.jpg", "loop.jpg"):
        assert why[name].startswith("not a file"), name
    assert len(why) == 10
    # The premise: MindSpore decodes every file that passed, and none of the refused formats.
    for path in files:
        assert V.Decode()(np.fromfile(path, np.uint8)).shape[2] == 3, path
    for name in ("gif.jpg", "webp.jpg", "ico.jpg"):
        with pytest.raises(RuntimeError):
            V.Decode()(np.fromfile(root / name, np.uint8))
