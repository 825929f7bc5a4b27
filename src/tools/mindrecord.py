"""An ImageNet-style folder as MindRecord shards, MindSpore's own format for large data sets:

    python -m src.tools.mindrecord SOURCE OUTPUT [--shards 8]

SOURCE holds train/ and val/ (or validation_preprocess/) of class folders, as training reads
them; OUTPUT gets train.mindrecord0..N-1 and val.mindrecord0..N-1 (MindSpore's names: the numbers
padded to the width of the last, train.mindrecord00..11 for 12; the JPEG bytes as they are,
and the label), and mindrecord.json: the class names (label i is the i-th, the sorted class
folders, as ImageFolderDataset numbers them), the image counts and the source. Files MindSpore
does not decode (``dataset.image_problem``) are left out and counted. Train and eval read the
shards with ``--dataset mindrecord --dataset_path OUTPUT``, each rank its own part
(``create_dataset``), with the same labels and class names as the folder.

A few large files instead of 1.28 M small ones: the file system's per-file cost goes, and each
rank reads whole blocks. Nothing already in OUTPUT is overwritten: give an empty or new folder.
The converter reads back every file it wrote; a conversion stopped by Ctrl-C or SIGTERM leaves a
folder marked unfinished, which training refuses.
"""
import contextlib
import json
import os
import signal
import sys

import numpy as np

from src.cli import ArgumentParser, run_main
from src.dataset import check_classes, class_names, imagenet_folder, scan_image_folder
from src.errors import Stopped, UserError
from src.progress import Progress
from src.shards import (
    MINDRECORD_INFO,
    SCHEMA,
    SPLITS,
    UNFINISHED,
    check_shards,
    mindrecord_info,
    shard_names,
)

ROWS_PER_WRITE = 256


def check_output(output: str) -> None:
    """A new or empty folder that can be made: one line for a file, a path under a file, an
    unwritable parent, or a folder that holds anything."""
    if os.path.isdir(output):
        if os.listdir(output):
            raise UserError("the output folder is not empty", output,
                            "give a new or empty folder (nothing in it is overwritten)")
        parent = output
    elif os.path.lexists(output):
        raise UserError("the output is a file, not a folder", output,
                        "give a new or empty folder for the shards")
    else:
        parent = os.path.dirname(os.path.abspath(output))
        while not os.path.lexists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise UserError(f"the output would be under {parent}, which is a file", output,
                            "give a folder path whose parents are folders")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{parent} is not writable", output, "give a folder you can write to")


class _Interrupted(Exception):
    def __init__(self, signum):
        self.signum = signum
        super().__init__(signum)


@contextlib.contextmanager
def _stop_on_signals():
    """SIGINT and SIGTERM end the conversion as an exception, so the caller can say so."""
    def handle(signum, frame):
        raise _Interrupted(signum)
    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def convert(source: str, output: str, shards: int) -> dict:
    """Write ``source``'s train and val splits as ``shards`` MindRecord files each into
    ``output``, read them back (``check_shards``), and record them in mindrecord.json; returns
    what it records. A folder is marked unfinished until then: a stopped conversion's folder is
    refused as data. SIGINT / SIGTERM: a ``Stopped`` saying so."""
    if not 1 <= shards <= 1000:
        raise UserError(f"{shards} shards is out of range", "--shards", "give 1 to 1000")
    folders = {split: imagenet_folder(source, split == "train") for split in SPLITS}
    classes = class_names(folders["train"])
    check_classes(folders["val"], len(classes), classes)
    check_output(output)
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, UNFINISHED), "w", encoding="utf-8") as f:
        f.write("python -m src.tools.mindrecord is writing this folder\n")
    info = {"classes": classes, "shards": shards, "source": os.path.abspath(source)}
    try:
        with _stop_on_signals():
            for split, folder in folders.items():
                info[split], info[f"{split}_left_out"] = _write_split(
                    folder, output, split, shards, source)
                check_shards([os.path.join(output, n) for n in shard_names(split, shards)],
                             info[split])
    except (_Interrupted, KeyboardInterrupt) as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        raise Stopped(signum, f"stopped: {signal.Signals(signum).name} during the conversion; "
                      f"{output} is unfinished and is refused as data: delete it and convert "
                      "again") from None
    with open(os.path.join(output, MINDRECORD_INFO), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    os.remove(os.path.join(output, UNFINISHED))
    mindrecord_info(output)
    print(f"mindrecord: {info['train']} train and {info['val']} val images of "
          f"{len(classes)} classes in {shards} shards each in {output}", flush=True)
    return info


def _write_split(folder: str, output: str, split: str, shards: int, source: str) -> tuple:
    """(images written, files left out) of one split's class folders as shards in ``output``."""
    from mindspore.mindrecord import FileWriter
    files, labels, bad = scan_image_folder(folder)
    if not files:
        raise UserError("no images MindSpore decodes in the class folders", folder,
                        "put the images in them")
    if bad:
        print(f"warning: leaving out {len(bad)} of {len(files) + len(bad)} files that are "
              f"not whole images MindSpore decodes in {folder} (first: {bad[0][0]}: "
              f"{bad[0][1]})", flush=True)
    writer = FileWriter(os.path.join(output, f"{split}.mindrecord"), shard_num=shards,
                        overwrite=False)
    writer.add_schema(SCHEMA, f"{split} images of {os.path.basename(source)}")
    progress = Progress(f"convert {split}", len(files), unit="images")
    for start in range(0, len(files), ROWS_PER_WRITE):
        rows = []
        for image, label in zip(files[start:start + ROWS_PER_WRITE],
                                labels[start:start + ROWS_PER_WRITE], strict=True):
            with open(image, "rb") as f:
                rows.append({"image": f.read(), "label": np.int32(label)})
        writer.write_raw_data(rows)
        progress.update(start + len(rows), final=start + len(rows) == len(files))
    writer.commit()
    return len(files), len(bad)


def main(argv):
    parser = ArgumentParser(prog="python -m src.tools.mindrecord",
                            description=__doc__.splitlines()[0])
    parser.add_argument("source", help="folder of train/ and val/ class folders")
    parser.add_argument("output", help="new or empty folder for the shards")
    parser.add_argument("--shards", type=int, default=8, help="files per split (default 8)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.source):
        raise UserError("source folder not found", args.source,
                        "give the folder that holds train/ and val/")
    convert(args.source, args.output, args.shards)


if __name__ == "__main__":
    sys.exit(run_main(main))
