"""Export a checkpoint to MINDIR, ONNX or AIR (and INT8 ONNX), with a sidecar json of what the
file needs."""
import json
import os

import mindspore as ms
import numpy as np

from src.checkpoint import load_weights, read_checkpoint, resolve
from src.cli import ArgumentParser
from src.deploy.onnx_proto import add_onnx_metadata, open_onnx_output_batch
from src.deploy.quantize import (
    DEFAULT_CALIBRATION_IMAGES,
    INT8_SUFFIX,
    check_calibration_args,
    quantization_tools,
    quantize_onnx,
)
from src.deploy.sidecar import RECORD_KEY, sidecar_of, write_sidecar
from src.device import use_device
from src.errors import UserError, writable_folder
from src.model_utils.config import MAX_IMAGE_SIZE, get_config, parse_bool
from src.models.layers import fold_batch_norms
from src.weights.pretrained import checkpoint_of

FORMATS = ("MINDIR", "ONNX", "AIR")
SUFFIX = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}
# Standard operators only, in the form each format's runtime runs fast, and the same whatever
# device exports (a file is written once and runs wherever). MindSpore's CPU grouped conv is
# far slower than one conv per group, so MINDIR and AIR split a grouped 1x1 conv
# ("mindspore_split"); MINDIR also builds the 3x3 stems and depthwise convs from shifted
# windows ("mindspore_taps"; MindSpore's CPU Conv2D is slower there). onnxruntime and OpenVINO
# run a grouped Conv faster than the split, float32 and INT8, and the file exports sooner
# (docs/PERFORMANCE.md, docs/DEPLOY.md).
EXPORT_CONV_IMPL = {"MINDIR": "mindspore_taps", "AIR": "mindspore_split",
                    "ONNX": "mindspore_grouped"}


