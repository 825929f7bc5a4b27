"""The sidecar export.py writes beside every model file, ``FILE.json``: the network record
(network, classes, layout options, pixels, class names), the input shape the graph takes (None:
any batch), the format, and what the file was made from (the checkpoint; for an INT8 file the
quantization and its float32 source). infer.py, eval.py --model, export.py --model and the
benchmark read it back through ``read_sidecar``; this module alone writes and reads it."""
import json
import os

from src.errors import UserError


def sidecar_path(model_path: str) -> str:
    return model_path + ".json"


def sidecar_of(record, input_shape: list, fmt: str, **made_from) -> dict:
    """What the sidecar of a file of ``record``'s network records (``made_from``: checkpoint,
    quantization)."""
    return {**record.as_dict(), "input_shape": list(input_shape), "format": fmt, **made_from}


def write_sidecar(model_path: str, sidecar: dict) -> str:
    """Write ``sidecar`` beside ``model_path``, whole or not at all; returns its path."""
    path = sidecar_path(model_path)
    partial = os.path.join(os.path.dirname(os.path.abspath(path)),
                           f".{os.path.basename(path)}.partial")
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(sidecar, f, indent=1)
    os.replace(partial, path)
    return path


def read_sidecar(model_path: str) -> dict:
    """What export.py wrote beside ``model_path`` (its record and input shape); {} if there is
    none."""
    path = sidecar_path(model_path)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            sidecar = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise UserError(f"the model's metadata is not valid JSON ({err})", path,
                        "export the model again, or remove the file to use the config's "
                        "values") from None
    if not isinstance(sidecar, dict):
        raise UserError("the model's metadata is not a JSON object", path,
                        "export the model again")
    return sidecar
