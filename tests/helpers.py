"""Helpers the tests share: running entry points, writing small real-format data sets."""
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

from src.dataset import write_cifar10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = re.compile(r"result: \{'Loss': ([\d.e+-]+), 'Top_1_Acc': ([\d.e+-]+), "
                    r"'Top_5_Acc': ([\d.e+-]+)\}, network: (\w+), (?:ckpt|model): '([^']+)', "
                    r"(?:weights: (\w+), )?time: ")
# The progress line, the run's one loss line: epoch, step, loss, smoothed loss, lr, images/s, eta.
PROGRESS = re.compile(r"^epoch: (\d+) step: (\d+), loss: ([\d.e+-]+), loss\(smoothed\): "
                      r"([\d.e+-]+), lr: ([\d.e+-]+), images/s: ([\d.]+|\?), "
                      r"eta: ((?:\d+d )?\d\d:\d\d:\d\d|\?)$", re.M)
LOSS = re.compile(r"^epoch: (\d+) step: (\d+), loss: ([\d.e+-]+),", re.M)
LR = re.compile(r"^epoch: (\d+) step: (\d+), loss: [^,]+, loss\(smoothed\): [^,]+, "
                r"lr: ([\d.e+-]+),", re.M)


def run_entry(script, *args, cwd=None, timeout=600, env=None):
    """Run a top-level entry point in a subprocess; returns CompletedProcess with text output.
    ``env``: the environment (default: this one, MindSpore's C++ log at errors only)."""
    if env is None:
        env = {**os.environ, "GLOG_v": "3"}
    env = {**env, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          cwd=cwd or ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def learnable_images(count, classes, size, seed):
    """uint8 HWC RGB noise images whose class sets the colour (red, green, blue, white, ...):
    easy to learn, and crops and flips keep the signal."""
    rng = np.random.RandomState(seed)
    labels = np.arange(count) % classes
    rng.shuffle(labels)
    images = rng.randint(0, 60, (count, size, size, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
        channels = [label % 3] if label < 3 else [c for c in range(3) if c != label % 3]
        images[i, :, :, channels] += 180
    return images, labels


def write_cifar_folder(folder, train_count=128, test_count=40, classes=4, seed=0):
    """CIFAR-10 binary files (data_batch_1..2.bin, test_batch.bin) of learnable images."""
    os.makedirs(folder, exist_ok=True)
    images, labels = learnable_images(train_count, classes, 32, seed)
    half = train_count // 2
    write_cifar10(os.path.join(folder, "data_batch_1.bin"), images[:half], labels[:half])
    write_cifar10(os.path.join(folder, "data_batch_2.bin"), images[half:], labels[half:])
    images, labels = learnable_images(test_count, classes, 32, seed + 1)
    write_cifar10(os.path.join(folder, "test_batch.bin"), images, labels)
    return folder


def write_image_folder(root, per_class=16, classes=3, size=48, val_name="val", seed=0):
    """root/train/<class>/*.jpg and root/<val_name>/<class>/*.jpg of learnable JPEGs."""
    for split, count in (("train", per_class * classes), (val_name, 4 * classes)):
        images, labels = learnable_images(count, classes, size, seed + len(split))
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = os.path.join(root, split, f"class_{label}")
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(image).save(os.path.join(folder, f"{i}.jpg"), quality=95)
    return root


def network_of(meta: dict, **kwargs):
    """The network a checkpoint's metadata names, random weights (the record's builder)."""
    from src.checkpoint import NetworkRecord
    return NetworkRecord.from_values(meta).build(**kwargs)


def saved_checkpoint(path, network="shufflenet_v2_x0_5", num_classes=4, epoch=1, steps=2,
                     net=None, **meta):
    """A checkpoint of ``network`` as train.py writes it (random weights, our metadata, epoch and
    step), without training for it; ``meta`` overrides the recorded values."""
    from src.checkpoint import NetworkRecord, save_atomically
    from src.model_utils.config import get_config
    config = get_config(["--network", network, "--num_classes", str(num_classes)])
    record = {**NetworkRecord.from_config(config).as_dict(), **meta}
    net = net or network_of(record, conv_impl="mindspore")
    save_atomically(net, str(path), {**record, "epoch_num": epoch, "step_num": epoch * steps})
    return str(path)


def randomize_weights(net, seed=0):
    """Random weights and BN statistics of a MindSpore network (not the defaults 0/1, which
    would hide BN mistakes), scaled so that activations stay near 1 (as torch_models.randomize)."""
    import mindspore as ms
    rng = np.random.RandomState(seed)
    for param in net.get_parameters():
        shape = param.shape
        if param.name.endswith("moving_variance"):
            value = rng.rand(*shape) + 0.5
        elif param.name.endswith(("moving_mean", "beta", "bias")):
            value = rng.randn(*shape) * 0.1
        elif param.name.endswith("gamma"):
            value = rng.rand(*shape) * 0.4 + 0.2
        else:
            value = rng.randn(*shape) * (1 / np.prod(shape[1:])) ** 0.5
        param.set_data(ms.Tensor(value.astype(np.float32)))
    return net


def hooked(net, modules, x) -> dict:
    """{module: its output} of ``net`` on ``x`` at each of ``modules`` (forward hooks;
    PyNative)."""
    cells, seen = dict(net.cells_and_names()), {}
    handles = [cells[m].register_forward_hook(
        lambda cell, inputs, out, m=m: seen.__setitem__(m, out.asnumpy())) for m in modules]
    net(x)
    for handle in handles:
        handle.remove()
    return seen
