"""Data pipelines: CIFAR-10 binary batches, ImageNet-style class folders, synthetic images.

CIFAR-10 files are read by our own reader of the binary layout (one label byte + 3,072 pixel
bytes per record), because ``mindspore.dataset.Cifar10Dataset`` accepts only files of exactly
10,000 records. Transforms are the official ports'.
"""
import glob
import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import mindspore.dataset as ds
import mindspore.dataset.transforms as T
import mindspore.dataset.vision as V
import numpy as np
from mindspore.common import dtype as mstype
from PIL import Image

from src.augment import BatchMixer, auto_augment_ops, erasing_ops, mixes_batches
from src.errors import UserError
from src.shards import mindrecord_files, mindrecord_info

CIFAR_RECORD = 1 + 32 * 32 * 3
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]
# input_norm -> (mean, std on 0-255 pixels, BGR channel order): the pixels each source's
# weights expect. A checkpoint records its own; converted ones set it.
INPUT_NORMS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD, False),  # ours, MindCV, torchvision
    "megvii_bgr": ([0.0] * 3, [1.0] * 3, True),  # megvii: BGR 0-255, not normalised
    "inception": ([127.5] * 3, [127.5] * 3, False),  # timm mobilenetv1_100: mean = std = 0.5
}
EVAL_FOLDERS = ("val", "validation_preprocess")


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def worker_count(requested: int = 0) -> int:
    """Data workers: ``requested`` (0 = all cores), never above the core count (more is an
    error on 2.10)."""
    cores = cpu_count()
    return max(1, min(requested or cores, cores))


def check_layout(dataset: str, path: str, training: bool = True) -> None:
    """Refuse a data folder laid out for the other ``dataset`` value, naming the right one, before
    anything expensive starts (a process group, a network, a scan of the images); MindRecord
    shards are checked whole here, those of both splits for training (which evaluates), the
    val split's for evaluation."""
    if dataset == "mindrecord":
        for split_is_train in (True, False) if training else (False,):
            mindrecord_files(path, split_is_train)
        return
    if dataset not in ("cifar10", "imagenet"):
        return
    if not os.path.isdir(path):
        _path_not_found(dataset, path)
    folders = [n + "/" for n in ("train",) + EVAL_FOLDERS if os.path.isdir(os.path.join(path, n))]
    binaries = any(glob.glob(os.path.join(folder, pattern))
                   for folder in (path, os.path.join(path, "cifar-10-batches-bin"))
                   for pattern in ("data_batch_*.bin", "test_batch.bin"))
    if dataset == "cifar10" and folders and not binaries:
        raise UserError(f"the data folder holds {' and '.join(folders)} (an image-folder data "
                        "set), not CIFAR-10 binary files", path,
                        "give --dataset imagenet (default_config_imagenet.yaml sets it)")
    if dataset == "imagenet" and binaries and not folders:
        raise UserError("the data folder holds CIFAR-10 binary files (data_batch_*.bin), not "
                        "train/ and val/ class folders", path,
                        "give --dataset cifar10 (default_config.yaml sets it)")


def _path_not_found(dataset: str, path: str):
    raise UserError("data path not found", path, "give --dataset_path the folder of the CIFAR-10 "
                    "binary files (data_batch_*.bin, test_batch.bin)" if dataset == "cifar10" else
                    "give --dataset_path the folder that holds train/ and val/")


def cifar10_files(path: str, training: bool) -> list:
    """The CIFAR-10 binary files of one split under ``path`` (or its cifar-10-batches-bin/)."""
    if not os.path.isdir(path):
        _path_not_found("cifar10", path)
    pattern = "data_batch_*.bin" if training else "test_batch.bin"
    for folder in (path, os.path.join(path, "cifar-10-batches-bin")):
        files = sorted(glob.glob(os.path.join(folder, pattern)))
        if files:
            return files
    raise UserError(f"no {pattern} in the data folder", path,
                    "give --dataset_path the folder of the CIFAR-10 binary version")


