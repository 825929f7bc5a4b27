"""MindRecord shards of an image folder (``python -m src.tools.mindrecord`` writes them): their
names, the folder's mindrecord.json, and the check that every shard file is whole.

A shard is MindSpore's format: 8 bytes (the length of a JSON header, little-endian), the header
(schema, page size, the pages of this file, every shard's name), then the pages, each in a slot
of ``page_size`` bytes but the last, written to its own size; beside it a ``.db`` (SQLite) with
one row per sample pointing into those pages. A file cut short, emptied, overwritten, or from
another conversion fails MindSpore's reader in the middle of an epoch with a C++ traceback;
``check_shards`` reads every header and index first (a few KB each) and names the file.
"""
import json
import os
import pathlib
import sqlite3
import struct

from src.errors import UserError

MINDRECORD_INFO = "mindrecord.json"
# Written first and removed last by the converter: its folder is unfinished while it is there.
UNFINISHED = "converting"
SCHEMA = {"image": {"type": "bytes"}, "label": {"type": "int32"}}
SPLITS = ("train", "val")
CONVERT_AGAIN = "convert the data set again (python -m src.tools.mindrecord SOURCE OUTPUT)"


def shard_names(split: str, shards: int) -> list:
    """The file names MindSpore's FileWriter gives ``shards`` files of ``split``: no number for
    one, else numbers padded to the width of the last (train.mindrecord00..11 for 12)."""
    if shards == 1:
        return [f"{split}.mindrecord"]
    width = len(str(shards - 1))
    return [f"{split}.mindrecord{i:0{width}d}" for i in range(shards)]


def mindrecord_info(folder: str) -> dict:
    """mindrecord.json of a converted folder (classes, shards, counts), or one line saying the
    folder is not one, or not a finished one."""
    if not os.path.isdir(folder):
        raise UserError("data path not found", folder, "give the folder python -m "
                        "src.tools.mindrecord wrote")
    if os.path.exists(os.path.join(folder, UNFINISHED)):
        raise UserError("the conversion into this folder did not finish", folder,
                        "delete the folder and " + CONVERT_AGAIN)
    path = os.path.join(folder, MINDRECORD_INFO)
    if not os.path.isfile(path):
        raise UserError(f"no {MINDRECORD_INFO} in the data folder: it holds no MindRecord "
                        "shards", folder, "convert the class folders with python -m "
                        "src.tools.mindrecord SOURCE OUTPUT, or give --dataset imagenet for them")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        info["classes"], info["shards"] = list(info["classes"]), int(info["shards"])
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{MINDRECORD_INFO} is not the converter's ({type(err).__name__})",
                        path, "convert the data set again") from None
    return info


def mindrecord_files(folder: str, training: bool) -> list:
    """The shard files of the train (or val) split of a converted folder, all there and whole
    (``check_shards``), each sample the json counts in one of them."""
    split = "train" if training else "val"
    info = mindrecord_info(folder)
    files = [os.path.join(folder, name) for name in shard_names(split, info["shards"])]
    missing = [f for f in files if not os.path.isfile(f) or not os.path.isfile(f + ".db")]
    if missing:
        raise UserError(f"{len(missing)} of the {info['shards']} {split} shards are missing (or "
                        "their .db)", missing[0], "copy the whole converted folder, or convert "
                        "again")
    check_shards(files, info.get(split))
    return files


def check_shards(files: list, expected_rows=None) -> int:
    """Check that each shard of one split is a whole file of this conversion: a header that
    parses with our schema and the split's shard names, the pages it lists all in the file, an
    index (.db) whose rows point into those pages; and, given ``expected_rows``, that the shards
    hold that many samples. Returns the samples; a UserError names the first bad file."""
    names = [os.path.basename(f) for f in files]
    total = 0
    for shard_id, path in enumerate(files):
        header = _read_header(path)
        try:
            pages = _check_header(header, names, shard_id, os.path.getsize(path))
        except ValueError as err:
            _damaged(path, str(err))
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            _damaged(path, f"its header lacks MindRecord's fields ({type(err).__name__}: {err})")
        rows = sum(p["end_row_id"] - p["start_row_id"] for p in pages
                   if p["page_type"] == "BLOB_DATA")
        _check_index(path + ".db", names[shard_id], pages, rows)
        total += rows
    if expected_rows is not None and total != expected_rows:
        _damaged(os.path.dirname(files[0]) or ".",
                 f"its {len(files)} shards hold {total} samples, {MINDRECORD_INFO} says "
                 f"{expected_rows}")
    return total


def _damaged(path: str, why: str):
    raise UserError(f"damaged MindRecord file: {why}", path, CONVERT_AGAIN)


def _read_header(path: str) -> dict:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            _damaged(path, f"{len(head)} bytes, shorter than a header")
        length = struct.unpack("<Q", head)[0]
        if not 2 <= length <= min(os.path.getsize(path) - 8, 1 << 30):
            _damaged(path, "its first 8 bytes give no header length it can hold")
        text = f.read(length)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        _damaged(path, "its header is not MindRecord's JSON")
    if not isinstance(header, dict):
        _damaged(path, "its header is not MindRecord's JSON")
    return header


def _check_header(header: dict, names: list, shard_id: int, size: int) -> list:
    """The header's pages, sorted, after checking it against this split and the file's size."""
    schemas = [s["schema"] for s in header["schema"]]
    if schemas != [SCHEMA]:
        raise ValueError(f"its schema {schemas} is not the converter's image and label")
    claimed = [os.path.basename(a) for a in header["shard_addresses"]]
    number = int(header["shard_id"])
    if number != shard_id or claimed != names:
        raise ValueError(f"it is {claimed[number]} of a set of {len(claimed)}, not "
                         f"{names[shard_id]} of {len(names)}")
    pages = sorted(header["page"] or [], key=lambda p: int(p["page_id"]))
    if pages:
        end = int(header["header_size"]) + int(header["page_size"]) * (len(pages) - 1) + \
            int(pages[-1]["page_size"])
        if size < end:
            raise ValueError(f"its {len(pages)} pages end at byte {end}, the file at {size} "
                             "(cut short)")
    return pages


def _check_index(path: str, name: str, pages: list, rows: int) -> None:
    """The .db of a shard: its name, one row per sample, every row in a page of the header."""
    if os.path.getsize(path) == 0:
        _damaged(path, "the index is empty")
    try:
        db = sqlite3.connect(pathlib.Path(os.path.abspath(path)).as_uri() + "?mode=ro", uri=True)
        try:
            (shard,), = db.execute("SELECT NAME FROM SHARD_NAME").fetchall()
            count, raw, blob = db.execute(
                "SELECT COUNT(*), MAX(PAGE_ID_RAW), MAX(PAGE_ID_BLOB) FROM INDEXES").fetchone()
        finally:
            db.close()
    except (sqlite3.Error, ValueError) as err:
        _damaged(path, f"the index does not read ({err})")
    if os.path.basename(shard) != name:
        _damaged(path, f"the index is {shard}'s, not {name}'s")
    if count != rows or (count and max(raw, blob) >= len(pages)):
        _damaged(path, f"the index lists {count} samples in {max(raw or 0, blob or 0) + 1} "
                 f"pages, the file {rows} in {len(pages)}")