def export_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="export.py", allow_abbrev=False,
        description="Export a checkpoint. Other flags are config keys (see train.py --help).")
    parser.add_argument("--ckpt_file", dest="ckpt_file", default=None,
                        help="the checkpoint (the zoo's name for --checkpoint_path)")
    parser.add_argument("--file_name", default=None, help="output path without suffix "
                        "(default: the network's name)")
    parser.add_argument("--file_format", default="MINDIR", help="MINDIR, ONNX or AIR")
    parser.add_argument("--batch_size", type=int, default=1, help="batch of a fixed-batch export")
    parser.add_argument("--width", type=int, default=None, help="input width (default: the "
                        "checkpoint's recorded image_size, else the config's)")
    parser.add_argument("--height", type=int, default=None, help="input height")
    parser.add_argument("--dynamic_batch", default="True",
                        help="True: the batch dimension is left open, so one file serves any "
                        "batch (default); False: fixed at --batch_size")
    parser.add_argument("--quantize", default="none", help="int8: also write FILE.int8.onnx, "
                        "quantized by onnxruntime's tools and calibrated on --calibration_data "
                        "(ONNX only; docs/DEPLOY.md)")
    parser.add_argument("--calibration_data", default="", help="with --quantize int8: the "
                        "training data's folder (its training split is read) or a folder of "
                        "images like the ones the model will see")
    parser.add_argument("--calibration_images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                        help="how many images calibrate the activations' ranges")
    parser.add_argument("--model", default="", help="with --quantize int8: a float32 .onnx of "
                        "export.py's to quantize, instead of exporting a checkpoint")
    return parser


def export(argv) -> str:
    """Parse ``argv``, export, write ``<file>.json`` beside the file; returns the file's path."""
    args, rest = export_parser().parse_known_args(argv)
    if args.ckpt_file:
        rest += ["--checkpoint_path", args.ckpt_file]
    config = get_config(rest)
    fmt = args.file_format.upper()
    if fmt not in FORMATS:
        raise UserError(f"file format {args.file_format!r} is not known", "--file_format",
                        f"choose {', '.join(FORMATS)}")
    if fmt == "AIR" and config.device_target != "Ascend":
        raise UserError(f"AIR export needs Ascend, not {config.device_target}", "--file_format",
                        "export MINDIR or ONNX here, or run on an Ascend machine")
    dynamic = parse_bool(args.dynamic_batch, "dynamic_batch")
    if args.batch_size < 1:
        raise UserError(f"batch_size = {args.batch_size} is out of range", "--batch_size",
                        "give a value at least 1")
    quantize = _check_quantize(args, fmt)
    if args.model:
        return _quantize_file(args, config)
    checkpoint = checkpoint_of(config)
    if not checkpoint:
        raise UserError("no checkpoint given", "--checkpoint_path",
                        "give --checkpoint_path CKPT (or --ckpt_file), or --pretrained TAG")
    params, meta = read_checkpoint(checkpoint)
    record = resolve(config, meta, checkpoint)
    # Each side: its flag, else --image_size, else the checkpoint's recorded side, else the yaml's.
    width = record.image_size if args.width is None else args.width
    height = width if args.height is None else args.height
    for name, side in (("--width", width), ("--height", height)):
        if side < 32 or side % 32 or side > MAX_IMAGE_SIZE:
            raise UserError(f"input side {side} is not a multiple of 32 from 32 to "
                            f"{MAX_IMAGE_SIZE}", name, "give 224, 192, 160, 128, 32, ...")
    use_device(config.device_target, device_id=config.device_id)
    net = record.build(conv_impl=EXPORT_CONV_IMPL[fmt])
    weights = load_weights(net, params, checkpoint, use_ema=config.use_ema_weights)
    file_name = args.file_name or record.network
    writable_folder(os.path.dirname(os.path.abspath(file_name)), "--file_name")
    batch = None if dynamic else args.batch_size
    path = write_model(net, fmt, file_name, height, width, batch, example_batch=args.batch_size,
                       record=record.as_dict())
    sidecar = sidecar_of(record, [batch, 3, height, width], fmt,
                         checkpoint=os.path.abspath(checkpoint), weights=weights)
    print(f"export: {path} ({fmt}, input {sidecar['input_shape']}; None = any batch), "
          f"metadata in {write_sidecar(path, sidecar)}", flush=True)
    if not quantize:
        return path
    # The INT8 file is quantized from this float32 file, grouped 1x1 convs kept grouped: both
    # runtimes ran ShuffleNetV1's INT8 faster so than split into a conv a group (docs/DEPLOY.md).
    return _write_int8(path, file_name + INT8_SUFFIX, record, config, args, sidecar)


def _check_quantize(args, fmt: str) -> bool:
    """Whether --quantize asks for INT8; its flags checked before anything is written."""
    quantize = args.quantize.lower()
    if quantize not in ("none", "int8"):
        raise UserError(f"--quantize {args.quantize!r} is not known", "--quantize",
                        "give int8 (or none)")
    if quantize == "none":
        if args.model:
            raise UserError("--model is a file to quantize", "--model",
                            "give --quantize int8 with it, or export a --checkpoint_path")
        return False
    if fmt != "ONNX":
        raise UserError(f"INT8 models are written as ONNX, not {fmt}", "--file_format",
                        "give --file_format ONNX")
    quantization_tools()
    check_calibration_args(args.calibration_data, args.calibration_images)
    return True


def _quantize_file(args, config) -> str:
    """--quantize int8 --model FILE.onnx: the INT8 form of a float32 export of ours."""
    from src.deploy.predictor import Predictor
    predictor = Predictor(args.model, config)
    if predictor.kind != ".onnx":
        raise UserError(f"a {predictor.kind} file cannot be quantized here", args.model,
                        "give a float32 .onnx (export.py --file_format ONNX)")
    if predictor.quantized:
        raise UserError("the model is already quantized (INT8); quantizing needs the float32 "
                        "file", args.model, "give the float32 .onnx it was made from")
    stem = args.file_name or args.model[:-len(".onnx")]
    sidecar = sidecar_of(predictor.record, [predictor.fixed_batch, 3, *predictor.size], "ONNX")
    return _write_int8(args.model, stem + INT8_SUFFIX, predictor.record, config, args, sidecar)


def _write_int8(float_path: str, path: str, record, config, args, sidecar: dict) -> str:
    """Quantize the float32 file ``float_path`` into ``path``."""
    writable_folder(os.path.dirname(os.path.abspath(path)), "--file_name")
    height, width = sidecar["input_shape"][2:]
    quantization = quantize_onnx(float_path, path, record, config,
                                 args.calibration_data, args.calibration_images, (height, width))
    sidecar = {**sidecar, "quantization": {**quantization,
                                           "float_model": os.path.abspath(float_path)}}
    size = os.path.getsize(path) / os.path.getsize(float_path)
    print(f"export: {path} (ONNX INT8, {size:.2f}x the float32 file's size, calibrated on "
          f"{sidecar['quantization']['calibration_images']} images), metadata in "
          f"{write_sidecar(path, sidecar)}", flush=True)
    return path


def write_model(net, fmt: str, file_name: str, height: int, width: int, batch=None,
                example_batch: int = 1, record: dict = None) -> str:
    """Write ``net`` as export.py does: in eval mode, each BatchNorm's moving statistics folded
    into the conv before it, as ``fmt`` at ``file_name`` + its suffix, for input (``batch``, 3,
    ``height``, ``width``); ``batch`` None leaves the batch open (the ONNX export traces with
    ``example_batch``); ``record``, the network record, stored in the file (``RECORD_KEY``).
    Returns the file's path. The benchmark and the tests write through it."""
    net.set_train(False)
    fold_batch_norms(net)
    path = file_name + SUFFIX[fmt]
    text = json.dumps(record) if record else None
    if fmt == "ONNX":
        import mindspore.onnx as ms_onnx
        example = ms.Tensor(np.zeros((batch or example_batch, 3, height, width), np.float32))
        axes = {"image": {0: "batch"}, "logits": {0: "batch"}} if batch is None else None
        # A features-only network's maps keep MindSpore's own names: named, an output that a
        # later layer also reads loses that reader's input (MindSpore 2.10's ONNX export).
        maps = getattr(net, "features_only", False)
        if axes and maps:
            axes = {"image": {0: "batch"}}
        ms_onnx.export(net, example, file_name=path, input_names=["image"],
                       output_names=None if maps else ["logits"], dynamic_axes=axes)
        if batch is None:
            open_onnx_output_batch(path)
        if text:
            add_onnx_metadata(path, RECORD_KEY, text)
    else:
        def store_record(model):  # MindSpore's hook on the MINDIR/AIR proto before it is written
            if text:
                model.user_info[RECORD_KEY] = text
        example = ms.Tensor(shape=[batch, 3, height, width], dtype=ms.float32)
        ms.export(net, example, file_name=file_name, file_format=fmt, custom_func=store_record)
    return path