def read_cifar10(files, num_classes: int = 256) -> tuple:
    """(images uint8 (N, 32, 32, 3), labels int32 (N,)) from CIFAR-10 binary files; UserError
    for a file that is not whole records or holds a label the network has no class for (such
    samples would add no loss and train nothing, without a word)."""
    images, labels = [], []
    for name in files:
        raw = np.fromfile(name, dtype=np.uint8)
        if raw.size == 0 or raw.size % CIFAR_RECORD:
            raise UserError(f"CIFAR-10 file of {raw.size} bytes is not a whole number of "
                            f"{CIFAR_RECORD}-byte records", name,
                            "replace the truncated or foreign file with the real binary batch")
        records = raw.reshape(-1, CIFAR_RECORD)
        outside = int((records[:, 0] >= num_classes).sum())
        if outside:
            raise UserError(f"{outside} of {len(records)} records have a label of {num_classes} "
                            f"or more (largest {records[:, 0].max()}), but the network has "
                            f"{num_classes} classes", name,
                            f"give --num_classes {int(records[:, 0].max()) + 1}, or data "
                            f"labelled 0..{num_classes - 1}")
        labels.append(records[:, 0].astype(np.int32))
        images.append(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(images), np.concatenate(labels)


def write_cifar10(name: str, images: np.ndarray, labels) -> None:
    """Write uint8 HWC 32x32 RGB images and their labels in the CIFAR-10 binary layout."""
    chw = np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)
    records = np.concatenate([np.asarray(labels, np.uint8)[:, None], chw], axis=1)
    records.tofile(name)


def imagenet_folder(path: str, training: bool, val_fraction: float = 0.0) -> str:
    """``path``/train, or ``path``/val or validation_preprocess, checked to hold class folders;
    with ``val_fraction``, ``path`` itself (both splits are drawn from its class folders:
    ``held_out``)."""
    if not os.path.isdir(path):
        _path_not_found("imagenet", path)
    if val_fraction:
        if os.path.isdir(os.path.join(path, "train")):
            raise UserError("the data folder holds train/, and val_fraction draws the "
                            "validation files from one folder of class folders", path,
                            "give --val_fraction 0 to use its train/ and val/, or give the "
                            "folder of class folders itself")
        if not class_names(path):
            raise UserError("no class folders", path,
                            "put each class's images in a folder of its own")
        return path
    names = ("train",) if training else EVAL_FOLDERS
    for name in names:
        folder = os.path.join(path, name)
        if os.path.isdir(folder):
            break
    else:
        raise UserError(f"no {' or '.join(n + '/' for n in names)} folder in the data path", path,
                        "lay the images out as <path>/train/<class>/*.jpg and <path>/val/<class>/")
    if not class_names(folder):
        raise UserError("no class folders", folder,
                        "put each class's images in a folder of its own")
    return folder


def dataset_classes(config, training: bool = True):
    """The class names of an image-folder data set or of its MindRecord shards (label i is the
    i-th), None for the others (CIFAR-10 files carry indices only)."""
    if config.dataset == "mindrecord":
        return mindrecord_info(config.dataset_path)["classes"]
    if config.dataset != "imagenet":
        return None
    return class_names(imagenet_folder(config.dataset_path, training, config.val_fraction))


def class_names(folder: str) -> list:
    """The class folders of an image folder, sorted: label i is the i-th (ImageFolderDataset's)."""
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


# The formats MindSpore 2.10's Decode reads, as PIL names them (measured: JPEG in every mode,
# PNG, BMP, TIFF, PNM; not GIF, WebP or ICO, which stop an epoch with a pipeline error).
DECODED_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "TIFF", "PPM"}
# The largest image a data set may hold: 16,384 pixels a side and PIL's own decompression-bomb
# limit in all (89.5 million pixels). A header that claims more is broken or hostile, and would
# take gigabytes to decode.
MAX_IMAGE_SIDE = 16384
MAX_IMAGE_PIXELS = 89_478_485


