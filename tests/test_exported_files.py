"""Exported files are checked against their own graph before they run: without the sidecar
(FILE.json) they run at the size, batch and classes the graph declares, and a flag or a sidecar
that contradicts the graph is one line and exit 2 in infer.py, eval.py and benchmark.py alike.
eval.py --model scores an exported file with a checkpoint's result line."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from src.deploy.exporter import export
from tests.helpers import RESULT, randomize_weights, saved_checkpoint, write_cifar_folder

NET, CLASSES, SIDE = "mobilenet_v1_025", 4, 64  # exported at 64, the yaml's image_size is 32


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{name: path} of a checkpoint, its exports (ONNX and MINDIR, open batch and batch 2) and
    each export again without its sidecar; "data": a CIFAR-10 folder of 4 classes."""
    from src.models import create_network
    root = tmp_path_factory.mktemp("exported")
    net = randomize_weights(create_network(NET, num_classes=CLASSES, conv_impl="mindspore"))
    found = {"ckpt": saved_checkpoint(root / "m-1_2.ckpt", NET, num_classes=CLASSES, net=net),
             "data": write_cifar_folder(str(root / "cifar"), train_count=8, test_count=12)}
    for fmt in ("ONNX", "MINDIR"):
        for batch, flags in (("open", []), ("fixed", ["--dynamic_batch", "False",
                                                      "--batch_size", "2"])):
            name = f"{fmt.lower()}_{batch}"
            path = export(["--checkpoint_path", found["ckpt"], "--file_format", fmt,
                           "--width", str(SIDE), "--file_name", str(root / name), *flags])
            bare = str(root / f"bare_{name}{os.path.splitext(path)[1]}")
            shutil.copyfile(path, bare)  # no .json beside it
            found[name], found[f"bare_{name}"] = path, bare
    # a sidecar that belongs to another export (a 32-pixel one) beside a 64-pixel file
    other = export(["--checkpoint_path", found["ckpt"], "--file_format", "ONNX",
                    "--file_name", str(root / "other")])
    found["wrong_sidecar"] = str(root / "wrong_sidecar.onnx")
    shutil.copyfile(found["onnx_open"], found["wrong_sidecar"])
    shutil.copyfile(other + ".json", found["wrong_sidecar"] + ".json")
    # the sidecar of another network of the same input and classes beside each format's file
    for fmt in ("onnx", "mindir"):
        path = found[f"{fmt}_open"]
        with open(path + ".json") as f:
            sidecar = {**json.load(f), "network": "shufflenet_v2_x0_5"}
        found[f"other_network_{fmt}"] = str(root / f"other_network{os.path.splitext(path)[1]}")
        shutil.copyfile(path, found[f"other_network_{fmt}"])
        with open(found[f"other_network_{fmt}"] + ".json", "w") as f:
            json.dump(sidecar, f)
    return found


def image(files):
    folder = os.path.join(os.path.dirname(files["ckpt"]), "images")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "a.png")
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(path)
    return path


CASES = {  # id: (entry point, file, flags, what the line says)
    "infer onnx no sidecar --image_size": ("infer.py", "bare_onnx_open", ["--image_size", "32"],
                                           "contradicts the exported model's input of 64x64"),
    "infer mindir no sidecar --image_size": ("infer.py", "bare_mindir_open",
                                             ["--image_size", "128"], "input of 64x64"),
    "infer onnx no sidecar --batch_size": ("infer.py", "bare_onnx_fixed", ["--batch_size", "3"],
                                           "contradicts the exported model's fixed batch of 2"),
    "infer mindir --batch_size": ("infer.py", "mindir_fixed", ["--batch_size", "5"],
                                  "fixed batch of 2"),
    "infer onnx no sidecar --num_classes": ("infer.py", "bare_onnx_open", ["--num_classes", "7"],
                                            "--num_classes 7 contradicts"),
    "infer sidecar of another file": ("infer.py", "wrong_sidecar", [],
                                      "the metadata says input [None, 3, 32, 32]"),
    "infer onnx, sidecar of another network": (
        "infer.py", "other_network_onnx", [],
        "the metadata beside the file is for network shufflenet_v2_x0_5, the file's own record "
        "says mobilenet_v1_025"),
    "eval mindir, sidecar of another network": ("eval.py", "other_network_mindir", [],
                                                "own record says mobilenet_v1_025"),
    "eval onnx no sidecar --image_size": ("eval.py", "bare_onnx_open", ["--image_size", "32"],
                                          "input of 64x64"),
    "eval mindir no sidecar --eval_batch_size": ("eval.py", "bare_mindir_fixed",
                                                 ["--eval_batch_size", "4"], "fixed batch of 2"),
    "eval mindir --num_classes": ("eval.py", "mindir_open", ["--num_classes", "10"],
                                  "--num_classes 10 contradicts"),
    "eval a checkpoint as --model": ("eval.py", "ckpt", [], "a checkpoint given as --model"),
    "benchmark onnx no sidecar --image_size": ("benchmark.py", "bare_onnx_open",
                                               ["--mode", "infer", "--image_size", "224"],
                                               "input of 64x64"),
    "benchmark mindir no sidecar --batch_size": ("benchmark.py", "bare_mindir_fixed",
                                                 ["--mode", "infer", "--batch_size", "8"],
                                                 "fixed batch of 2"),
    "benchmark train mode": ("benchmark.py", "onnx_open", ["--mode", "train"],
                             "infer mode only"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_file_contradicted_is_one_line(files, cli, case):
    entry, name, flags, expected = CASES[case]
    args = {"infer.py": ["--model", files[name], *flags, image(files)],
            "eval.py": ["--model", files[name], "--dataset_path", files["data"], *flags],
            "benchmark.py": ["--network", NET, "--model", files[name], *flags]}[entry]
    result = cli(entry, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.error_lines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


@pytest.mark.parametrize("name", ["bare_onnx_open", "bare_onnx_fixed", "bare_mindir_open",
                                  "bare_mindir_fixed"])
def test_a_file_without_its_sidecar_runs_at_its_graphs_size(files, cli, name):
    """The yaml says 32 pixels and 10 classes; the file's graph 64 and 4: infer.py goes by the
    graph (it failed in the runtime before, a traceback)."""
    result = cli("infer.py", "--model", files[name], image(files), image(files), image(files))
    assert result.returncode == 0, result.stderr
    tops = [line for line in result.stdout.splitlines() if line.startswith(image(files))]
    assert len(tops) == 3 and all(len(line.split(", ")) == CLASSES for line in tops), tops


def test_eval_scores_an_exported_file_as_its_checkpoint(files, cli):
    """eval.py --model gives the checkpoint's result line (same top-1, loss within 1e-4) for
    the ONNX and the fixed-batch MINDIR, naming the network the file records in itself."""
    figures = {}
    for key, flags in (("ckpt", ["--checkpoint_path", files["ckpt"], "--image_size", str(SIDE)]),
                       ("onnx", ["--model", files["bare_onnx_open"]]),
                       ("mindir", ["--model", files["mindir_fixed"]])):
        result = cli("eval.py", "--dataset_path", files["data"], *flags)
        assert result.returncode == 0, result.stderr
        match = RESULT.search(result.stdout)
        assert match, result.stdout
        figures[key] = tuple(float(v) for v in match.groups()[:3])
        assert match.group(4) == NET  # the bare file's own record, not the yaml's network
    assert "model: '" in result.stdout
    for key in ("onnx", "mindir"):
        assert figures[key][1:] == figures["ckpt"][1:], figures
        assert abs(figures[key][0] - figures["ckpt"][0]) <= 1e-4, figures
