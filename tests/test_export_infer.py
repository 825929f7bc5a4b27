"""Export to MINDIR and ONNX, and inference from each: the logits agree with the checkpoint's."""
import json
import os
import subprocess

import mindspore as ms
import numpy as np
import pytest

from src.deploy.predictor import Predictor, image_files, preprocess
from src.model_utils.config import get_config
from src.models import create_network, list_networks
from tests.helpers import (
    ROOT,
    hooked,
    randomize_weights,
    saved_checkpoint,
    write_image_folder,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    write_image_folder(str(root), per_class=2, classes=3, size=40)
    return image_files([str(root / "val")])


@pytest.mark.parametrize("name, size", [("shufflenet_v1_g3_05", 32), ("shufflenet_v2_x0_5", 32),
                                        ("mobilenet_v1_025", 64)])
def test_checkpoint_mindir_onnx_agree(name, size, tmp_path, photos, cli):
    net = randomize_weights(create_network(name, num_classes=4, conv_impl="mindspore"))
    ckpt = saved_checkpoint(tmp_path / f"{name}-3_4.ckpt", name, num_classes=4, net=net,
                            image_size=size)
    files = {}
    for fmt in ("MINDIR", "ONNX"):
        result = cli("export.py", "--checkpoint_path", ckpt, "--file_format", fmt,
                     "--file_name", tmp_path / name, "--width", size)
        assert result.returncode == 0, result.stderr[-3000:]
        files[fmt] = str(tmp_path / name) + {"MINDIR": ".mindir", "ONNX": ".onnx"}[fmt]
        sidecar = json.load(open(files[fmt] + ".json"))
        assert sidecar["network"] == name and sidecar["num_classes"] == 4
        assert sidecar["input_shape"] == [None, 3, size, size]

    ms.set_context(mode=ms.GRAPH_MODE)
    config = get_config([])
    noise = np.random.RandomState(0).randn(3, 3, size, size).astype(np.float32)
    batch = np.concatenate([preprocess(photos, "cifar10", size), noise])
    from_ckpt = Predictor(ckpt, config).logits(batch)
    assert from_ckpt.shape == (len(photos) + 3, 4)
    from_mindir = Predictor(files["MINDIR"], config).logits(batch)
    from_onnx = Predictor(files["ONNX"], config).logits(batch)
    assert np.abs(from_mindir - from_ckpt).max() <= 1e-5
    assert np.abs(from_onnx - from_ckpt).max() <= 1e-4
    # The logits are far from zero, so the tolerances above say something.
    assert np.abs(from_ckpt).max() > 1e-2

    # One dynamic-batch MINDIR serves batch 1 and batch 5.
    mindir = Predictor(files["MINDIR"], config)
    five = np.concatenate([batch, batch])[:5]
    assert mindir.logits(five[:1]).shape == (1, 4)
    assert mindir.logits(five).shape == (5, 4)
    assert np.abs(mindir.logits(five[:1]) - mindir.logits(five)[:1]).max() <= 1e-5

    # infer.py, through scripts/run_infer.sh, prints the top classes and their probabilities.
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_infer.sh"), files["ONNX"],
                           os.path.dirname(os.path.dirname(photos[0]))], cwd=tmp_path,
                          capture_output=True,
                          text=True, env={**os.environ, "EXTRA_ARGS": "--batch_size 2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "infer_result.txt").read_text() in proc.stdout
    lines = [out for out in proc.stdout.splitlines() if out.startswith(tuple(photos))]
    assert len(lines) == len(photos)
    probs = [float(p) for p in lines[0].split(": ", 1)[1].split(", ")[0].split()[1:]]
    assert 0.0 <= probs[0] <= 1.0


# The variants also exported to MINDIR: each ShuffleNetV1 group count, both ends of the widths
# of every family (the MINDIR form's compile is most of this test's time; its windowed convs
# are the same kinds of op at every width).
MINDIR_VARIANTS = {"shufflenet_v1_g1_05", "shufflenet_v1_g2_10", "shufflenet_v1_g3_05",
                   "shufflenet_v1_g3_20", "shufflenet_v1_g4_15", "shufflenet_v1_g8_20",
                   "shufflenet_v2_x0_5", "shufflenet_v2_x2_0", "mobilenet_v1_025",
                   "mobilenet_v1_100"}


@pytest.mark.parametrize("name", list_networks())
def test_every_variant_exports_to_onnx_and_mindir_with_the_fast_layers_logits(tmp_path, name):
    """Each variant as eval.py runs it (our CPU kernels; in eval mode each conv with its
    BatchNorm and activation in one kernel) and as export.py writes it (standard operators, the
    BatchNorms folded into the convs, the same weights): ONNX (onnxruntime, its output batch
    open) and, for MINDIR_VARIANTS, MINDIR give the same logits, and so does the unfused
    network (in MINDIR's form, every variant). The features-only network's maps at strides 2
    to 32 are the hooked activations of the network eval.py runs (PyNative), and so are the
    maps the exports hold (forward_intermediates, graph mode)."""
    import onnxruntime as ort

    from src.deploy.exporter import EXPORT_CONV_IMPL, write_model
    from src.models.layers import FusedSequence
    x = np.random.RandomState(0).rand(2, 3, 32, 32).astype(np.float32)
    ms.set_context(mode=ms.PYNATIVE_MODE)  # no compile for the two references: the exports compile
    trained = randomize_weights(create_network(name, num_classes=10))
    assert any(getattr(cell, "fast", False) for _, cell in trained.cells_and_names()), name
    assert any(isinstance(c, FusedSequence) and c.fusing for _, c in trained.cells_and_names())
    trained.set_train(False)
    fused = trained(ms.Tensor(x)).asnumpy()
    modules = trained.feature_info.module_name()
    activations = hooked(trained, modules, ms.Tensor(x))
    features = create_network(name, features_only=True)  # its maps are those activations
    assert not ms.load_param_into_net(features, trained.parameters_dict())[0]
    features.set_train(False)
    for module, array in zip(modules, features(ms.Tensor(x)), strict=True):
        reference = activations[module]
        assert np.abs(array.asnumpy() - reference).max() <= 1e-6 * max(1, np.abs(reference).max())
    nets = {}
    for fmt in ("MINDIR", "ONNX"):  # export.py's network for each format, the weights loaded
        nets[fmt] = create_network(name, num_classes=10, conv_impl=EXPORT_CONV_IMPL[fmt])
        assert not ms.load_param_into_net(nets[fmt], trained.parameters_dict())[0]
        nets[fmt].set_train(False)
    unfused = nets["MINDIR"](ms.Tensor(x)).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    files = {fmt: write_model(LogitsAndMaps(net), fmt, str(tmp_path / name), 32, 32)
             for fmt, net in nets.items() if fmt == "ONNX" or name in MINDIR_VARIANTS}
    for fmt in files:  # each exported network's BatchNorms folded into its convs
        assert not any(isinstance(c, ms.nn.BatchNorm2d) for _, c in nets[fmt].cells_and_names())
    session = ort.InferenceSession(files["ONNX"])
    assert session.get_outputs()[0].shape == ["batch", 10]
    exported = [session.run(None, {"image": x})]
    if "MINDIR" in files:
        exported.append([out.asnumpy() for out in
                         ms.nn.GraphCell(ms.load(files["MINDIR"]))(ms.Tensor(x))])
    scale = np.abs(unfused).max()
    assert scale > 0.1, name  # logits that tell a wrong layer apart
    for logits in [fused] + [outputs[0] for outputs in exported]:
        gap = np.abs(logits - unfused).max()
        assert gap <= 1e-5 * scale, (name, gap)
    for outputs in exported:
        assert len(outputs) == 6, name
        for module, level, array in zip(modules, trained.feature_info, outputs[1:], strict=True):
            assert array.shape[1:] == (level["num_chs"], 32 // level["reduction"],
                                       32 // level["reduction"]), (name, module)
            reference = activations[module]
            assert np.abs(array - reference).max() <= 1e-5 * max(1, np.abs(reference).max())


class LogitsAndMaps(ms.nn.Cell):
    """A network's logits and its feature maps at strides 2 to 32, from one pass."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x):
        last, maps = self.net.forward_intermediates(x)
        return (self.net.forward_head(last),) + maps


def test_class_names_reach_the_export_and_infer(tmp_path, photos, cli):
    """A checkpoint of an image-folder run records its class folders; the export's sidecar keeps
    them and infer.py prints them (not indices) for the checkpoint and for the exported file."""
    names = ["cat", "dog", "bird", "fish"]
    ckpt = saved_checkpoint(tmp_path / "mobilenet_v1_025-1_2.ckpt", "mobilenet_v1_025",
                            num_classes=4, dataset="imagenet", class_names=json.dumps(names))
    result = cli("export.py", "--checkpoint_path", ckpt, "--file_format", "ONNX", "--file_name",
                 tmp_path / "pets")
    assert result.returncode == 0, result.stderr
    assert json.load(open(tmp_path / "pets.onnx.json"))["class_names"] == names
    for model in (ckpt, tmp_path / "pets.onnx"):
        result = cli("infer.py", "--model", model, *photos)
        assert result.returncode == 0, result.stderr
        lines = [out for out in result.stdout.splitlines() if out.startswith(tuple(photos))]
        assert len(lines) == len(photos)
        for line in lines:
            top = [entry.split()[0] for entry in line.split(": ", 1)[1].split(", ")]
            assert sorted(top) == sorted(names), line


def test_infer_writes_top_k_as_json_and_csv(tmp_path, photos, cli, monkeypatch):
    """--topk 3 --output FILE.json: every image's 3 best classes (file, rank, class index and
    name, probability), the printed ones, read back by json.load; the same as CSV, the images
    listed in a text file and on standard input."""
    import csv
    import io
    names = ["cat", "dog", "bird", "fish"]
    ckpt = saved_checkpoint(tmp_path / "mobilenet_v1_025-1_2.ckpt", "mobilenet_v1_025",
                            num_classes=4, dataset="imagenet", class_names=json.dumps(names))
    result = cli("infer.py", "--model", ckpt, "--topk", "3", "--output", tmp_path / "r.json",
                 *photos)
    assert result.returncode == 0, result.stderr
    results = json.load(open(tmp_path / "r.json"))
    assert [r["file"] for r in results] == photos
    for r in results:
        assert [t["rank"] for t in r["topk"]] == [1, 2, 3]
        assert all(names[t["class_index"]] == t["class_name"] for t in r["topk"])
        probs = [t["probability"] for t in r["topk"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        printed = next(line for line in result.stdout.splitlines()
                       if line.startswith(r["file"] + ": "))
        assert printed.split(": ", 1)[1] == ", ".join(
            f"{t['class_name']} {t['probability']:.4f}" for t in r["topk"])
    listing = tmp_path / "list.txt"
    listing.write_text("# the photos\n" + "\n".join(photos) + "\n\n")
    for source in ("file", "stdin"):
        flags = ["--files_from", listing] if source == "file" else ["--files_from", "-"]
        monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(photos)))
        out = tmp_path / f"r_{source}.csv"
        result = cli("infer.py", "--model", ckpt, "--topk", "3", "--output", out, *flags)
        assert result.returncode == 0, result.stderr
        rows = list(csv.DictReader(open(out)))
        assert [(r["file"], int(r["rank"]), r["class_name"]) for r in rows] == [
            (r["file"], t["rank"], t["class_name"]) for r in results for t in r["topk"]]


@pytest.mark.parametrize("flags, expected", [
    (["--topk", "0"], "--topk 0 is not a positive whole number"),
    (["--topk", "x"], "--topk x is not a positive whole number"),
    (["--topk", "5"], "--topk 5 is more than the model's 4 classes"),
    (["--output", "{tmp}/nope/r.json"], "the output's folder does not exist or is not writable"),
    (["--output", "{tmp}", "--output_format", "json"], "the output is a folder"),
    (["--output", "{tmp}/r.txt"], "output format 'txt' is not json or csv"),
    (["--files_from", "{tmp}/missing.txt"], "list of images not found"),
])
def test_bad_infer_output_flags_are_one_line(tmp_path, photos, cli, flags, expected):
    ckpt = saved_checkpoint(tmp_path / "m-1_2.ckpt", "mobilenet_v1_025", num_classes=4)
    flags = [f.format(tmp=tmp_path) for f in flags]
    result = cli("infer.py", "--model", ckpt, *flags, *photos)
    lines = result.error_lines()
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], lines
    assert not [n for n in os.listdir(tmp_path) if n.startswith(("r.", ".r."))]


def test_fixed_batch_and_non_square_exports_infer_any_number_of_images(tmp_path, photos, cli):
    """A fixed-batch ONNX export (batch 3) gives 8 images in chunks of 3, the last padded, with
    the open-batch export's logits; a 64x32 export is fed 64 wide and 32 high."""
    net = randomize_weights(create_network("mobilenet_v1_025", num_classes=4,
                                           conv_impl="mindspore"))
    ckpt = saved_checkpoint(tmp_path / "m-1_2.ckpt", "mobilenet_v1_025", num_classes=4, net=net)
    for name, flags in (("open", []), ("fixed", ["--dynamic_batch", "False", "--batch_size", 3]),
                        ("wide", ["--width", 64, "--height", 32])):
        result = cli("export.py", "--checkpoint_path", ckpt, "--file_format", "ONNX",
                     "--file_name", tmp_path / name, *flags)
        assert result.returncode == 0, result.stderr
    config = get_config([])
    eight = (photos * 2)[:8]
    logits = {}
    for name in ("open", "fixed"):
        predictor = Predictor(str(tmp_path / f"{name}.onnx"), config)
        logits[name] = predictor.logits(preprocess(eight, "cifar10", predictor.size))
    assert Predictor(str(tmp_path / "fixed.onnx"), config).fixed_batch == 3
    assert logits["fixed"].shape == (8, 4)
    assert np.abs(logits["fixed"] - logits["open"]).max() <= 1e-5
    wide = Predictor(str(tmp_path / "wide.onnx"), config)
    assert wide.size == (32, 64)
    batch = preprocess(eight, "cifar10", wide.size)
    assert batch.shape == (8, 3, 32, 64) and wide.logits(batch).shape == (8, 4)
    # infer.py end to end on the fixed-batch file
    result = cli("infer.py", "--model", tmp_path / "fixed.onnx", *eight)
    assert result.returncode == 0 and result.stdout.count(": ") >= 8, result.stderr