def image_problem(path: str) -> str:
    """Why the training decoder would not read ``path`` ('' if it would).

    Reads the header (PIL, without decoding): the format must be one MindSpore decodes and the
    size sane; and 16 bytes at the end, where a JPEG or PNG cut off mid-copy lacks its end marker
    (FF D9) or IEND chunk. A folder, a link that does not resolve or a link loop is no image.
    Cheap enough for ImageNet.
    """
    if not os.path.isfile(path):
        return "not a file (a folder, or a link that does not resolve)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                fmt, (width, height) = image.format, image.size
    except Image.DecompressionBombError:
        return f"its header claims more than {MAX_IMAGE_PIXELS:,} pixels"
    except (OSError, ValueError, SyntaxError):
        return "not an image"
    if fmt not in DECODED_FORMATS:
        return f"{fmt}, which MindSpore's decoder does not read (JPEG, PNG, BMP, TIFF, PNM)"
    if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE) \
            or width * height > MAX_IMAGE_PIXELS:
        return f"its header claims {width}x{height} pixels"
    if fmt in ("JPEG", "MPO", "PNG"):
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 16))
                tail = f.read(16).rstrip(b"\x00")  # some writers pad with zeros
        except OSError:
            return "not readable"
        if (fmt == "PNG" and b"IEND" not in tail) or (fmt != "PNG" and
                                                       not tail.endswith(b"\xff\xd9")):
            return "cut short"
    return ""


def scan_image_folder(folder: str) -> tuple:
    """(files, labels, bad) of an image folder: every entry of each class folder, with the ones
    the decoder would not read (``image_problem``) left out of files and labels and listed in
    bad as (path, why)."""
    files, labels = [], []
    for label, name in enumerate(class_names(folder)):
        root = os.path.join(folder, name)
        entries = sorted(os.listdir(root))
        files += [os.path.join(root, e) for e in entries]
        labels += [label] * len(entries)
    with ThreadPoolExecutor(16) as pool:  # I/O bound: threads hide the file system's latency
        problems = list(pool.map(image_problem, files))
    bad = [(f, why) for f, why in zip(files, problems, strict=True) if why]
    keep = [i for i, why in enumerate(problems) if not why]
    return [files[i] for i in keep], [labels[i] for i in keep], bad


def image_folder_dataset(folder: str, config, training: bool, workers: int, shard: dict):
    """The (encoded image, label) dataset of an image folder.

    With ``config.check_images``, files that are not whole images are skipped with one warning
    line that counts them; more than ``config.bad_image_limit`` of the files bad is an error.
    A clean folder is read by ImageFolderDataset (C++); one with bad files from the checked list.
    """
    bad = []
    if config.check_images or config.val_fraction:
        files, labels, bad = scan_image_folder(folder)
        total = len(files) + len(bad)
        if total == 0:
            raise UserError("no image files in the class folders", folder,
                            "put the images in them")
        first = f"first: {bad[0][0]}: {bad[0][1]}" if bad else ""
        if len(bad) / total > config.bad_image_limit:
            raise UserError(f"{len(bad)} of {total} files are not whole images MindSpore decodes "
                            f"({first})", folder, f"repair or remove them, or raise "
                            f"--bad_image_limit above {len(bad) / total:.3g}")
        if bad:
            print(f"warning: skipping {len(bad)} of {total} files that are not whole images "
                  f"MindSpore decodes in {folder} ({first})", flush=True)
    if config.val_fraction:  # this split's part of the class folders
        val = held_out(folder, config.val_fraction)
        keep = [i for i, f in enumerate(files) if (f in val) != training]
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    elif not bad:
        return ds.ImageFolderDataset(folder, shuffle=training, num_parallel_workers=workers,
                                     decode=False, **shard)
    data = numpy_dataset({"image": np.array(files), "label": np.array(labels, np.int32)},
                         shuffle=training, **shard)
    return data.map(operations=lambda path: np.fromfile(str(path), np.uint8),
                    input_columns="image", num_parallel_workers=workers)


# ---- a validation split held out of one folder of class folders (val_fraction)

