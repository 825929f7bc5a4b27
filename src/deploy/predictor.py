"""Inference from a checkpoint, a MINDIR or an ONNX file on image files: top-5 per image."""
import os
import sys
import warnings

import mindspore as ms
import numpy as np
from PIL import Image, UnidentifiedImageError

from src.checkpoint import load_weights, read_checkpoint, resolve
from src.dataset import eval_image_ops
from src.deploy.onnx_proto import QUANTIZED_OPS, op_types
from src.deploy.runtimes import check_runtime_applies, open_onnx
from src.deploy.sidecar import (
    check_sidecar_matches,
    embedded_record,
    read_sidecar,
    sidecar_path,
)
from src.errors import UserError
from src.models import family_of, list_networks

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_files(paths) -> list:
    """The image files named in ``paths``, folders searched recursively, in sorted order."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            for folder, _, names in sorted(os.walk(path)):
                found += [os.path.join(folder, n) for n in sorted(names)
                          if n.lower().endswith(IMAGE_SUFFIXES)]
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise UserError("image path not found", path, "give image files or folders")
    if not found:
        raise UserError("no images found", ", ".join(paths),
                        f"give {'/'.join(IMAGE_SUFFIXES)} files")
    return found


def preprocess(files, dataset: str, size, input_norm: str = "imagenet",
               resize: int = 0) -> np.ndarray:
    """float32 (N, 3, height, width) batch of ``files`` through the eval transforms; ``size`` is
    a side or (height, width), ``resize`` the short side before the crop (0: the default)."""
    ops = eval_image_ops(dataset, size, input_norm, resize)
    batch = []
    for name in files:
        try:
            with warnings.catch_warnings():  # a decompression bomb is refused, not decoded
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = np.asarray(Image.open(name).convert("RGB"))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise UserError(f"image of more than {Image.MAX_IMAGE_PIXELS:,} pixels", name,
                            "give images of a sane size (a file this large is broken or a "
                            "decompression bomb)") from err
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise UserError("not a readable image", name, "remove it or give only images") from err
        for op in ops:
            image = op(image)
        batch.append(image)
    return np.stack(batch).astype(np.float32)


EXPORTED = (".mindir", ".onnx")


def graph_signature(path: str, kind: str, session=None) -> tuple:
    """((batch, channels, height, width), classes) that the exported file's own graph declares;
    a dimension it leaves open is None. ``session``: the file's runtime session (ONNX)."""
    def known(dim):
        return dim if isinstance(dim, int) and dim > 0 else None
    if kind == ".onnx":
        shape, out = session.input_shape, session.output_shape
    else:
        try:
            graph = ms.load_mindir(path).graph
            shape, out = list(graph.input[0].tensor[0].dims), list(graph.output[0].tensor[0].dims)
        except (RuntimeError, ValueError, IndexError) as err:
            raise UserError("not a loadable MINDIR file", path,
                            "export it again with export.py") from err
    if len(shape) != 4 or len(out) != 2:
        raise UserError(f"the file's graph takes input {list(shape)} and gives {list(out)}, not "
                        f"images (N, 3, H, W) to logits (N, classes)", path,
                        "give a model export.py wrote")
    return tuple(known(d) for d in shape), known(out[1])


