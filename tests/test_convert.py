"""Pretrained weights: PyTorch checkpoints of megvii, torchvision and timm converted and giving the
same logits; MindCV checkpoints read as they are; bad source files refused, nothing written."""
import os

import mindspore as ms
import numpy as np
import pytest

from src.checkpoint import load_weights, read_checkpoint
from src.dataset import INPUT_NORMS
from src.models import create_network
from src.models.shufflenet_v1 import megvii_shuffle_permutation
from src.weights.convert import convert_command
from tests.helpers import RESULT, network_of, write_image_folder

torch = pytest.importorskip("torch", reason="torch==2.13.0 is in requirements-test.txt")
from reference import torch_models as ref  # noqa: E402  (needs torch)

CASES = {
    "megvii_v1_g3_10": ("megvii", "shufflenet_v1_g3_10", lambda: ref.MegviiShuffleNetV1(3, 1.0)),
    "megvii_v1_g8_05": ("megvii", "shufflenet_v1_g8_05", lambda: ref.MegviiShuffleNetV1(8, 0.5)),
    "megvii_v2_x1_0": ("megvii", "shufflenet_v2_x1_0", lambda: ref.MegviiShuffleNetV2("1_0")),
    "torchvision_v2_x1_0": ("torchvision", "shufflenet_v2_x1_0",
                            lambda: ref.TorchvisionShuffleNetV2("1_0")),
    "torchvision_v2_x0_5": ("torchvision", "shufflenet_v2_x0_5",
                            lambda: ref.TorchvisionShuffleNetV2("0_5")),
    "timm_mobilenet_v1_100": ("timm", "mobilenet_v1_100", lambda: ref.TimmMobileNetV1()),
}


def save_source(model, source, path):
    """The state_dict as the source publishes it: megvii under 'state_dict' with 'module.'."""
    state = model.state_dict()
    if source == "megvii":
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(state, path)


@pytest.mark.parametrize("case", list(CASES))
def test_converted_weights_give_the_sources_logits(case, tmp_path):
    source, network, build = CASES[case]
    theirs = ref.randomize(build(), seed=len(case))
    x = np.random.RandomState(1).randn(2, 3, 224, 224).astype(np.float32)
    got, meta = converted_logits(source, network, theirs, tmp_path, x)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 1000) and 0.01 < np.abs(expected).max() < 100  # a fair scale
    assert np.abs(got - expected).max() <= 1e-4, (np.abs(got - expected).max(),
                                                   np.abs(expected).max())
    assert meta["input_norm"] == {"megvii": "megvii_bgr", "torchvision": "imagenet",
                                  "timm": "inception"}[source]


def converted_logits(source, network, theirs, tmp_path, x):
    save_source(theirs, source, tmp_path / "source.pth")
    out = str(tmp_path / "converted.ckpt")
    convert_command(["--source", source, "--network", network, str(tmp_path / "source.pth"), out])
    params, meta = read_checkpoint(out)
    ours = network_of(meta)
    load_weights(ours, params, out)
    ours.set_train(False)
    return ours(ms.Tensor(x)).asnumpy(), meta


def test_megvii_v1_needs_the_permutation(tmp_path, monkeypatch):
    """Without moving megvii's shuffle before the depthwise conv, its logits are not reproduced."""
    import dataclasses

    from src.models import shufflenet_v1
    family = shufflenet_v1.FAMILY
    unfixed = dataclasses.replace(family.sources["megvii"], fixup=None)
    monkeypatch.setitem(family.sources, "megvii", unfixed)
    theirs = ref.randomize(ref.MegviiShuffleNetV1(3, 0.5), seed=5)
    x = np.random.RandomState(1).randn(1, 3, 224, 224).astype(np.float32)
    got, _ = converted_logits("megvii", "shufflenet_v1_g3_05", theirs, tmp_path, x)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() > 1e-2
    assert sorted(megvii_shuffle_permutation(12, 3)) == list(range(12))


