"""Fine-tuning: freezing (no update, no weight decay, BatchNorm statistics kept), the head's own
learning rate, and a validation split held out of one folder of class folders, through
train.py and eval.py."""
import hashlib
import os
import shutil

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.dataset import create_dataset, held_out
from src.model_utils.config import get_config
from src.models import create_network
from src.training.optim import create_optimizer
from tests.helpers import randomize_weights, saved_checkpoint, write_image_folder

LEARNABLE = ("classifier.",)


def values(net) -> dict:
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


def train_steps(net, config_args, steps=3, lr=0.05):
    """``steps`` optimizer steps of ``net`` in training mode on fixed batches, with the
    optimizer a config of ``config_args`` makes (PyNative)."""
    config = get_config(["--weight_decay", "0.01", *config_args])
    opt = create_optimizer(config, net, np.full(steps, lr, np.float32))
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(
        sparse=True, reduction="mean")), opt)
    step.set_train()
    rng = np.random.RandomState(0)
    for _ in range(steps):
        step(ms.Tensor(rng.rand(4, 3, 32, 32).astype(np.float32)),
             ms.Tensor(rng.randint(0, 5, 4).astype(np.int32)))


@pytest.mark.parametrize("name, spec", [("shufflenet_v2_x0_5", "backbone"),
                                        ("mobilenet_v1_025", "stages:3"),
                                        ("shufflenet_v1_g3_05", "stages:5")])
def test_frozen_parameters_and_statistics_stay_bit_identical(name, spec):
    """Frozen weights and BatchNorm statistics do not move (weight decay would move them, the
    training BatchNorm would update the statistics: both are off), the rest trains."""
    net = randomize_weights(create_network(name, num_classes=5))
    frozen = set(net.freeze(spec))
    before = values(net)
    train_steps(net, ["--opt", "momentum"])
    after = values(net)
    assert frozen and all(np.array_equal(before[n], after[n]) for n in frozen)
    assert any(n.endswith("moving_mean") for n in frozen)
    moved = {n for n in after if not np.array_equal(before[n], after[n])}
    assert moved and not moved & frozen
    assert any(n.startswith("classifier.") for n in moved)
    if spec == "stages:3":  # the later stages train, their statistics too
        assert any(n.startswith("features.14.") and n.endswith("moving_mean") for n in moved)
        assert not any(n.startswith(("features.0.", "features.7.")) for n in moved)
    if spec == "backbone":
        assert moved == {n for n in after if n.startswith(LEARNABLE)}


@pytest.mark.parametrize("opt", ["momentum", "adamw", "rmsprop"])
def test_head_lr_scale_scales_the_heads_step_alone(opt):
    """One step from the same weights with head_lr_scale 1 and 10: the classifier moves 10x
    as far, every other parameter the same."""
    start = values(randomize_weights(create_network("mobilenet_v1_025", num_classes=5)))
    deltas = []
    for scale in ("1", "10"):
        net = create_network("mobilenet_v1_025", num_classes=5)
        ms.load_param_into_net(net, {n: ms.Parameter(v, name=n) for n, v in start.items()})
        train_steps(net, ["--opt", opt, "--head_lr_scale", scale], steps=1, lr=0.001)
        deltas.append({n: v - start[n] for n, v in values(net).items()})
    for name, small in deltas[0].items():
        if name.startswith("classifier."):
            assert np.abs(small).max() > 0
            # float32 rounding of the weights themselves: a few units in their last place
            ulp = 4 * np.finfo(np.float32).eps * np.abs(start[name]).max()
            np.testing.assert_allclose(deltas[1][name], 10 * small, rtol=1e-3, atol=10 * ulp)
        else:
            assert np.array_equal(deltas[1][name], small), name


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """One folder of 3 class folders (16 images each), no train/ or val/."""
    root = tmp_path_factory.mktemp("photos")
    write_image_folder(str(root), per_class=16, classes=3, size=40)
    return str(root / "train")


