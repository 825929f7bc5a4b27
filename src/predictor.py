"""Inference from a checkpoint, a MINDIR or an ONNX file on image files: top-5 per image."""
import json
import os

import mindspore as ms
import numpy as np
from PIL import Image, UnidentifiedImageError

from src.checkpoint import build_network, load_weights, meta_for_eval, read_checkpoint
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


def preprocess(files, dataset: str, size: int, input_norm: str = "imagenet") -> np.ndarray:
    """float32 (N, 3, size, size) batch of ``files`` through the eval transforms."""
    ops = eval_image_ops(dataset, size, input_norm)
    batch = []
    for name in files:
        try:
            image = np.asarray(Image.open(name).convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise UserError("not a readable image", name, "remove it or give only images") from err
        for op in ops:
            image = op(image)
        batch.append(image)
    return np.stack(batch).astype(np.float32)


class Predictor:
    """Logits of a batch from a .ckpt (with its recorded network), a .mindir or an .onnx file."""

    def __init__(self, model_path: str, config):
        if not os.path.isfile(model_path):
            raise UserError("model file not found", model_path, "give a .ckpt, .mindir or .onnx")
        self.kind = os.path.splitext(model_path)[1].lower()
        self.fixed_batch = None
        if self.kind == ".ckpt":
            params, meta = read_checkpoint(model_path)
            self.meta = meta_for_eval(config, meta, model_path)
            self.net = build_network(self.meta, conv_impl=config.conv_impl)
            load_weights(self.net, params, model_path)
            self.net.set_train(False)
            return
        sidecar = model_path + ".json"
        self.meta = {"dataset": config.dataset, "image_size": config.image_size,
                     "input_norm": config.input_norm}
        if os.path.isfile(sidecar):
            with open(sidecar, encoding="utf-8") as f:
                self.meta.update(json.load(f))
            self.fixed_batch = self.meta.get("input_shape", [None])[0]
            self.meta["image_size"] = self.meta.get("input_shape", [0, 0, config.image_size])[2]
        if self.kind == ".mindir":
            try:
                self.net = ms.nn.GraphCell(ms.load(model_path))
            except (RuntimeError, ValueError) as err:
                raise UserError("not a loadable MINDIR file", model_path,
                                "export it again with export.py") from err
        elif self.kind == ".onnx":
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
        else:
            raise UserError(f"unknown model file type {self.kind!r}", model_path,
                            "give a .ckpt, .mindir or .onnx file")

    def logits(self, batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        if self.fixed_batch and count < self.fixed_batch:  # pad a fixed-batch export's input
            batch = np.concatenate([batch, np.zeros((self.fixed_batch - count,) + batch.shape[1:],
                                                    batch.dtype)])
        if self.kind == ".onnx":
            out = self.session.run(None, {self.input_name: batch})[0]
        else:
            out = self.net(ms.Tensor(batch)).asnumpy()
        return out[:count]


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
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) < num_classes:
        raise UserError(f"label file has {len(names)} names for {num_classes} classes", path,
                        "give one name per class, in class-index order")
    return names
