"""INT8 ONNX: export.py --quantize int8 writes a QDQ file calibrated through our pipeline, which
infer.py, eval.py and the benchmark run like any export; every bad input is one line."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from src.deploy.exporter import export
from tests.helpers import (
    RESULT,
    randomize_weights,
    saved_checkpoint,
    write_cifar_folder,
    write_image_folder,
)

NET, CLASSES = "mobilenet_v1_025", 4


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A checkpoint of 4 classes, CIFAR-10 binaries of 4 classes (40 training images), its float32
    and INT8 exports, and a flat folder of 20 photos."""
    from src.models import create_network
    root = tmp_path_factory.mktemp("int8")
    net = randomize_weights(create_network(NET, num_classes=CLASSES, conv_impl="mindspore"))
    found = {"ckpt": saved_checkpoint(root / "m-1_2.ckpt", NET, num_classes=CLASSES, net=net),
             "data": write_cifar_folder(str(root / "cifar"), train_count=40, test_count=24),
             "photos": str(root / "photos"), "out": str(root / "m")}
    os.makedirs(found["photos"])
    rng = np.random.RandomState(0)
    for i in range(20):
        Image.fromarray(rng.randint(0, 255, (40 + i, 50, 3), np.uint8)).save(
            os.path.join(found["photos"], f"{i:02d}.png"))
    found["int8"] = export(["--checkpoint_path", found["ckpt"], "--file_format", "ONNX",
                            "--quantize", "int8", "--calibration_data", found["data"],
                            "--file_name", found["out"]])
    found["onnx"] = found["out"] + ".onnx"
    return found


def test_int8_file_is_quantized_per_channel_with_its_sidecar(made):
    import onnx
    assert made["int8"] == made["out"] + ".int8.onnx"
    model = onnx.load(made["int8"])
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = {init.name: init for init in model.graph.initializer}
    conv_scales = [weights[node.input[1]] for node in model.graph.node
                   if node.op_type == "DequantizeLinear" and weights.get(node.input[0]) is not None
                   and weights[node.input[0]].data_type == onnx.TensorProto.INT8]
    assert conv_scales and all(len(s.dims) == 1 and s.dims[0] > 1 for s in conv_scales)
    assert os.path.getsize(made["int8"]) <= 0.4 * os.path.getsize(made["onnx"])
    with open(made["int8"] + ".json", encoding="utf-8") as f:
        sidecar = json.load(f)
    assert sidecar["network"] == NET and sidecar["num_classes"] == CLASSES
    assert sidecar["input_shape"] == [None, 3, 32, 32]
    quant = sidecar["quantization"]
    assert quant["type"] == "int8" and quant["calibration_images"] == 40  # all it had (< 256)
    assert quant["calibration_data"] == os.path.abspath(made["data"])


def test_int8_scores_and_infers_like_the_float32_file(made, cli):
    """eval.py --model gives the result line for both files; on these 24 held-out images the
    INT8 file's top-1 is the float32 file's within 1 image, and infer.py names a class for each
    photo."""
    top1 = {}
    for key in ("onnx", "int8"):
        result = cli("eval.py", "--model", made[key], "--dataset_path", made["data"])
        assert result.returncode == 0, result.stderr
        match = RESULT.search(result.stdout)
        assert match and match.group(5) == made[key], result.stdout
        top1[key] = float(match.group(2))
    assert abs(top1["int8"] - top1["onnx"]) <= 1 / 24 + 1e-9, top1
    result = cli("infer.py", "--model", made["int8"], made["photos"])
    assert result.returncode == 0, result.stderr
    assert sum(line.startswith(made["photos"]) for line in result.stdout.splitlines()) == 20


def test_int8_logits_follow_the_float32_logits(made):
    from src.deploy.predictor import Predictor
    from src.model_utils.config import get_config
    batch = np.random.RandomState(1).randn(8, 3, 32, 32).astype(np.float32)
    config = get_config([])
    fp32 = Predictor(made["onnx"], config).logits(batch)
    int8 = Predictor(made["int8"], config).logits(batch)
    assert np.corrcoef(fp32.ravel(), int8.ravel())[0, 1] > 0.95
    assert np.abs(int8 - fp32).max() < 0.25 * np.abs(fp32).max()


