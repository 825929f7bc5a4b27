"""A real labelled data set with no download: scikit-learn's digit scans in the CIFAR-10 layout."""
import os

import numpy as np
from PIL import Image

from src.dataset import write_cifar10


def write_digits_cifar(folder: str, seed: int = 1, test_fraction: float = 0.2) -> tuple:
    """Write the 1,797 8x8 digit scans, upscaled to 32x32 RGB, as data_batch_1.bin and
    test_batch.bin under ``folder`` (a fixed stratified split). Returns (train, test) counts."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for scan in digits.images:  # 0..16 grey levels
        grey = Image.fromarray((scan * (255.0 / 16.0)).astype(np.uint8))
        images.append(np.asarray(grey.resize((32, 32), Image.BILINEAR)))
    rgb = np.repeat(np.stack(images)[..., None], 3, axis=3)
    labels = digits.target.astype(np.int64)
    rng = np.random.RandomState(seed)
    test = np.zeros(len(labels), bool)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        test[rng.choice(members, int(round(len(members) * test_fraction)), replace=False)] = True
    os.makedirs(folder, exist_ok=True)
    order = rng.permutation(np.flatnonzero(~test))
    write_cifar10(os.path.join(folder, "data_batch_1.bin"), rgb[order], labels[order])
    write_cifar10(os.path.join(folder, "test_batch.bin"), rgb[test], labels[test])
    return int((~test).sum()), int(test.sum())
