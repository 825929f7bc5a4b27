"""What infer.py writes with ``--output FILE``: each image's top-k classes as JSON or CSV.

JSON: a list, one object an image: ``{"file": path, "topk": [{"rank": 1, "class_index": i,
"class_name": name, "probability": p}, ...]}``, ranks from 1. CSV: a header ``file, rank,
class_index, class_name, probability`` and one row per image and rank. The file is written
whole or not at all (beside it first, then renamed), after every image has been predicted.
"""
import csv
import json
import os

from src.errors import UserError

FORMATS = ("json", "csv")
FIELDS = ("rank", "class_index", "class_name", "probability")


def top_k(probs, k: int, labels: list) -> list:
    """[{rank, class_index, class_name, probability}] of the ``k`` most likely classes."""
    order = probs.argsort()[::-1][:k]
    return [{"rank": rank, "class_index": int(i), "class_name": labels[i],
             "probability": round(float(probs[i]), 6)} for rank, i in enumerate(order, 1)]


def output_format(path: str, fmt: str = "") -> str:
    """The format of ``path``: ``fmt`` when given, else its suffix; one line for neither."""
    chosen = (fmt or os.path.splitext(path)[1].lstrip(".")).lower()
    if chosen not in FORMATS:
        raise UserError(f"output format {chosen or 'unknown'!r} is not json or csv", "--output",
                        "give a FILE.json or FILE.csv, or --output_format json|csv")
    return chosen


def check_writable(path: str) -> None:
    """One line, before any image is read, when ``path`` cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError("the output is a folder", path, "give a file path for the results")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise UserError("the output's folder does not exist or is not writable", path,
                        "give a file in a folder you can write to")


def write_results(path: str, fmt: str, results: list) -> None:
    """``results`` ([{"file", "topk"}]) as ``fmt`` at ``path``, whole or not at all."""
    partial = os.path.join(os.path.dirname(os.path.abspath(path)),
                           f".{os.path.basename(path)}.partial")
    try:
        with open(partial, "w", encoding="utf-8", newline="") as f:
            if fmt == "json":
                json.dump(results, f, indent=1, ensure_ascii=False)
            else:
                writer = csv.writer(f)
                writer.writerow(("file",) + FIELDS)
                for result in results:
                    for row in result["topk"]:
                        writer.writerow([result["file"]] + [row[k] for k in FIELDS])
        os.replace(partial, path)
    except OSError as err:
        if os.path.exists(partial):
            os.remove(partial)
        raise UserError(f"cannot write the results ({err.strerror})", path,
                        "give a file in a folder you can write to, with space") from None
