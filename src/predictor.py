"""Inference from a checkpoint, a MINDIR or an ONNX file on image files: top-5 per image."""
import json
import os
import warnings

import mindspore as ms
import numpy as np
from PIL import Image, UnidentifiedImageError

from src.checkpoint import load_weights, read_checkpoint, resolve
from src.dataset import eval_image_ops
from src.errors import UserError

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
        raise UserError("no images found", ", ".join(paths), f"give {'/'.join(IMAGE_SUFFIXES)} files")
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


def read_sidecar(path: str) -> dict:
    """What export.py wrote beside a model (its record and input shape); {} if there is none."""
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


class Predictor:
    """Logits of a batch from a .ckpt, a .mindir or an .onnx file, and the record of what it
    expects: ``record`` (network, classes, pixels; resolve()'s precedence) and ``size``, the
    (height, width) its images are preprocessed to."""

    def __init__(self, model_path: str, config):
        if not os.path.isfile(model_path):
            raise UserError("model file not found", model_path, "give a .ckpt, .mindir or .onnx")
        self.kind = os.path.splitext(model_path)[1].lower()
        self.fixed_batch = None
        if self.kind == ".ckpt":
            params, meta = read_checkpoint(model_path)
            self.record = resolve(config, meta, model_path)
            self.size = (self.record.image_size, self.record.image_size)
            self.net = self.record.build(conv_impl=config.conv_impl)
            load_weights(self.net, params, model_path)
            self.net.set_train(False)
            return
        if self.kind not in (".mindir", ".onnx"):
            raise UserError(f"unknown model file type {self.kind!r}", model_path,
                            "give a .ckpt, .mindir or .onnx file")
        sidecar = model_path + ".json"
        recorded = read_sidecar(sidecar)
        shape = recorded.pop("input_shape", None)
        self.record = resolve(config, recorded, sidecar)
        self.size = (self.record.image_size, self.record.image_size)
        if shape:  # the exported graph fixes the input's height and width (and maybe its batch)
            self.fixed_batch, (height, width) = shape[0], shape[2:]
            if "image_size" in config.explicit and (height, width) != (config.image_size,) * 2:
                raise UserError(f"--image_size {config.image_size} contradicts the exported "
                                f"model's input of {height}x{width}", model_path,
                                "drop --image_size, or export again at that size")
            self.size = (height, width)
        if self.kind == ".mindir":
            try:
                self.net = ms.nn.GraphCell(ms.load(model_path))
            except (RuntimeError, ValueError) as err:
                raise UserError("not a loadable MINDIR file", model_path,
                                "export it again with export.py") from err
            return
        try:
            import onnxruntime
        except ImportError as err:
            raise UserError("onnxruntime is not installed", model_path,
                            'pip install onnxruntime "numpy<2"') from err
        try:
            self.session = onnxruntime.InferenceSession(model_path)
        except Exception as err:  # onnxruntime raises its own error types
            raise UserError("not a loadable ONNX file", model_path,
                            "export it again with export.py") from err
        self.input_name = self.session.get_inputs()[0].name

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
            return self.session.run(None, {self.input_name: batch})[0]
        return self.net(ms.Tensor(batch)).asnumpy()


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