class Predictor:
    """Logits of a batch from a .ckpt, a .mindir or an .onnx file, and the record of what it
    expects: ``record`` (network, classes, pixels; resolve()'s precedence) and ``size``, the
    (height, width) its images are preprocessed to.

    An exported file is checked against its own graph before it runs: the input shape and
    classes it declares, and the network record stored in it, win over its sidecar
    (``FILE.json``, which may be missing: then the config gives the pixels; one of another
    network is refused) and any flag that contradicts them (``--image_size``,
    ``--num_classes``, ``batch_size`` when given) is refused in one line."""

    def __init__(self, model_path: str, config, batch_size: int = None):
        if not os.path.isfile(model_path):
            raise UserError("model file not found", model_path, "give a .ckpt, .mindir or .onnx")
        self.kind = os.path.splitext(model_path)[1].lower()
        self.fixed_batch, self.quantized = None, False
        check_runtime_applies(config, model_path)
        if self.kind == ".ckpt":
            params, meta = read_checkpoint(model_path)
            self.record = resolve(config, meta, model_path)
            self.size = (self.record.image_size, self.record.image_size)
            self.net = self.record.build(conv_impl=config.conv_impl)
            load_weights(self.net, params, model_path, use_ema=config.use_ema_weights)
            self.net.set_train(False)
            return
        if self.kind not in EXPORTED:
            raise UserError(f"unknown model file type {self.kind!r}", model_path,
                            "give a .ckpt, .mindir or .onnx file")
        sidecar = sidecar_path(model_path)
        recorded = read_sidecar(model_path)
        own = embedded_record(model_path, self.kind)
        check_sidecar_matches(recorded, own, model_path)
        recorded.update(own)
        self._load(model_path, config.runtime, "quantization" in recorded,
                   recorded.get("network", ""))
        (batch, channels, height, width), classes = graph_signature(
            model_path, self.kind, getattr(self, "session", None))
        shape = recorded.pop("input_shape", None)
        if shape and [d or None for d in shape] != [batch, channels, height, width]:
            raise UserError(f"the metadata says input {shape}, the file's graph "
                            f"{[batch, channels, height, width]}", sidecar,
                            "export the model again, or remove the .json beside it")
        if classes and recorded.get("num_classes", classes) != classes:
            raise UserError(f"the metadata says {recorded['num_classes']} classes, the file's "
                            f"graph {classes}", sidecar,
                            "export the model again, or remove the .json beside it")
        if channels not in (None, 3):
            raise UserError(f"the file's graph takes {channels}-channel images", model_path,
                            "give a model of RGB images (3 channels)")
        if classes:
            recorded["num_classes"] = classes
        self.record = resolve(config, recorded, model_path)
        self.size = (self.record.image_size, self.record.image_size)
        if height and width:
            if "image_size" in config.explicit and (height, width) != (config.image_size,) * 2:
                raise UserError(f"--image_size {config.image_size} contradicts the exported "
                                f"model's input of {height}x{width}", model_path,
                                "drop --image_size, or export again at that size")
            self.size = (height, width)
        if batch and batch_size and batch_size != batch:
            raise UserError(f"--batch_size {batch_size} contradicts the exported model's fixed "
                            f"batch of {batch}", model_path,
                            "drop --batch_size, or export with --dynamic_batch True")
        self.fixed_batch = batch

    def exported_side(self, model_path: str) -> int:
        """The side of the square images this exported file takes, for eval.py --model and the
        benchmark's --model; a checkpoint or a non-square graph is one line."""
        if self.kind == ".ckpt":
            raise UserError("a checkpoint given as --model", model_path,
                            "give it as --checkpoint_path, or give an exported .mindir or .onnx")
        height, width = self.size
        if height != width:
            raise UserError(f"the file's graph takes {height}x{width} images, not square ones",
                            model_path, "export at a square size (--width only)")
        return height

    def _load(self, model_path: str, runtime: str, quantized: bool, network: str) -> None:
        if self.kind == ".mindir":
            try:
                self.net = ms.nn.GraphCell(ms.load(model_path))
            except (RuntimeError, ValueError) as err:
                raise UserError("not a loadable MINDIR file", model_path,
                                "export it again with export.py") from err
            return
        if not quantized:  # a file without its sidecar: its own graph says
            try:
                quantized = bool(op_types(model_path) & QUANTIZED_OPS)
            except ValueError:
                quantized = False  # the runtime's loader says what is wrong with the file
        self.quantized = quantized
        family = family_of(network) if network in list_networks() else ""
        self.session = open_onnx(model_path, runtime, quantized, family)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The model's logits of ``batch``: a fixed-batch export gets it in chunks of its batch,
        the last one padded with zeros."""
        step = self.fixed_batch or len(batch)
        out = []
        for start in range(0, len(batch), step):
            chunk = batch[start:start + step]
            padded = np.concatenate([chunk, np.zeros((step - len(chunk),) + chunk.shape[1:],
                                                     chunk.dtype)]) if len(chunk) < step else chunk
            out.append(self._run(padded)[:len(chunk)])
        return np.concatenate(out)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.kind == ".onnx":
            return self.session.run(batch)
        return self.net(ms.Tensor(batch)).asnumpy()


def predict_files(predictor, files: list, batch_size: int):
    """(file, class probabilities) of each of ``files``, ``batch_size`` images a forward pass,
    preprocessed as the predictor's record says."""
    record = predictor.record
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        probs = softmax(predictor.logits(preprocess(chunk, record.dataset, predictor.size,
                                                    record.input_norm, record.eval_resize)))
        yield from zip(chunk, probs, strict=True)


def listed_files(path: str, stdin=None) -> list:
    """The image paths a text file lists, one a line (blank lines and ``#`` comments skipped);
    ``-``: standard input. Relative paths are the file's folder's (standard input: the working
    folder's)."""
    if path == "-":
        lines, folder = (stdin or sys.stdin).read().splitlines(), ""
    else:
        if not os.path.isfile(path):
            raise UserError("list of images not found", path, "give a text file of one image "
                            "path a line, or - for standard input")
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except UnicodeDecodeError:
            raise UserError("list of images is not UTF-8 text", path,
                            "give one image path a line") from None
        folder = os.path.dirname(os.path.abspath(path))
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not names:
        raise UserError("the list names no image", path, "give one image path a line")
    return [os.path.join(folder, name) for name in names]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def read_labels(path: str, num_classes: int, recorded=None) -> list:
    """Class names: a file's (one per line), else the ones the model recorded (the class folders
    it was trained on), else the class indices."""
    if not path:
        if recorded and len(recorded) == num_classes:
            return list(recorded)
        return [str(i) for i in range(num_classes)]
    if not os.path.isfile(path):
        raise UserError("label file not found", path, "give a text file of one class name a line")
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as err:
        raise UserError(f"label file is not UTF-8 text (byte {err.object[err.start]:#04x} at "
                        f"offset {err.start})", path, "save it as UTF-8") from None
    if len(names) < num_classes:
        raise UserError(f"label file has {len(names)} names for {num_classes} classes", path,
                        "give one name per class, in class-index order")
    return names