def split_files(folder, fraction, training, rank=0, size=1):
    """(pixels' hash, label) of each image ``rank`` of ``size`` reads of one split."""
    config = get_config(["--dataset", "imagenet", "--dataset_path", folder, "--val_fraction",
                         str(fraction), "--num_classes", "3", "--image_size", "32"])
    data = create_dataset(config, training=training, rank_id=rank, rank_size=size, batch_size=1,
                          augment=False)
    return sorted((hashlib.sha256(image.tobytes()).hexdigest(), int(label[0]))
                  for image, label in data.create_tuple_iterator(output_numpy=True))


def test_the_held_out_files_are_a_stable_partition_of_every_class(photos):
    val = held_out(photos, 0.25)
    assert held_out(photos, 0.25) == val  # a function of the names
    for name in sorted(os.listdir(photos)):
        files = set(os.listdir(os.path.join(photos, name)))
        mine = {os.path.basename(p) for p in val if os.path.dirname(p).endswith(name)}
        assert len(mine) == 4 and mine < files  # 0.25 of 16, of each class
    train, held = split_files(photos, 0.25, True), split_files(photos, 0.25, False)
    everything = split_files(photos, 0.5, True) + split_files(photos, 0.5, False)
    assert len(held) == 12 and len(train) == 36
    assert sorted(train + held) == sorted(everything) and not set(train) & set(held)
    ranks = [split_files(photos, 0.25, True, rank, 2) for rank in range(2)]
    assert sorted(ranks[0] + ranks[1]) == train  # each rank its part of the same split


@pytest.mark.slow
def test_a_frozen_fine_tune_on_one_folder_then_eval_of_its_held_out_files(photos, cli,
                                                                         tmp_path):
    """train.py --val_fraction 0.25 --freeze backbone --head_lr_scale 10 on one folder, from
    a checkpoint of 5 classes: graph mode keeps every frozen parameter and statistic as
    loaded; the checkpoint records the split, eval.py scores those 12 files; a resume with
    another fraction, or eval of a changed folder, is one line."""
    from src.checkpoint import read_checkpoint
    start = saved_checkpoint(tmp_path / "start.ckpt", "shufflenet_v2_x0_5", num_classes=5)
    loaded = {n: p.asnumpy() for n, p in read_checkpoint(start)[0].items()}
    run = tmp_path / "run"
    args = ["--network", "shufflenet_v2_x0_5", "--dataset", "imagenet", "--dataset_path",
            photos, "--num_classes", "3", "--image_size", "32", "--batch_size", "8",
            "--epoch_size", "1", "--val_fraction", "0.25", "--output_path", run]
    result = cli("train.py", *args, "--pretrained", start, "--freeze", "backbone",
                 "--head_lr_scale", "10")
    assert result.returncode == 0, result.stderr
    assert "freeze backbone: " in result.stdout and "4 steps/epoch" in result.stdout  # 36 / 8
    ckpt = str(run / "ckpt_0" / "shufflenet_v2_x0_5-1_4.ckpt")
    params, meta = read_checkpoint(ckpt)
    assert meta["val_fraction"] == "0.25" and meta["val_split"].startswith("12:")
    for name, value in params.items():
        if name in loaded and not name.startswith("classifier."):
            assert np.array_equal(value.asnumpy(), loaded[name]), name
    assert params["classifier.weight"].shape == (3, 1024)
    result = cli("eval.py", "--checkpoint_path", ckpt, "--dataset_path", photos)
    assert result.returncode == 0, result.stderr
    assert f"eval: the 12 files the run held out (0.25 of each class folder) of {photos}" \
        in result.stdout
    result = cli("train.py", *args[:-4], "--val_fraction", "0.5", "--epoch_size", "2",
                 "--resume", "auto", "--output_path", run)
    assert result.returncode == 2 and "the run held out other validation files" in \
        result.error_lines()[0]
    changed = shutil.copytree(photos, tmp_path / "changed")
    os.remove(sorted(held_out(str(changed), 0.25))[0])  # one of the held-out files gone
    result = cli("eval.py", "--checkpoint_path", ckpt, "--dataset_path", changed)
    assert result.returncode == 2 and "are not the ones the run held out" in \
        result.error_lines()[0]
