"""The sidecar export.py writes beside every model file, ``FILE.json``: the network record
(network, classes, layout options, pixels, class names), the input shape the graph takes (None:
any batch), the format, and what the file was made from (the checkpoint; for an INT8 file the
quantization and its float32 source). infer.py, eval.py --model, export.py --model and the
benchmark read it back through ``read_sidecar``; this module alone writes and reads it.

The network record also travels inside the file (``RECORD_KEY``: an ONNX metadata property, a
MINDIR user_info entry), so that a sidecar of another network is found: ``embedded_record``
reads it back."""
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


# The key under which export.py stores the network record in the file itself.
RECORD_KEY = "zoo_network_record"


def embedded_record(model_path: str, kind: str) -> dict:
    """The network record stored in the exported file itself ({} for a file written without
    one)."""
    try:  # a file that does not parse has no record; its loader says what is wrong with it
        if kind == ".onnx":
            from src.deploy.onnx_proto import read_onnx_metadata
            text = read_onnx_metadata(model_path).get(RECORD_KEY)
        else:
            import mindspore as ms
            text = dict(ms.load_mindir(model_path).user_info).get(RECORD_KEY)
    except (RuntimeError, ValueError, IndexError, TypeError):
        return {}
    try:
        record = json.loads(text) if text else {}
    except ValueError:
        record = {}
    return record if isinstance(record, dict) else {}


def check_sidecar_matches(sidecar: dict, own: dict, model_path: str) -> None:
    """One line when the sidecar beside a file describes another network than the file's own
    record."""
    for key in ("network", "num_classes"):
        if key in sidecar and key in own and sidecar[key] != own[key]:
            raise UserError(f"the metadata beside the file is for {key} {sidecar[key]}, the "
                            f"file's own record says {own[key]}", sidecar_path(model_path),
                            "put the file's own .json beside it, or remove this one")
