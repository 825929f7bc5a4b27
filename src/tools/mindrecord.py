"""An ImageNet-style folder as MindRecord shards, MindSpore's own format for large data sets:

    python -m src.tools.mindrecord SOURCE OUTPUT [--shards 8]

SOURCE holds train/ and val/ (or validation_preprocess/) of class folders, as training reads
them; OUTPUT gets train.mindrecord0..N-1 and val.mindrecord0..N-1 (the JPEG bytes as they are,
and the label), and mindrecord.json: the class names (label i is the i-th, the sorted class
folders, as ImageFolderDataset numbers them), the image counts and the source. Files MindSpore
does not decode (``dataset.image_problem``) are left out and counted. Train and eval read the
shards with ``--dataset mindrecord --dataset_path OUTPUT``, each rank its own part
(``create_dataset``), with the same labels and class names as the folder.

A few large files instead of 1.28 M small ones: the file system's per-file cost goes, and each
rank reads whole blocks. Nothing already in OUTPUT is overwritten: give an empty or new folder.
"""
import json
import os
import sys

import numpy as np

from src.cli import ArgumentParser, run_main
from src.dataset import (
    MINDRECORD_INFO,
    check_classes,
    class_names,
    imagenet_folder,
    scan_image_folder,
)
from src.errors import UserError
from src.progress import Progress

SPLITS = {"train": True, "val": False}
SCHEMA = {"image": {"type": "bytes"}, "label": {"type": "int32"}}
ROWS_PER_WRITE = 256


def convert(source: str, output: str, shards: int) -> dict:
    """Write ``source``'s train and val splits as ``shards`` MindRecord files each into
    ``output``; returns what mindrecord.json records."""
    from mindspore.mindrecord import FileWriter
    if not 1 <= shards <= 1000:
        raise UserError(f"{shards} shards is out of range", "--shards", "give 1 to 1000")
    folders = {split: imagenet_folder(source, training) for split, training in SPLITS.items()}
    classes = class_names(folders["train"])
    check_classes(folders["val"], len(classes), classes)
    if os.path.isdir(output) and os.listdir(output):
        raise UserError("the output folder is not empty", output,
                        "give a new or empty folder (nothing in it is overwritten)")
    os.makedirs(output, exist_ok=True)
    info = {"classes": classes, "shards": shards, "source": os.path.abspath(source)}
    for split, folder in folders.items():
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
            for path, label in zip(files[start:start + ROWS_PER_WRITE],
                                   labels[start:start + ROWS_PER_WRITE], strict=True):
                with open(path, "rb") as f:
                    rows.append({"image": f.read(), "label": np.int32(label)})
            writer.write_raw_data(rows)
            progress.update(start + len(rows), final=start + len(rows) == len(files))
        writer.commit()
        info[split] = len(files)
        info[f"{split}_left_out"] = len(bad)
    with open(os.path.join(output, MINDRECORD_INFO), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    print(f"mindrecord: {info['train']} train and {info['val']} val images of "
          f"{len(classes)} classes in {shards} shards each in {output}", flush=True)
    return info


def main(argv):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
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
