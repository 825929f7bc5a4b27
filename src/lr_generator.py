"""Per-step learning-rate arrays: steps, poly, cosine and linear decay, each after a linear
warm-up."""
import math

import numpy as np

DECAY_MODES = ("steps", "poly", "cosine", "linear")


def get_lr(lr_decay_mode, lr_init, lr_max, lr_end, warmup_epochs, total_epochs,
           steps_per_epoch) -> np.ndarray:
    """float32 array of length total_epochs * steps_per_epoch; entry i is the lr of step i.

    With T total steps and W = warmup_epochs * steps_per_epoch warm-up steps:
    warm-up (i < W): lr_init + (lr_max - lr_init) * (i + 1) / W, reaching lr_max at step W - 1
    (the zoo ShuffleNetV1's formula; the zoo MobileNetV1's i / W never reaches lr_max). After it,
    with p = (i - W) / (T - W):
    steps:  lr_max, then x0.1, x0.01, x0.001 from 30 %, 60 %, 80 % of T;
    poly:   lr_max * (1 - p) ** 2 (the zoo MobileNetV1's; lr_end unused, as there);
    cosine: lr_end + (lr_max - lr_end) * (1 + cos(pi * p)) / 2;
    linear: lr_max - (lr_max - lr_end) * p.
    """
    if lr_decay_mode not in DECAY_MODES:
        raise ValueError(f"lr_decay_mode {lr_decay_mode!r} is not one of {DECAY_MODES}")
    total = int(total_epochs * steps_per_epoch)
    warmup = min(int(warmup_epochs * steps_per_epoch), total)
    lrs = np.empty(total, dtype=np.float64)
    for i in range(total):
        if i < warmup:
            lrs[i] = lr_init + (lr_max - lr_init) * (i + 1) / warmup
            continue
        p = (i - warmup) / (total - warmup)
        if lr_decay_mode == "steps":
            factor = 1.0
            for bound, scale in ((0.8, 0.001), (0.6, 0.01), (0.3, 0.1)):
                if i >= bound * total:
                    factor = scale
                    break
            lrs[i] = lr_max * factor
        elif lr_decay_mode == "poly":
            lrs[i] = lr_max * (1.0 - p) ** 2
        elif lr_decay_mode == "cosine":
            lrs[i] = lr_end + (lr_max - lr_end) * 0.5 * (1.0 + math.cos(math.pi * p))
        else:
            lrs[i] = lr_max - (lr_max - lr_end) * p
    return lrs.astype(np.float32)
