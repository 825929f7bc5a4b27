"""The augmentations ``auto_augment`` and ``re_prob`` turn on: policy strings parsed as MindCV
and timm write them, images changed at the configured chance and magnitude, the same images under
the same seed, shapes and dtypes kept, and both in the training pipelines."""
import mindspore.dataset as ds
import numpy as np
import pytest

from src.augment import auto_augment_ops, erasing_ops, jittered_magnitudes, parse_auto_augment
from src.dataset import create_dataset
from src.model_utils.config import get_config
from tests.helpers import write_cifar_folder, write_image_folder


def through(ops, images, seed=7):
    """``images`` after ``ops`` in a MindSpore pipeline seeded with ``seed``."""
    ds.config.set_seed(seed)
    data = ds.NumpySlicesDataset({"image": images}, shuffle=False)
    data = data.map(operations=ops, input_columns="image", num_parallel_workers=1)
    return np.stack([row["image"] for row in data.create_dict_iterator(output_numpy=True)])


def photos(count=200, size=48, seed=0):
    """uint8 HWC images with structure (gradients and blocks), so geometric ops move pixels."""
    rng = np.random.RandomState(seed)
    ramp = np.linspace(0, 255, size)
    base = (ramp[None, :, None] * 0.5 + ramp[:, None, None] * 0.5).repeat(3, axis=2)
    images = base[None] + rng.randint(-40, 40, (count, 1, 1, 3)) + \
        rng.randint(0, 2, (count, size, size, 1)) * 30
    return np.clip(images, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("policy, name, options", [
    ("randaug-m9-mstd0.5-inc1", "randaug", {"m": 9, "mstd": 0.5, "inc": 1}),
    ("rand-m7-mstd0.5", "randaug", {"m": 7, "mstd": 0.5, "n": 2}),
    ("randaug-m10-n3-w0-mstd0.5-mmax10-inc0", "randaug", {"m": 10, "n": 3, "mmax": 10}),
    ("autoaug", "autoaug", {}), ("trivialaugwide", "trivialaugwide", {}),
])
def test_mindcvs_and_timms_policy_strings_parse(policy, name, options):
    got_name, got = parse_auto_augment(policy)
    assert got_name == name and all(got[k] == v for k, v in options.items())


@pytest.mark.parametrize("flag, message", [
    ("randaug-m9-x2", "auto_augment 'randaug-m9-x2': 'x2' is not an option of randaug"),
    ("randaug-m12", "m must lie in 0..mmax"),
    ("randaug-m9-w1", "weighted op choice (w) is not offered"),
    ("autoaug-mstd0.5", "autoaug takes no options here"),
    ("augmix", "auto_augment 'augmix': not a known policy"),
])
def test_a_policy_mindspore_cannot_run_is_one_line(cli, tmp_path, flag, message):
    result = cli("train.py", "--auto_augment", flag, "--dataset", "synthetic",
                 "--output_path", tmp_path / "out")
    assert result.returncode == 2 and len(result.error_lines()) == 1
    assert message in result.error_lines()[0]
    assert not (tmp_path / "out").exists()


def test_jittered_magnitudes_follow_the_normal():
    """std 0.5 around 9: about 68 % at 9 and 16 % on each side (10 takes the tail past it)."""
    draws = jittered_magnitudes(9, 0.5, 10)
    assert len(draws) == 20 and set(draws) == {8, 9, 10}
    assert draws.count(9) in (13, 14) and draws.count(8) in (3, 4) and draws.count(10) in (3, 4)
    assert jittered_magnitudes(9, 0, 10) == [9]


def test_randaugment_changes_images_more_at_a_larger_magnitude_and_repeats_under_a_seed():
    images = photos()
    strong = through(auto_augment_ops("randaug-m9-n2"), images)
    weak = through(auto_augment_ops("randaug-m1-n2"), images)
    assert strong.shape == images.shape and strong.dtype == np.uint8
    change = {name: np.abs(out.astype(float) - images).mean(axis=(1, 2, 3))
              for name, out in (("strong", strong), ("weak", weak))}
    assert (change["strong"] > 0).mean() > 0.9  # two ops on every image
    assert change["strong"].mean() > 1.5 * change["weak"].mean()
    assert np.array_equal(through(auto_augment_ops("randaug-m9-n2"), images), strong)
    assert not np.array_equal(through(auto_augment_ops("randaug-m9-n2"), images, seed=8),
                              strong)
    jittered = through(auto_augment_ops("randaug-m9-mstd0.5"), images)
    assert jittered.shape == images.shape and jittered.dtype == np.uint8


@pytest.mark.parametrize("policy", ["autoaug", "trivialaugwide"])
def test_the_other_policies_keep_shape_and_dtype(policy):
    images = photos(40)
    out = through(auto_augment_ops(policy), images)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert (np.abs(out.astype(float) - images).mean(axis=(1, 2, 3)) > 0).mean() > 0.3


def test_random_erasing_erases_at_its_chance_and_within_its_area():
    config = get_config(["--re_prob", "0.5", "--re_scale", "0.05,0.2"])
    rng = np.random.RandomState(1)
    images = (rng.rand(400, 3, 32, 32) + 0.5).astype(np.float32)  # no zeros
    out = through(erasing_ops(config), images)
    assert out.shape == images.shape and out.dtype == np.float32
    erased = (out == 0).all(axis=1).mean(axis=(1, 2))  # the fraction of each image set to 0
    hit = erased > 0
    assert abs(hit.mean() - 0.5) < 0.1  # 400 draws: 4 standard deviations
    assert erased[hit].min() >= 0.04 and erased[hit].max() <= 0.21
    assert np.array_equal(out[~hit], images[~hit])
    assert np.array_equal(through(erasing_ops(config), images), out)
    noise = through(erasing_ops(get_config(["--re_prob", "1", "--re_value", "random"])),
                    images[:20])
    assert (noise != images[:20]).any(axis=1).mean() > 0.02 and not (noise == 0).all(axis=1).any()


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_the_training_pipelines_take_both(tmp_path, dataset):
    if dataset == "cifar10":
        write_cifar_folder(tmp_path, train_count=16, test_count=8)
        size = 32
    else:
        write_image_folder(tmp_path, per_class=6, classes=2, size=48)
        size = 32
    argv = ["--dataset", dataset, "--dataset_path", tmp_path, "--image_size", size,
            "--num_classes", 4, "--batch_size", 4, "--auto_augment", "randaug-m9-mstd0.5-inc1",
            "--re_prob", "1.0"]
    config = get_config([str(a) for a in argv])
    batch = next(create_dataset(config, training=True).create_dict_iterator(output_numpy=True))
    assert batch["image"].shape == (4, 3, size, size) and batch["image"].dtype == np.float32
    assert (batch["image"] == 0).all(axis=1).any()  # every image had a rectangle erased
    plain = get_config([str(a) for a in argv[:-4]])
    evaluated = next(create_dataset(config, training=False).create_dict_iterator(
        output_numpy=True))["image"]
    reference = next(create_dataset(plain, training=False).create_dict_iterator(
        output_numpy=True))["image"]
    assert np.array_equal(evaluated, reference)  # eval reads the images untouched


def mixer(argv, seed=3):
    from src.augment import BatchMixer
    return BatchMixer(get_config(["--num_classes", "4", *argv]), seed)


def beta_cdf(x, alpha, points=20000):
    """The CDF of Beta(alpha, alpha) by integrating its density (a midpoint sum)."""
    from math import gamma
    grid = (np.arange(points) + 0.5) / points
    density = grid ** (alpha - 1) * (1 - grid) ** (alpha - 1) * gamma(2 * alpha) / gamma(alpha) ** 2
    cdf = np.cumsum(density) / points
    return np.interp(x, grid, cdf / cdf[-1])


@pytest.mark.parametrize("kind, alpha", [("mixup", 0.4), ("cutmix", 1.0)])
def test_the_mixing_factor_follows_its_beta(kind, alpha):
    """Over 3,000 draws the mixup factor passes a Kolmogorov-Smirnov test against
    Beta(alpha, alpha); CutMix's factor is 1 - its clipped box's share of the image."""
    mix = mixer([f"--{kind}", str(alpha)])
    draws = [mix.draw(32, 32) for _ in range(3000)]
    assert {d[0] for d in draws} == {kind}
    lams = np.sort([d[1] for d in draws])
    if kind == "mixup":
        ks = np.abs(beta_cdf(lams, alpha) - np.arange(1, len(lams) + 1) / len(lams)).max()
        assert ks < 1.63 / np.sqrt(len(lams))  # the 1 % critical value
    for _, lam, box in draws[:200] if kind == "cutmix" else []:
        y1, y2, x1, x2 = box
        assert 0 <= y1 <= y2 <= 32 and 0 <= x1 <= x2 <= 32
        assert lam == pytest.approx(1 - (y2 - y1) * (x2 - x1) / 1024)


def test_mixed_batches_and_targets_are_the_stated_formula():
    rng = np.random.RandomState(0)
    images = [rng.rand(3, 16, 16).astype(np.float32) for _ in range(6)]
    labels = [np.int32(i % 4) for i in range(6)]
    smooth = ["--label_smooth_factor", "0.3"]
    for argv in (["--mixup", "0.5"], ["--cutmix", "1.0"]):
        mix = mixer(argv + smooth)
        out, targets = mix(images, labels)
        kind, lam, box = mix.last
        out, targets = np.stack(out), np.stack(targets)
        stacked = np.stack(images)
        rows = np.full((6, 4), 0.1, np.float32)  # 0.3 / (4 - 1) off the class, 0.7 on it
        rows[np.arange(6), [i % 4 for i in range(6)]] = 0.7
        assert np.allclose(targets, lam * rows + (1 - lam) * rows[::-1], atol=1e-6)
        assert np.allclose(targets.sum(axis=1), 1.0, atol=1e-6)
        if kind == "mixup":
            assert np.allclose(out, lam * stacked + (1 - lam) * stacked[::-1], atol=1e-6)
        else:
            y1, y2, x1, x2 = box
            inside = np.zeros((16, 16), bool)
            inside[y1:y2, x1:x2] = True
            assert np.array_equal(out[:, :, inside], stacked[::-1][:, :, inside])
            assert np.array_equal(out[:, :, ~inside], stacked[:, :, ~inside])
    never = mixer(["--mixup", "0.5", "--cutmix_prob", "0"])
    assert all(never.draw(16, 16) == ("none", 1.0, None) for _ in range(50))
    both = mixer(["--mixup", "0.5", "--cutmix", "1.0", "--mixup_switch_prob", "0.25"])
    kinds = [both.draw(16, 16)[0] for _ in range(2000)]
    assert abs(kinds.count("cutmix") / 2000 - 0.25) < 0.04


def test_training_batches_are_mixed_and_eval_batches_are_not(tmp_path):
    write_cifar_folder(tmp_path, train_count=16, test_count=8)
    config = get_config(["--dataset_path", str(tmp_path), "--num_classes", "4", "--batch_size",
                         "8", "--mixup", "0.4", "--cutmix", "1.0"])
    train = next(create_dataset(config, training=True).create_dict_iterator(output_numpy=True))
    assert train["label"].shape == (8, 4) and train["label"].dtype == np.float32
    assert np.allclose(train["label"].sum(axis=1), 1.0, atol=1e-6)
    test = next(create_dataset(config, training=False).create_dict_iterator(output_numpy=True))
    assert test["label"].shape == (8,) and test["label"].dtype == np.int32
    calibration = next(create_dataset(config, training=True, augment=False)
                       .create_dict_iterator(output_numpy=True))
    assert calibration["label"].shape == (8,)


def test_mixing_needs_two_classes(cli, tmp_path):
    result = cli("train.py", "--dataset", "synthetic", "--num_classes", "1", "--mixup", "0.2",
                 "--output_path", tmp_path / "out")
    assert result.returncode == 2 and result.error_lines() == [
        "error: mixup and CutMix mix the targets of two classes; the network has 1 (--mixup): "
        "give --num_classes 2 or more, or --mixup 0 --cutmix 0"]