@pytest.mark.parametrize("key", ["onnx", "int8"])
def test_openvino_runs_our_files_as_onnxruntime_does(made, cli, key):
    """The float32 and the INT8 file on each runtime: eval.py's top-1 the same and the logits
    within 1e-4 (OpenVINO in float32: its bfloat16 default on this CPU would not be), and
    infer.py names the same class for every photo."""
    from src.deploy.predictor import Predictor
    from src.model_utils.config import get_config
    batch = np.random.RandomState(2).randn(8, 3, 32, 32).astype(np.float32)
    logits, figures, classes = {}, {}, {}
    for runtime in ("onnxruntime", "openvino"):
        predictor = Predictor(made[key], get_config(["--runtime", runtime]))
        assert predictor.session.name == runtime
        logits[runtime] = predictor.logits(batch)
        result = cli("eval.py", "--model", made[key], "--dataset_path", made["data"],
                     "--runtime", runtime)
        assert result.returncode == 0, result.stderr
        figures[runtime] = RESULT.search(result.stdout).groups()[:3]
        result = cli("infer.py", "--model", made[key], made["photos"], "--runtime", runtime)
        assert result.returncode == 0, result.stderr
        classes[runtime] = [line.split(": ")[1].split()[0] for line in result.stdout.splitlines()
                            if line.startswith(made["photos"])]
    assert np.abs(logits["openvino"] - logits["onnxruntime"]).max() <= 1e-4
    assert np.abs(logits["onnxruntime"]).max() > 1e-2
    assert figures["openvino"][1:] == figures["onnxruntime"][1:]  # top-1, top-5
    assert abs(float(figures["openvino"][0]) - float(figures["onnxruntime"][0])) <= 1e-4
    assert classes["openvino"] == classes["onnxruntime"] and len(classes["openvino"]) == 20


def test_auto_takes_the_faster_runtime_for_the_files_family_and_kind(made, cli):
    """MobileNetV1: onnxruntime for the float32 file, OpenVINO for the INT8 one (the family
    from the record the file holds)."""
    for key, runtime in (("onnx", "onnxruntime"), ("int8", "openvino")):
        result = cli("infer.py", "--model", made[key], made["photos"])
        assert result.returncode == 0, result.stderr
        kind = "INT8" if key == "int8" else "float32"
        assert f"runtime: {runtime}, the faster at batch 32 for a mobilenet_v1 {kind} ONNX as " \
            "docs/DEPLOY.md measured it (--runtime " in result.stdout


def runtime_faults(made, tmp_path):
    """id: (flags, what the line says)."""
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07" + os.urandom(400))
    return {
        "openvino missing": (["--model", made["onnx"], "--runtime", "openvino"],
                             "openvino is not installed"),
        "a file OpenVINO cannot read": (["--model", garbage, "--runtime", "openvino"],
                                        "OpenVINO cannot read the file"),
        "--runtime with a checkpoint": (["--model", made["ckpt"], "--runtime", "openvino"],
                                        "--runtime openvino chooses how an exported .onnx runs"),
        "an unknown runtime": (["--model", made["onnx"], "--runtime", "tensorrt"],
                               "runtime 'tensorrt'"),
    }


@pytest.mark.parametrize("case", ["openvino missing", "a file OpenVINO cannot read",
                                  "--runtime with a checkpoint", "an unknown runtime"])
def test_runtime_faults_are_one_line(made, cli, monkeypatch, tmp_path, case):
    flags, expected = runtime_faults(made, tmp_path)[case]
    if case == "openvino missing":
        monkeypatch.setattr("src.deploy.runtimes.installed", lambda name: name != "openvino")
    for entry in ("infer.py", "eval.py"):
        args = flags + ([made["photos"]] if entry == "infer.py" else
                        ["--dataset_path", made["data"]])
        if entry == "eval.py" and case == "--runtime with a checkpoint":
            args = ["--checkpoint_path", made["ckpt"], "--runtime", "openvino",
                    "--dataset_path", made["data"]]
        result = cli(entry, *args)
        lines = result.error_lines()
        assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], (entry,
                                                                                     lines)


