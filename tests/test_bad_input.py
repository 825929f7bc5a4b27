"""Every bad input, through the entry points' own ``main(argv)``: exit code 2, one
``error: <what> (<where>): <what to do>`` line, no traceback. One case per entry point also runs
as a real process, where MindSpore's own C++ logging could add lines. (The launch scripts' own
cases, rank tables included, are in test_scripts.py.)"""
import json
import os

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

from tests.helpers import (
    network_of,
    run_entry,
    saved_checkpoint,
    write_cifar_folder,
    write_image_folder,
)

NET = "shufflenet_v2_x0_5"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data sets and checkpoints, good and bad, that the cases below point at."""
    root = tmp_path_factory.mktemp("world")
    paths = {"cifar": write_cifar_folder(str(root / "cifar"), train_count=32, test_count=8)}
    (root / "run" / "ckpt_0").mkdir(parents=True)
    good = root / "run" / "ckpt_0" / f"{NET}-1_2.ckpt"
    paths["ckpt"] = saved_checkpoint(good, NET, num_classes=4)
    (root / "truncated.ckpt").write_bytes(good.read_bytes()[:5000])
    (root / "garbage.ckpt").write_bytes(os.urandom(20_000))
    (root / "empty").mkdir()
    (root / "flat" / "train").mkdir(parents=True)
    (root / "flat" / "train" / "a.jpg").write_bytes(b"x")
    bad_cifar = root / "badcifar"
    bad_cifar.mkdir()
    (bad_cifar / "data_batch_1.bin").write_bytes(b"\0" * 3073 * 3 + b"\1" * 100)
    (bad_cifar / "test_batch.bin").write_bytes(b"\0" * 3073)
    images = write_image_folder(str(root / "images"), per_class=4, classes=2)
    for i, name in enumerate(sorted(os.listdir(os.path.join(images, "train", "class_0")))[:2]):
        path = os.path.join(images, "train", "class_0", name)
        with open(path, "rb") as f:
            whole = f.read()
        with open(path, "wb") as f:  # one cut short, one not an image at all
            f.write(whole[:len(whole) // 2] if i == 0 else b"<html>404</html>")
    paths["images"] = images
    (root / "a_file").write_text("x")
    # labels outside the network: CIFAR records labelled 200, a 2-class checkpoint
    bad_labels = write_cifar_folder(str(root / "badlabels"), train_count=32, test_count=8)
    records = np.fromfile(os.path.join(bad_labels, "data_batch_2.bin"), np.uint8).reshape(-1, 3073)
    records[::5, 0] = 200
    records.tofile(os.path.join(bad_labels, "data_batch_2.bin"))
    paths["badlabels"] = bad_labels
    paths["ckpt_2_classes"] = saved_checkpoint(root / "two-1_2.ckpt", NET, num_classes=2)
    # train and val with other class folders; a checkpoint that records its class names
    pets = write_image_folder(str(root / "pets"), per_class=2, classes=2, size=32)
    for split, names in (("train", ("cat", "dog")), ("val", ("bird", "dog"))):
        for i, name in enumerate(names):
            os.rename(os.path.join(pets, split, f"class_{i}"), os.path.join(pets, split, name))
    paths["pets"] = pets
    paths["ckpt_pets"] = saved_checkpoint(root / "pets-1_2.ckpt", NET, num_classes=2,
                                          dataset="imagenet", image_size=32,
                                          class_names=json.dumps(["cat", "dog"]))
    # an image folder with one GIF named .jpg (MindSpore's decoder does not read GIF)
    gifs = write_image_folder(str(root / "gifs"), per_class=4, classes=2)
    first = sorted(os.listdir(os.path.join(gifs, "train", "class_0")))[0]
    Image.new("RGB", (40, 40)).save(os.path.join(gifs, "train", "class_0", first), format="GIF")
    paths["gifs"] = gifs
    # inference inputs: a Latin-1 labels file, a decompression bomb, an export with a corrupt
    # sidecar, an export fixed at 64 x 64
    (root / "labels.txt").write_bytes("chat\nchien\nb\xe9te\nfish\n".encode("latin-1"))
    Image.new("1", (20000, 10000)).save(root / "bomb.png")  # 200 million pixels, a tiny file
    (root / "exports").mkdir()
    paths["onnx_64"] = str(root / "exports" / "m64.onnx")
    paths["onnx_bad_json"] = str(root / "exports" / "bad.onnx")
    # non-finite weights
    net = network_of({"network": NET, "num_classes": 4}, conv_impl="mindspore")
    weight = net.first_conv[0].weight  # not the classifier, which --pretrained does not load
    weight.set_data(ms.Tensor(np.full(weight.shape, np.nan, np.float32)))
    paths["ckpt_nan"] = saved_checkpoint(root / "nan-1_2.ckpt", NET, num_classes=4, net=net)
    for name, text in (("yaml_list", b"batch_size: [16, 32]\n"),
                       ("yaml_latin1", "network: caf\xe9\n".encode("latin-1")),
                       ("yaml_twice", b"lr_max: 0.1\nlr_max: 0.2\n")):
        (root / f"{name}.yaml").write_bytes(text)
        paths[name] = str(root / f"{name}.yaml")
    paths["root"] = str(root)
    return paths


def train(world, *args):
    return ("train.py", "--network", NET, "--num_classes", "4", "--dataset_path", world["cifar"],
            "--epoch_size", "2", "--batch_size", "16", "--output_path",
            os.path.join(world["root"], "out"), *args)


CASES = {
    # data
    "data path missing": (lambda w: train(w, "--dataset_path", "/no/such/folder"),
                          "data path not found (/no/such/folder)"),
    "data path empty": (lambda w: train(w, "--dataset", "imagenet", "--dataset_path",
                                        os.path.join(w["root"], "empty")),
                        "no train/ folder in the data path"),
    "no class folders": (lambda w: train(w, "--dataset", "imagenet", "--dataset_path",
                                         os.path.join(w["root"], "flat")), "no class folders"),
    "cifar file not whole records": (
        lambda w: train(w, "--dataset_path", os.path.join(w["root"], "badcifar")),
        "is not a whole number of 3073-byte records"),
    "too many bad images": (
        lambda w: train(w, "--dataset", "imagenet", "--dataset_path", w["images"],
                        "--image_size", "32", "--batch_size", "2"),
        "2 of 8 files are not whole images"),
    "batch larger than the data": (lambda w: train(w, "--batch_size", "64"),
                                   "batch size 64 is larger than the 32 images"),
    "image folders given to a cifar10 config": (
        lambda w: train(w, "--dataset_path", w["images"]),
        "holds train/ and val/ (an image-folder data set), not CIFAR-10 binary files"),
    "cifar files given to an imagenet config": (
        lambda w: train(w, "--dataset", "imagenet"), "give --dataset cifar10"),
    "eval of image folders with a cifar10 config": (
        lambda w: ("eval.py", "--checkpoint_path", w["ckpt"], "--dataset_path", w["images"]),
        "give --dataset imagenet"),
    # labels the network has no class for, classes that differ between train and val
    "cifar labels past the classes": (
        lambda w: train(w, "--dataset_path", w["badlabels"]),
        "data_batch_2.bin): give --num_classes 201"),
    "more class folders than classes": (
        lambda w: train(w, "--dataset", "imagenet", "--dataset_path", w["images"],
                        "--num_classes", "1", "--image_size", "32"),
        "2 class folders for a network of 1 classes"),
    "checkpoint of fewer classes than the data": (
        lambda w: ("eval.py", "--checkpoint_path", w["ckpt_2_classes"], "--dataset_path",
                   w["cifar"]), "have a label of 2 or more (largest 3)"),
    "train and val with other classes": (
        lambda w: train(w, "--dataset", "imagenet", "--dataset_path", w["pets"], "--num_classes",
                        "2", "--image_size", "32", "--batch_size", "2", "--eval_interval", "1"),
        "class folders differ from the ones the network was trained on (only here: bird; only "
        "in training: cat)"),
    "eval folder with other classes than the checkpoint's": (
        lambda w: ("eval.py", "--checkpoint_path", w["ckpt_pets"], "--dataset_path", w["pets"]),
        "only here: bird; only in training: cat"),
    # non-finite weights, wherever a checkpoint is read
    "eval of NaN weights": (lambda w: ("eval.py", "--checkpoint_path", w["ckpt_nan"],
                                       "--dataset_path", w["cifar"]),
                            "checkpoint holds NaN or Inf weights ('first_conv.0.weight')"),
    "export of NaN weights": (lambda w: ("export.py", "--checkpoint_path", w["ckpt_nan"]),
                              "checkpoint holds NaN or Inf weights"),
    "infer with NaN weights": (lambda w: ("infer.py", "--model", w["ckpt_nan"], w["images"]),
                               "checkpoint holds NaN or Inf weights"),
    "pretrained NaN weights": (lambda w: train(w, "--pretrained", w["ckpt_nan"]),
                               "checkpoint holds NaN or Inf weights"),
    # checkpoints
    "no checkpoint given": (lambda w: ("eval.py", "--dataset_path", w["cifar"]),
                            "no checkpoint given"),
    "export checkpoint missing": (lambda w: ("export.py", "--checkpoint_path", "/no/such.ckpt"),
                                  "checkpoint not found"),
    "checkpoint missing": (lambda w: ("eval.py", "--checkpoint_path", "/no/such.ckpt",
                                      "--dataset_path", w["cifar"]), "checkpoint not found"),
    "checkpoint truncated": (
        lambda w: ("eval.py", "--checkpoint_path", os.path.join(w["root"], "truncated.ckpt"),
                   "--dataset_path", w["cifar"]), "checkpoint is truncated or not a MindSpore"),
    "checkpoint garbage": (
        lambda w: ("eval.py", "--checkpoint_path", os.path.join(w["root"], "garbage.ckpt"),
                   "--dataset_path", w["cifar"]), "checkpoint is truncated or not a MindSpore"),
    "checkpoint of another network": (
        lambda w: train(w, "--network", "mobilenet_v1_025", "--resume", w["ckpt"]),
        f"checkpoint is of {NET}, not mobilenet_v1_025"),
    "checkpoint of another num_classes": (
        lambda w: train(w, "--num_classes", "7", "--resume", w["ckpt"]),
        "trained for 4 classes, not 7: use --pretrained"),
    "pretrained checkpoint of another network": (
        lambda w: train(w, "--network", "mobilenet_v1_025", "--pretrained", w["ckpt"]),
        f"checkpoint is of {NET}, not mobilenet_v1_025"),
    "eval network contradicts checkpoint": (
        lambda w: ("eval.py", "--checkpoint_path", w["ckpt"], "--network", "mobilenet_v1_025",
                   "--dataset_path", w["cifar"]), "contradicts the checkpoint's"),
    # config
    "unknown key": (lambda w: train(w, "--bogus_key", "1"), "bogus_key"),
    "wrong type": (lambda w: train(w, "--batch_size", "many"), "batch_size"),
    "negative epochs": (lambda w: train(w, "--epoch_size", "-3"), "epoch_size"),
    "batch size 0": (lambda w: train(w, "--batch_size", "0"), "batch_size"),
    "negative lr": (lambda w: train(w, "--lr_max", "-0.1"), "lr_max"),
    "smoothing 1": (lambda w: ("eval.py", "--label_smooth_factor", "1.0"), "label_smooth_factor"),
    "NaN in a float key": (lambda w: train(w, "--momentum", "nan"),
                           "momentum must be a finite number"),
    "Inf loss scale": (lambda w: train(w, "--loss_scale", "inf"), "loss_scale must be a finite"),
    "seed past 32 bits": (lambda w: train(w, "--seed", "4294967296"), "seed = 4294967296"),
    "image size not a multiple of 32": (lambda w: train(w, "--image_size", "33"),
                                        "a multiple of 32"),
    "image size too large": (lambda w: train(w, "--image_size", "100000"),
                             "image_size = 100000 is out of range"),
    "eval batch 0": (lambda w: ("eval.py", "--checkpoint_path", w["ckpt"], "--dataset_path",
                                w["cifar"], "--eval_batch_size", "0"), "eval_batch_size = 0"),
    "yaml value a list": (lambda w: train(w, "--config_path", w["yaml_list"]),
                          "batch_size must be an integer, got [16, 32]"),
    "yaml not UTF-8": (lambda w: train(w, "--config_path", w["yaml_latin1"]),
                       "config is not UTF-8 text"),
    "yaml key twice": (lambda w: train(w, "--config_path", w["yaml_twice"]),
                       "key 'lr_max' is written twice"),
    # output, device, export
    "output folder not writable": (
        lambda w: train(w, "--output_path", os.path.join(w["root"], "a_file", "run")),
        "output folder is not writable"),
    "export folder not writable": (
        lambda w: ("export.py", "--checkpoint_path", w["ckpt"], "--file_name",
                   os.path.join(w["root"], "a_file", "net")), "output folder is not writable"),
    "device target not in this build": (
        lambda w: train(w, "--device_target", "Ascend"),
        "device Ascend is not usable: libmindspore_ascend.so.2: libge_runner.so: cannot open"),
    "export format not on this backend": (
        lambda w: ("export.py", "--checkpoint_path", w["ckpt"], "--file_format", "AIR"),
        "AIR export needs Ascend"),
    "a value that argparse reads as a flag": (lambda w: train(w, "--weight_decay", "-inf"),
                                              "give it a value (one that starts with '-' as "
                                              "--key=VALUE)"),
    "export boolean typo": (
        lambda w: ("export.py", "--checkpoint_path", w["ckpt"], "--dynamic_batch", "Ture"),
        "dynamic_batch must be True or False, got 'Ture'"),
    "export width 0": (lambda w: ("export.py", "--checkpoint_path", w["ckpt"], "--width", "0"),
                       "input side 0 is not a multiple of 32"),
    "export height not a multiple of 32": (
        lambda w: ("export.py", "--checkpoint_path", w["ckpt"], "--height", "100"),
        "input side 100 is not a multiple of 32"),
    "export format unknown": (
        lambda w: ("export.py", "--checkpoint_path", w["ckpt"], "--file_format", "TFLITE"),
        "TFLITE"),
    # benchmark
    "benchmark unknown network": (lambda w: ("benchmark.py", "--network", "resnet50"),
                                  "network 'resnet50' is not allowed"),
    "benchmark bad image size": (lambda w: ("benchmark.py", "--image_size", "100"),
                                 "image_size = 100 is out of range"),
    "benchmark unknown reference": (lambda w: ("benchmark.py", "--compare", "tensorflow"),
                                    "unknown reference 'tensorflow'"),
    "benchmark bad flag": (lambda w: ("benchmark.py", "--mode", "fly"), "invalid choice"),
    "benchmark sweep outside train": (
        lambda w: ("benchmark.py", "--mode", "infer", "--batch_size", "8,16"),
        "a sweep of batch sizes is timed in train mode only"),
    "benchmark batch not a number": (lambda w: ("benchmark.py", "--batch_size", "8,x"),
                                     "invalid batch_list value"),
    "benchmark batch zero": (lambda w: ("benchmark.py", "--batch_size", "8,0"),
                             "batch_size must be at least 1"),
    "benchmark mindcv per layer": (
        lambda w: ("benchmark.py", "--mode", "layer", "--compare", "mindcv"),
        "MindCV is not timed layer by layer"),
    "conv impl unknown": (lambda w: train(w, "--conv_impl", "turbo"), "turbo"),
    # recipes
    "ema decay of 1": (lambda w: train(w, "--ema", "True", "--ema_decay", "1"),
                       "ema_decay = 1.0 is out of range"),
    "accumulation across epochs": (
        lambda w: train(w, "--gradient_accumulation_steps", "3"),
        "an epoch of 2 steps is not a whole number of cycles of 3 accumulated batches"),
    "erasing area reversed": (lambda w: train(w, "--re_prob", "0.5", "--re_scale", "0.3,0.1"),
                              "re_scale = 0.3,0.1 is out of range"),
    # weight conversion (more in test_convert.py)
    "convert source missing": (lambda w: ("convert_weights.py", "--source", "megvii", "--network",
                                          NET, "/no/such.pth", "/tmp/out.ckpt"),
                               "source checkpoint not found"),
    "convert output not .ckpt": (
        lambda w: ("convert_weights.py", "--source", "megvii", "--network", NET, w["ckpt"],
                   os.path.join(w["root"], "out.bin")), "the output name does not end in .ckpt"),
    # inference
    "infer unknown flag after the images": (
        lambda w: ("infer.py", "--model", w["ckpt"], w["images"], "--bogus", "3"),
        "unrecognized arguments: --bogus"),
    "infer labels not UTF-8": (
        lambda w: ("infer.py", "--model", w["ckpt"], "--labels",
                   os.path.join(w["root"], "labels.txt"), w["images"] + "/val"),
        "label file is not UTF-8 text (byte 0xe9"),
    "infer decompression bomb": (
        lambda w: ("infer.py", "--model", w["ckpt"], os.path.join(w["root"], "bomb.png")),
        "image of more than 89,478,485 pixels"),
    "infer corrupt export sidecar": (
        lambda w: ("infer.py", "--model", exported(w, "onnx_bad_json", "{not json"),
                   w["images"] + "/val"), "the model's metadata is not valid JSON"),
    "infer image size contradicts the export": (
        lambda w: ("infer.py", "--model", exported(w, "onnx_64"), "--image_size", "32",
                   w["images"] + "/val"), "--image_size 32 contradicts the exported model's "
                                          "input of 64x64"),
    "train on a GIF named .jpg, no bad files allowed": (
        lambda w: train(w, "--dataset", "imagenet", "--dataset_path", w["gifs"], "--image_size",
                        "32", "--batch_size", "2", "--bad_image_limit", "0"),
        "1 of 8 files are not whole images MindSpore decodes (first: "),
    "infer model missing": (lambda w: ("infer.py", "--model", "/no/such.onnx", w["cifar"]),
                            "model file not found"),
    "infer not an image": (lambda w: ("infer.py", "--model", w["ckpt"],
                                      os.path.join(w["root"], "a_file")), "not a readable image"),
}


def exported(world, key, sidecar=None):
    """An ONNX export of the world's checkpoint at 64 x 64 (made once), with its sidecar replaced
    by ``sidecar`` when given."""
    import shutil

    from tests.helpers import ROOT
    path = world[key]
    if not os.path.exists(path):
        base = os.path.join(os.path.dirname(path), "base")
        if not os.path.exists(base + ".onnx"):
            proc = run_entry("export.py", "--checkpoint_path", world["ckpt"], "--file_format",
                             "ONNX", "--width", "64", "--file_name", base, cwd=ROOT)
            assert proc.returncode == 0, proc.stderr[-2000:]
        shutil.copy(base + ".onnx", path)
        shutil.copy(base + ".onnx.json", path + ".json")
    if sidecar is not None:
        with open(path + ".json", "w") as f:
            f.write(sidecar)
    return path


def assert_one_error_line(result, expected):
    lines = result.error_lines() if hasattr(result, "error_lines") else \
        [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout[-1500:] + result.stderr[-3000:]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_line_and_exit_2(world, cli, case):
    command, expected = CASES[case]
    assert_one_error_line(cli(*command(world)), expected)


# One case of each entry point as a real process: nothing but our line reaches stderr.
IN_A_PROCESS = ["data path missing", "checkpoint garbage", "export format not on this backend",
                "benchmark unknown network", "convert source missing", "infer model missing"]


@pytest.mark.slow
@pytest.mark.parametrize("case", IN_A_PROCESS)
def test_bad_input_in_a_real_process(world, case):
    command, expected = CASES[case]
    assert_one_error_line(run_entry(*command(world)), expected)


@pytest.mark.slow
def test_a_few_bad_images_are_skipped_with_a_count(world, cli):
    result = cli("train.py", "--network", "mobilenet_v1_025", "--dataset", "imagenet",
                 "--dataset_path", world["images"], "--image_size", "32", "--batch_size", "2",
                 "--num_classes", "2", "--epoch_size", "1", "--bad_image_limit", "0.3",
                 "--output_path", os.path.join(world["root"], "skip"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: skipping 2 of 8 files that are not whole images" in result.stdout
    assert "3 steps/epoch" in result.stdout  # the 6 whole images in batches of 2


def test_an_unwritable_eval_log_is_one_line_after_the_result(world, cli):
    """The result line is printed; appending it to eval_log.txt fails (here a folder of that
    name: root writes through permission bits) with one line instead of a traceback."""
    os.makedirs("eval_log.txt")  # cli's working folder
    result = cli("eval.py", "--checkpoint_path", world["ckpt"], "--dataset_path", world["cifar"])
    assert_one_error_line(result, "cannot write eval_log.txt (Is a directory)")
    assert result.stdout.count("result: {'Loss'") == 1
