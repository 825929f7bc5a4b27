"""The seeds' recipes in configs/: each loads, holds its source's numbers, and builds."""
import numpy as np
import pytest

from src.lr_generator import get_lr
from src.model_utils.config import get_config
from src.models import create_network

# file: {key: the source's value} (as each source's README publishes it)
RECIPES = {
    "shufflenet_v1_g3_20_zoo_imagenet.yaml": dict(
        network="shufflenet_v1_g3_20", epoch_size=250, batch_size=128, lr_decay_mode="cosine",
        lr_init=0.0, lr_max=0.5, lr_end=0.0, warmup_epochs=4, label_smooth_factor=0.1,
        loss_scale=1024, weight_decay=4e-5, amp_level="O3", num_classes=1000),
    "shufflenet_v1_g3_05_mindcv.yaml": dict(
        network="shufflenet_v1_g3_05", epoch_size=250, batch_size=64, lr_max=0.35,
        lr_decay_mode="cosine", warmup_epochs=4, weight_decay=4e-5, label_smooth_factor=0.1),
    "mobilenet_v1_100_zoo_cifar10.yaml": dict(
        network="mobilenet_v1_100", dataset="cifar10", batch_size=32, epoch_size=90,
        lr_decay_mode="poly", lr_init=0.01, lr_max=0.1, warmup_epochs=5, weight_decay=1e-4,
        label_smooth_factor=0.0, num_classes=10),
    "mobilenet_v1_100_zoo_imagenet.yaml": dict(
        network="mobilenet_v1_100", batch_size=256, lr_decay_mode="linear", lr_max=0.8,
        warmup_epochs=0, label_smooth_factor=0.1, num_classes=1001, amp_level="O2"),
    "shufflenet_v2_x1_0_tf.yaml": dict(
        network="shufflenet_v2_x1_0", epoch_size=133, lr_max=0.0625, batch_size=128,
        warmup_epochs=5, weight_decay=4e-5, label_smooth_factor=0.1, momentum=0.9),
    "shufflenet_v2_x1_0_pytorch.yaml": dict(
        network="shufflenet_v2_x1_0", epoch_size=240, momentum=0.0, weight_decay=1e-4),
    "shufflenet_v2_x1_0_mindcv.yaml": dict(
        network="shufflenet_v2_x1_0", epoch_size=300, batch_size=64, lr_decay_mode="cosine",
        lr_max=0.4, warmup_epochs=5, weight_decay=4e-5, label_smooth_factor=0.1, re_prob=0.5,
        loss_scale=1024, opt="momentum", use_nesterov=False),
    # the stated numbers only (its file marks the rest as ours)
    "mobilenet_v1_100_timm.yaml": dict(
        network="mobilenet_v1_100", epoch_size=3600, opt="adamw", beta1=0.6,
        activation="relu6", input_norm="inception", ema=True),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_holds_its_sources_numbers_and_builds(name):
    config = get_config(["--config_path", f"configs/{name}"])
    for key, value in RECIPES[name].items():
        assert getattr(config, key) == pytest.approx(value) if isinstance(value, float) else \
            getattr(config, key) == value, key
    lr = get_lr(config.lr_decay_mode, config.lr_init, config.lr_max, config.lr_end,
                config.warmup_epochs, config.epoch_size, steps_per_epoch=10)
    assert lr.shape == (config.epoch_size * 10,)
    assert lr.max() == pytest.approx(config.lr_max, rel=1e-6)
    assert np.all(lr >= 0)
    net = create_network(config.network, num_classes=config.num_classes)
    assert net.classifier.weight.shape[0] == config.num_classes


def test_imagenet_default_is_the_zoo_recipe_with_its_lr_scaled():
    """default_config_imagenet.yaml is the zoo ShuffleNetV1 recipe in float32: the same values but
    amp_level, and its lr follows the global batch (lr 0.5 at batch 1024 diverged at batch 16)."""
    default = vars(get_config(["--config_path", "default_config_imagenet.yaml"]))
    recipe = vars(get_config(["--config_path", "configs/shufflenet_v1_g3_20_zoo_imagenet.yaml"]))
    differ = {k for k in recipe if recipe[k] != default[k]} - {"config_path", "explicit"}
    assert differ <= {"amp_level", "dataset_path", "keep_checkpoint_max", "eval_batch_size"}, \
        differ
    assert default["amp_level"] == "O0"
    assert (default["lr_scaling"], default["lr_base_batch"]) == ("linear", 1024)
    assert default["color_jitter"] == 0.4


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shufflenet_recipes_jitter_colours_and_mobilenet_ones_do_not(name):
    config = get_config(["--config_path", f"configs/{name}"])
    assert config.color_jitter == (0.4 if config.network.startswith("shufflenet") else 0.0)