def held_out(folder: str, fraction: float) -> set:
    """The paths held out for validation: of each class folder's files, ``fraction`` (rounded;
    at least one and at most all but one where a class has two or more), those first in the
    order of a hash of their class and name. A function of the names alone: the same files on
    every rank, rerun and resume, whatever order the file system lists them in; a file added
    to a class moves few others."""
    chosen = set()
    for name in class_names(folder):
        entries = sorted(os.listdir(os.path.join(folder, name)),
                         key=lambda e, n=name: hashlib.sha256(f"{n}/{e}".encode()).hexdigest())
        count = min(max(round(fraction * len(entries)), 1), len(entries) - 1)
        chosen |= {os.path.join(folder, name, e) for e in entries[:count]}
    return chosen


def split_record(folder: str, fraction: float) -> dict:
    """What a checkpoint records of its held-out files: the fraction, and their count and a
    digest of their names (``val_split``), so that eval.py scores the same files or says
    they are not."""
    if not fraction:
        return {}
    names = sorted(os.path.relpath(p, folder) for p in held_out(folder, fraction))
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    return {"val_fraction": f"{fraction:g}", "val_split": f"{len(names)}:{digest}"}


def numpy_dataset(columns: dict, **kwargs):
    """A dataset of in-memory arrays, sliced in this process: with more than one source worker
    MindSpore forks worker processes, and a SIGTERM or Ctrl-C that reaches the whole process
    group kills one, after which MindSpore ends the main process before it can save (see
    SignalStop). Slicing is cheap; the transforms after it still run on the map's threads."""
    return ds.NumpySlicesDataset(columns, num_parallel_workers=1, **kwargs)


def normalize_ops(input_norm: str) -> list:
    """float32 CHW from an RGB HWC uint8 image, normalised as ``input_norm`` (INPUT_NORMS) says."""
    mean, std, bgr = INPUT_NORMS[input_norm]
    ops = [V.ConvertColor(V.ConvertMode.COLOR_RGB2BGR)] if bgr else []
    return ops + [V.Normalize(mean, std), V.HWC2CHW()]


