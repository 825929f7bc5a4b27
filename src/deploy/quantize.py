"""INT8 for CPUs and the edge: post-training static quantization of our float32 ONNX export.

onnxruntime's quantization tools (``onnxruntime.quantization``, which needs the ``onnx``
package) write the INT8 file: QDQ format (QuantizeLinear/DequantizeLinear pairs around each
op, which onnxruntime fuses into integer kernels and other runtimes read as well), weights int8
per output channel, activations uint8 per tensor with ranges calibrated (MinMax) on images the
user gives. uint8 activations (u8s8): onnxruntime ran all three 1.0x networks faster than with
int8 ones on an AVX-512 VNNI CPU; x86 CPUs without VNNI may saturate u8s8 products
(onnxruntime's docs), see docs/DEPLOY.md. The
calibration images are read through our own pipeline with the eval transforms,
so their pixels are the ones the network was trained on:

- a data folder of the checkpoint's kind (CIFAR-10 binaries, or an image folder with train/):
  ``calibration_images`` images of the training split, shuffled with the run's seed (the
  held-out split stays held out);
- any other folder of images (photos from the field, in any layout): images spread evenly
  over its sorted files, each through infer.py's preprocessing.

MindSpore Lite's converter (INT8 ``.ms``) is not installable for this Python from the package
registry, and Golden Stick 1.4.1 pins MindSpore 2.7.1 (docs/DEPLOY.md), so this is the INT8
route that runs here and on any CPU.
"""
import os

import numpy as np

from src.errors import UserError
from src.progress import Progress

INT8_SUFFIX = ".int8.onnx"
MIN_CALIBRATION_IMAGES = 16
DEFAULT_CALIBRATION_IMAGES = 256
CALIBRATION_BATCH = 16
ONNX_OPSET = 13  # the first with per-axis QuantizeLinear/DequantizeLinear
INSTALL = 'pip install onnxruntime onnx "numpy<2"'


def quantization_tools():
    """onnxruntime.quantization, or one line saying how to install it."""
    try:
        import onnx  # noqa: F401  (the quantization tools need it, and import it late)
        from onnxruntime import quantization
    except ImportError as err:
        raise UserError(f"onnxruntime's quantization tools are not installed ({err.name} is "
                        "missing)", "--quantize", INSTALL) from None
    return quantization


def check_calibration_args(path: str, count: int) -> None:
    """The calibration flags, before anything is exported."""
    if not path:
        raise UserError("no calibration images given", "--calibration_data",
                        "give the training data's folder or a folder of images the model will see")
    if not os.path.isdir(path):
        raise UserError("calibration data not found", path, "give a folder")
    if count < MIN_CALIBRATION_IMAGES:
        raise UserError(f"{count} calibration images are too few to measure the activations' "
                        "ranges", "--calibration_images",
                        f"give at least {MIN_CALIBRATION_IMAGES} (default "
                        f"{DEFAULT_CALIBRATION_IMAGES})")


def _has_split(record, path: str) -> bool:
    """Whether ``path`` holds a data set of the record's kind with a training split."""
    from src.dataset import cifar10_files
    if record.dataset == "cifar10":
        try:
            return bool(cifar10_files(path, training=True))
        except UserError:
            return False
    if record.dataset == "mindrecord":
        from src.shards import MINDRECORD_INFO
        return os.path.isfile(os.path.join(path, MINDRECORD_INFO))
    return record.dataset == "imagenet" and os.path.isdir(os.path.join(path, "train"))