def test_mindcv_checkpoint_is_identified_and_evaluated(tmp_path, cli):
    """A checkpoint with MindCV's parameter names and no metadata (as MindCV writes them; MindCV
    0.3.0 itself when importable) evaluates with just --checkpoint_path and --dataset_path."""
    try:
        import mindcv
        net = mindcv.create_model("shufflenet_v2_x0_5", num_classes=3)
    except ImportError:
        net = create_network("shufflenet_v2_x0_5", num_classes=3, pool_pad="same")
    path = str(tmp_path / "shufflenet_v2_x0_5-mindcv.ckpt")
    ms.save_checkpoint(net, path)
    params, meta = read_checkpoint(path)
    assert meta["network"] == "shufflenet_v2_x0_5" and meta["num_classes"] == 3
    # Only what the shapes prove: the network, its classes and MindCV's layout, not the pixels
    # (those are the flags' and the yaml's).
    assert meta["pool_pad"] == "same" and "image_size" not in meta and "dataset" not in meta

    data = write_image_folder(str(tmp_path / "images"), per_class=2, classes=3, size=64)
    proc = cli("eval.py", "--checkpoint_path", path, "--dataset_path", data,
               "--dataset", "imagenet", "--image_size", "64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "its shapes are MindCV's shufflenet_v2_x0_5 with 3 classes" in proc.stdout
    assert RESULT.search(proc.stdout)


def test_mindcv_split_group_convs_are_merged(tmp_path):
    """MindCV after PR #763 writes a grouped 1x1 conv as one weight per group (convs.k)."""
    from src.models.layers import Conv1x1
    net = create_network("shufflenet_v1_g3_05", num_classes=5, pool_pad="same",
                         shuffle_order="megvii")
    grouped = {f"{name}.weight" for name, cell in net.cells_and_names()
               if isinstance(cell, Conv1x1) and cell.group > 1}
    assert grouped
    items = []
    for p in net.get_parameters():
        if p.name in grouped:
            for k, part in enumerate(np.split(p.asnumpy(), 3)):
                items.append({"name": f"{p.name[:-len('.weight')]}.convs.{k}.weight",
                              "data": ms.Tensor(part)})
        else:
            items.append({"name": p.name, "data": p.data})
    path = str(tmp_path / "split.ckpt")
    ms.save_checkpoint(items, path)
    params, meta = read_checkpoint(path)
    assert meta["network"] == "shufflenet_v1_g3_05" and meta["shuffle_order"] == "megvii"
    for p in net.get_parameters():
        assert np.array_equal(params[p.name].asnumpy(), p.asnumpy()), p.name


@pytest.mark.parametrize("case, expected", [
    ("garbage", "not a readable PyTorch checkpoint"),
    ("garbage_pickle_header", "not a readable PyTorch checkpoint"),  # torch warns, then fails
    ("other_network", "match nothing"),
    ("wrong_width", "tensors have other shapes than ours"),
    ("wrong_family", "timm publishes no shufflenet_v2 weights"),
])
def test_bad_source_checkpoints_are_refused_and_nothing_is_written(case, expected, tmp_path,
                                                                   cli):
    """In process (test_bad_input runs the converter's one real-process case)."""
    source_path, out = tmp_path / "source.pth", tmp_path / "out.ckpt"
    args = ["--source", "megvii", "--network", "shufflenet_v2_x1_0"]
    if case == "garbage":
        source_path.write_bytes(os.urandom(3000))
    elif case == "garbage_pickle_header":
        source_path.write_bytes(b"\x80\xae" + os.urandom(3000))
    elif case == "other_network":
        save_source(ref.MegviiShuffleNetV1(3, 0.5), "megvii", source_path)
        args = ["--source", "megvii", "--network", "shufflenet_v2_x0_5"]
    elif case == "wrong_width":
        save_source(ref.MegviiShuffleNetV2("0_5"), "megvii", source_path)
    else:
        save_source(ref.MegviiShuffleNetV2("1_0"), "megvii", source_path)
        args = ["--source", "timm", "--network", "shufflenet_v2_x1_0"]
    proc = cli("convert_weights.py", *args, source_path, out)
    lines = proc.error_lines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert not out.exists() and not list(tmp_path.glob(".partial-*"))


def test_eval_transforms_apply_each_input_norm():
    """megvii_bgr feeds BGR 0-255 unnormalised, inception (x - 127.5) / 127.5, on the same crop."""
    from src.dataset import eval_image_ops
    image = np.random.RandomState(0).randint(0, 256, (40, 40, 3)).astype(np.uint8)

    def run(norm):
        out = image
        for op in eval_image_ops("imagenet", 32, norm):
            out = op(out)
        return out

    crop = image
    for op in eval_image_ops("imagenet", 32)[:2]:  # the resize and the centre crop
        crop = op(crop)
    chw = crop.transpose(2, 0, 1).astype(np.float32)
    assert run("megvii_bgr").dtype == np.float32
    assert np.allclose(run("megvii_bgr"), chw[::-1])
    assert np.allclose(run("inception"), (chw - 127.5) / 127.5, atol=1e-6)
    mean, std, _ = INPUT_NORMS["imagenet"]
    assert np.allclose(run("imagenet"), (chw - np.array(mean)[:, None, None]) /
                       np.array(std)[:, None, None], atol=1e-5)


@pytest.mark.slow
def test_infer_and_eval_feed_a_megvii_conversion_bgr_pixels(tmp_path, cli):
    """infer.py on a converted megvii checkpoint prints the PyTorch network's own top-5 for an
    image given as megvii feeds it (BGR 0-255 after our resize and crop); eval.py runs on it."""
    from PIL import Image

    from src.dataset import eval_image_ops
    theirs = ref.randomize(ref.MegviiShuffleNetV2("0_5"), seed=3)
    save_source(theirs, "megvii", tmp_path / "source.pth")
    ckpt = tmp_path / "megvii.ckpt"
    proc = cli("convert_weights.py", "--source", "megvii", "--network",
               "shufflenet_v2_x0_5", tmp_path / "source.pth", ckpt)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "input_norm megvii_bgr" in proc.stdout

    image = np.random.RandomState(2).randint(0, 256, (256, 256, 3)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    crop = image
    for op in eval_image_ops("imagenet", 224)[:2]:
        crop = op(crop)
    bgr = crop[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)[None].copy()
    with torch.no_grad():
        probs = torch.softmax(theirs(torch.from_numpy(bgr)), 1)[0].numpy()
    top = probs.argsort()[::-1][:5]
    proc = cli("infer.py", "--model", ckpt, tmp_path / "photo.png")
    assert proc.returncode == 0, proc.stderr[-3000:]
    photo = str(tmp_path / "photo.png")
    line = next(out for out in proc.stdout.splitlines() if out.startswith(photo))
    assert line.split(": ", 1)[1] == ", ".join(f"{i} {probs[i]:.4f}" for i in top), line

    data = write_image_folder(str(tmp_path / "images"), per_class=1, classes=2, size=64)
    proc = cli("eval.py", "--checkpoint_path", ckpt, "--dataset_path", data,
               "--image_size", "64")
    assert proc.returncode == 0 and RESULT.search(proc.stdout), proc.stderr[-3000:]