def eval_image_ops(dataset: str, size, input_norm: str = "imagenet", resize: int = 0) -> list:
    """Eval transforms of a decoded RGB HWC uint8 image, as the data set ``dataset`` trained it;
    ``size`` is the side, or (height, width) for a non-square input.

    cifar10: resize to height x width, rescale, CIFAR mean/std; imagenet (and synthetic): resize
    the short side to ``resize`` (0: the longer of height and width x 256 / 224), centre crop
    height x width, then ``normalize_ops(input_norm)``.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if dataset == "cifar10":
        return [V.Resize((height, width)), V.Rescale(1.0 / 255.0, 0.0),
                V.Normalize(CIFAR_MEAN, CIFAR_STD), V.HWC2CHW()]
    short_side = resize or int(max(height, width) * 256 / 224)
    return [V.Resize(short_side), V.CenterCrop((height, width))] + normalize_ops(input_norm)


def flip_ops(config) -> list:
    """The random left-right mirror of training, unless the config turns it off."""
    return [V.RandomHorizontalFlip(0.5)] if config.horizontal_flip else []


def _shard_args(rank_id: int, rank_size: int) -> dict:
    return {"num_shards": rank_size, "shard_id": rank_id} if rank_size > 1 else {}


def check_classes(folder: str, num_classes: int, expected=None, names=None) -> list:
    """The class folders of an image folder (or ``names``, its MindRecord shards' classes),
    checked against the network: no more than its ``num_classes`` (the labels past them would
    train nothing and score as wrong), and the same names as ``expected`` (train's for its val/,
    a checkpoint's for eval), since labels are positions in the sorted list and any difference
    moves them."""
    names = class_names(folder) if names is None else names
    if len(names) > num_classes:
        raise UserError(f"{len(names)} class folders for a network of {num_classes} classes",
                        folder, f"give --num_classes {len(names)}, or a checkpoint or data of "
                        f"{num_classes} classes")
    if expected is not None and list(expected) != names:
        only_here = [n for n in names if n not in expected]
        only_there = [n for n in expected if n not in names]
        diff = "; ".join(part for part in (
            f"only here: {', '.join(only_here[:5])}" if only_here else "",
            f"only in training: {', '.join(only_there[:5])}" if only_there else "") if part) \
            or "the same names in another order"
        raise UserError(f"the class folders differ from the ones the network was trained on "
                        f"({diff})", folder, "give both train/ and val/ (and eval) the same "
                        "class folders")
    return names


def create_dataset(config, training: bool, rank_id: int = 0, rank_size: int = 1,
                   batch_size: int = None, classes=None, augment: bool = None):
    """The batched dataset of ``config.dataset`` for training or evaluation.

    Training reads the training split, shuffles, augments and (with ``drop_remainder``) drops
    the last partial batch; evaluation scores every image of the validation split. ``augment``
    False reads the training split with the eval transforms (INT8 calibration). Each of
    ``rank_size`` ranks reads its own shard. Labels must fit ``config.num_classes``; an image
    folder's classes must be ``classes`` when given.
    """
    augment = training if augment is None else augment
    batch_size = batch_size or (config.batch_size if training else config.eval_batch_size)
    workers = worker_count(config.num_parallel_workers)
    shard = _shard_args(rank_id, rank_size)
    size = config.image_size
    if config.dataset == "cifar10":
        images, labels = read_cifar10(cifar10_files(config.dataset_path, training),
                                      config.num_classes)
        data = numpy_dataset({"image": images, "label": labels}, shuffle=training, **shard)
        ops = eval_image_ops("cifar10", size)
        if size == 32:
            ops = ops[1:]  # the 32x32 images need no resize
        if augment:
            ops = [V.RandomCrop(32, padding=4)] + flip_ops(config) + \
                auto_augment_ops(config.auto_augment, "cifar10") + ops + erasing_ops(config)
    elif config.dataset in ("imagenet", "mindrecord"):
        if config.dataset == "imagenet":
            folder = imagenet_folder(config.dataset_path, training, config.val_fraction)
            check_classes(folder, config.num_classes, classes)
            data = image_folder_dataset(folder, config, training, workers, shard)
        else:
            check_classes(config.dataset_path, config.num_classes, classes,
                          mindrecord_info(config.dataset_path)["classes"])
            data = ds.MindDataset(mindrecord_files(config.dataset_path, training),
                                  columns_list=["image", "label"], shuffle=training,
                                  num_parallel_workers=workers, **shard)
        if augment:
            ops = [V.RandomCropDecodeResize(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))] + \
                flip_ops(config) + auto_augment_ops(config.auto_augment)
            if config.color_jitter:
                jitter = config.color_jitter
                ops.append(V.RandomColorAdjust(jitter, jitter, jitter))
            ops += normalize_ops(config.input_norm) + erasing_ops(config)
        else:
            ops = [V.Decode()] + eval_image_ops("imagenet", size, config.input_norm,
                                                config.eval_resize)
    else:
        rng = np.random.RandomState(config.seed + (0 if training else 1))
        count = config.synthetic_size
        images = rng.rand(count, 3, size, size).astype(np.float32)
        labels = rng.randint(0, config.num_classes, count).astype(np.int32)
        data = numpy_dataset({"image": images, "label": labels}, shuffle=training, **shard)
        ops = []
    if ops:
        data = data.map(operations=ops, input_columns="image", num_parallel_workers=workers)
    data = data.map(operations=T.TypeCast(mstype.int32), input_columns="label",
                    num_parallel_workers=workers)
    drop = augment and config.drop_remainder
    if drop and data.get_dataset_size() < batch_size:
        raise UserError(f"batch size {batch_size} is larger than the {data.get_dataset_size()} "
                        "images this device reads, and drop_remainder drops them all",
                        "--batch_size", "give a smaller --batch_size or --drop_remainder False")
    if augment and mixes_batches(config):  # soft targets from here on
        return data.batch(batch_size, drop_remainder=drop, num_parallel_workers=1,
                          per_batch_map=BatchMixer(config, config.seed + rank_id + 1),
                          input_columns=["image", "label"])
    return data.batch(batch_size, drop_remainder=drop)