def calibration_set(record, config, path: str, count: int, size: tuple):
    """(number of images, an iterator of float32 (n, 3, H, W) batches) for calibrating a network
    of ``record`` (its pixels and classes) at ``size`` (height, width) on ``path``."""
    check_calibration_args(path, count)
    if _has_split(record, path):
        from mindspore import dataset as ds

        from src.dataset import create_dataset
        from src.model_utils.config import with_values
        data_config = with_values(record.data_config(config), dataset_path=path,
                                  image_size=size[0], drop_remainder=False)
        ds.config.set_seed(config.seed)
        data = create_dataset(data_config, training=True, augment=False, batch_size=1,
                              classes=record.class_names or None)
        available = data.get_dataset_size()
        where = f"{path} (the training split)"
        data = data.batch(CALIBRATION_BATCH)

        def batches():
            for row in data.create_tuple_iterator(output_numpy=True):
                yield row[0].reshape((-1,) + row[0].shape[2:]).astype(np.float32)
    else:
        from src.deploy.predictor import image_files, preprocess
        try:
            files = image_files([path])
        except UserError:
            raise UserError(f"no images, and no {record.dataset} training data, in the "
                            "calibration folder", path, "give the training data's folder or a "
                            "folder of .jpg/.png images") from None
        available, where = len(files), path
        files = [files[i] for i in np.linspace(0, len(files) - 1, min(count, len(files)))
                 .round().astype(int)]

        def batches():
            for start in range(0, len(files), CALIBRATION_BATCH):
                yield preprocess(files[start:start + CALIBRATION_BATCH], record.dataset, size,
                                 record.input_norm, record.eval_resize)
    if available < MIN_CALIBRATION_IMAGES:
        raise UserError(f"{available} images are too few to calibrate on (at least "
                        f"{MIN_CALIBRATION_IMAGES})", where, "give a folder of more images")
    return min(count, available), batches()


class _Reader:
    """onnxruntime's CalibrationDataReader over our batches, ``count`` images, with a progress
    line. onnxruntime reads it a range of batches at a time (``CalibStridedMinMax``), folding
    each range's minima and maxima into the last before the next, so only one batch's
    activations are held at once (ShuffleNetV2 1.0x at 224 holds some 20 MB an image)."""

    def __init__(self, input_name: str, batches, count: int):
        self.input_name, self.batches, self.count, self.done = input_name, batches, count, 0
        self.end = len(self)
        self.progress = Progress("calibrate", count, unit="images")

    def __len__(self) -> int:
        return -(-self.count // CALIBRATION_BATCH)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.end = end_index  # ranges come in order, so the next batch is start_index's

    def get_next(self):
        if self.done >= self.count or self.done >= self.end * CALIBRATION_BATCH:
            return None
        batch = next(self.batches, None)
        if batch is None:
            return None
        batch = batch[:self.count - self.done]
        self.done += len(batch)
        self.progress.update(self.done, final=self.done >= self.count)
        return {self.input_name: batch}


def quantize_onnx(float_path: str, out_path: str, record, config, calibration_data: str,
                  calibration_images: int, size: tuple) -> dict:
    """Write ``out_path``, the INT8 (QDQ) form of the float32 ONNX ``float_path``, calibrated on
    ``calibration_data``; returns what the sidecar records of the quantization."""
    quantization = quantization_tools()
    count, batches = calibration_set(record, config, calibration_data, calibration_images, size)
    folder = os.path.dirname(os.path.abspath(out_path))
    prepared, partial = (os.path.join(folder, f".{os.path.basename(out_path)}.{tag}.partial")
                         for tag in ("prepared", "int8"))
    try:
        # MindSpore writes opset 11; per-channel Q/DQ needs 13. Then shape inference and
        # constant folding, as onnxruntime's docs advise.
        import onnx
        from onnx import version_converter
        model = version_converter.convert_version(onnx.load(float_path), ONNX_OPSET)
        input_name = model.graph.input[0].name
        quantization.shape_inference.quant_pre_process(model, prepared, skip_symbolic_shape=True)
        quantization.quantize_static(
            prepared, partial, _Reader(input_name, batches, count),
            quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax,
            extra_options={"CalibStridedMinMax": 1})
        os.replace(partial, out_path)  # never a half-written file under the real name
    finally:
        for leftover in (prepared, partial):
            if os.path.exists(leftover):
                os.remove(leftover)
    return {"type": "int8", "format": "QDQ", "weights": "int8 per channel",
            "activations": "uint8 per tensor", "method": "MinMax",
            "calibration_data": os.path.abspath(calibration_data), "calibration_images": count,
            "float_model": os.path.abspath(float_path)}