def test_a_float32_onnx_and_a_photo_folder_quantize_too(made, tmp_path):
    """--model FILE.onnx quantizes an existing export; a folder of photos (no labels, any size)
    calibrates through infer.py's preprocessing, spread over its files."""
    source = str(tmp_path / "f.onnx")
    shutil.copyfile(made["onnx"], source)
    shutil.copyfile(made["onnx"] + ".json", source + ".json")
    path = export(["--model", source, "--quantize", "int8", "--file_format", "ONNX",
                   "--calibration_data", made["photos"], "--calibration_images", "16"])
    assert path == str(tmp_path / "f.int8.onnx") and os.path.isfile(path)
    with open(path + ".json", encoding="utf-8") as f:
        sidecar = json.load(f)
    assert sidecar["quantization"]["calibration_images"] == 16
    assert sidecar["network"] == NET and sidecar["input_shape"] == [None, 3, 32, 32]


def test_onnx_missing_is_one_line(made, cli, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    result = cli("export.py", "--checkpoint_path", made["ckpt"], "--file_format", "ONNX",
                 "--quantize", "int8", "--calibration_data", made["data"])
    assert result.returncode == 2
    assert result.error_lines() == ["error: onnxruntime's quantization tools are not installed "
                                    "(onnx is missing) (--quantize): pip install onnxruntime onnx "
                                    '"numpy<2"']
    assert not list(tmp_path.iterdir())  # nothing exported before the refusal


def bad_inputs(made, tmp_path):
    """id: (flags, what the line says)."""
    few = str(tmp_path / "few")
    os.makedirs(few)
    for i in range(5):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(os.path.join(few, f"{i}.png"))
    ten = write_cifar_folder(str(tmp_path / "ten"), train_count=40, test_count=8, classes=10)
    folders = write_image_folder(str(tmp_path / "folders"), per_class=6, classes=3, size=32)
    named = saved_checkpoint(tmp_path / "named-1_2.ckpt", NET, num_classes=3,
                             dataset="imagenet", class_names=json.dumps(["cat", "dog", "fox"]))
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    ckpt = ["--checkpoint_path", made["ckpt"], "--file_format", "ONNX", "--quantize", "int8"]
    return {
        "too few images": (ckpt + ["--calibration_data", few],
                           "5 images are too few to calibrate on"),
        "too few asked for": (ckpt + ["--calibration_data", made["data"],
                                      "--calibration_images", "4"],
                              "4 calibration images are too few"),
        "no calibration data": (ckpt, "no calibration images given (--calibration_data)"),
        "calibration data not found": (ckpt + ["--calibration_data", str(tmp_path / "nope")],
                                       "calibration data not found"),
        "an empty folder": (ckpt + ["--calibration_data", empty], "no images, and no cifar10"),
        "labels past the checkpoint's classes": (ckpt + ["--calibration_data", ten],
                                                 "but the network has 4 classes"),
        "class folders not the checkpoint's": (
            ["--checkpoint_path", named, "--file_format", "ONNX", "--quantize", "int8",
             "--calibration_data", folders], "differ from the ones the network was trained on"),
        "MINDIR": (ckpt[:2] + ["--file_format", "MINDIR", "--quantize", "int8",
                               "--calibration_data", made["data"]],
                   "INT8 models are written as ONNX, not MINDIR"),
        "int4": (ckpt[:4] + ["--quantize", "int4"], "--quantize 'int4' is not known"),
        "an INT8 file to quantize": (["--model", made["int8"], "--quantize", "int8",
                                      "--file_format", "ONNX", "--calibration_data",
                                      made["data"]], "already quantized (INT8)"),
        "--model without --quantize": (["--model", made["onnx"], "--file_format", "ONNX"],
                                       "--model is a file to quantize"),
    }


CASES = ["too few images", "too few asked for", "no calibration data",
         "calibration data not found", "an empty folder", "labels past the checkpoint's classes",
         "class folders not the checkpoint's", "MINDIR", "int4", "an INT8 file to quantize",
         "--model without --quantize"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_to_int8_export_is_one_line(made, cli, tmp_path, case):
    flags, expected = bad_inputs(made, tmp_path / "inputs")[case]
    os.makedirs(tmp_path / "out")
    result = cli("export.py", *flags, "--file_name", tmp_path / "out" / "q")
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.error_lines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not (tmp_path / "out" / "q.int8.onnx").exists()
