"""Training augmentations beyond crop, flip and colour jitter, from MindSpore's own operators:
an automatic augmentation policy (``auto_augment``) on the uint8 image and random erasing
(``re_prob``) on the normalised one. Both run in the data workers.

``auto_augment`` takes MindCV's and timm's policy strings:

- ``randaug-m9-mstd0.5-inc1`` and its kin (``rand-...`` as timm writes it): MindSpore's
  RandAugment with ``n`` ops (default 2) at magnitude ``m`` of ``mmax`` (default 10), the
  magnitude drawn per image from a normal of std ``mstd`` around ``m`` (rounded, clipped to
  0..mmax; MindSpore's op takes one magnitude, so each image takes one of the ops built at the
  magnitudes the normal reaches, in proportion). Its ops grow more severe with the magnitude
  (timm's ``inc1``); ``inc0`` is taken and means the same here. Only ``w0`` (uniform op choice).
- ``autoaug``: MindSpore's AutoAugment with the ImageNet policy (the CIFAR-10 policy on
  CIFAR-10).
- ``trivialaugwide``: MindSpore's TrivialAugmentWide.
"""
import math
import re

import numpy as np

POLICIES = ("randaug-m9-mstd0.5-inc1", "autoaug", "trivialaugwide")
# The mean ImageNet pixel: what geometric ops fill the uncovered corners with (timm's choice).
FILL = (124, 116, 104)
# How many ops the list of a jittered magnitude holds: its probabilities in steps of 1/20.
MAGNITUDE_DRAWS = 20


class PolicyError(ValueError):
    """A policy string that is not known or asks what MindSpore's ops do not do: (what, todo)."""


def parse_auto_augment(policy: str) -> tuple:
    """(name, options) of an ``auto_augment`` policy string; PolicyError if it is not one. Reads
    no MindSpore, so the config checks it before anything loads."""
    name, *parts = policy.split("-")
    if name in ("randaug", "rand"):
        return "randaug", _rand_augment_options(parts)
    if name not in ("autoaug", "trivialaugwide"):
        raise PolicyError("not a known policy", f"give one of {', '.join(POLICIES)}, or \"\" "
                          "for none")
    if parts:
        raise PolicyError(f"{name} takes no options here", f"give {name} alone")
    return name, {}


def _rand_augment_options(parts: list) -> dict:
    """timm's RandAugment options: m (magnitude), n (ops), mstd, mmax, inc, w."""
    options = {"m": 9.0, "n": 2.0, "mstd": 0.0, "mmax": 10.0, "inc": 0.0, "w": 0.0}
    for part in parts:
        match = re.fullmatch(r"(mstd|mmax|inc|m|n|w)(\d+(?:\.\d+)?)", part)
        if not match:
            raise PolicyError(f"{part!r} is not an option of randaug", "give m<magnitude>, "
                              "n<ops>, mstd<std>, mmax<max>, inc<0|1>, e.g. "
                              "randaug-m9-mstd0.5-inc1")
        options[match.group(1)] = float(match.group(2))
    if options["w"]:
        raise PolicyError("weighted op choice (w) is not offered by MindSpore's RandAugment",
                          "give w0 or leave it out")
    if not (1 <= options["mmax"] <= 30 and 0 <= options["m"] <= options["mmax"]
            and 1 <= options["n"] <= 14 and options["mmax"].is_integer()
            and options["n"].is_integer()):
        raise PolicyError("m must lie in 0..mmax, mmax in 1..30, n in 1..14 (whole numbers)",
                          "e.g. randaug-m9-mstd0.5-inc1")
    return options


def auto_augment_ops(policy: str, dataset: str = "imagenet") -> list:
    """The ops of an ``auto_augment`` policy string on a uint8 HWC image ("" gives none)."""
    import mindspore.dataset.transforms as T
    import mindspore.dataset.vision as V
    if not policy:
        return []
    name, options = parse_auto_augment(policy)
    if name == "autoaug":
        table = V.AutoAugmentPolicy.CIFAR10 if dataset == "cifar10" else \
            V.AutoAugmentPolicy.IMAGENET
        return [V.AutoAugment(table, V.Inter.BILINEAR, FILL)]
    if name == "trivialaugwide":
        return [V.TrivialAugmentWide(31, V.Inter.BILINEAR, FILL)]
    top, count = int(options["mmax"]), int(options["n"])
    magnitudes = jittered_magnitudes(options["m"], options["mstd"], top)
    ops = {m: V.RandAugment(count, m, top + 1, V.Inter.BILINEAR, FILL) for m in set(magnitudes)}
    if len(ops) == 1:
        return [ops[magnitudes[0]]]
    return [T.RandomChoice([ops[m] for m in magnitudes])]


def jittered_magnitudes(magnitude: float, std: float, top: int) -> list:
    """MAGNITUDE_DRAWS magnitudes whose frequencies follow a normal of ``std`` around
    ``magnitude``, rounded to whole steps and clipped to 0..top: uniform draws from the list
    give each image its magnitude. ``std`` 0: the magnitude alone."""
    if std <= 0:
        return [int(round(magnitude))]
    weights = {}
    for m in range(top + 1):
        low, high = (m - 0.5 - magnitude) / std, (m + 0.5 - magnitude) / std
        if m == 0:
            low = -math.inf
        if m == top:
            high = math.inf
        weights[m] = _normal_cdf(high) - _normal_cdf(low)
    counts = {m: round(w * MAGNITUDE_DRAWS) for m, w in weights.items()}
    counts[int(round(magnitude))] += MAGNITUDE_DRAWS - sum(counts.values())
    return [m for m, c in sorted(counts.items()) for _ in range(c)]


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0))) if math.isfinite(z) else float(z > 0)


def check_erasing_value(value: str) -> None:
    """``re_value``: a whole number (0: the mean pixel, as the image is normalised) or
    "random" (standard normal noise); PolicyError otherwise."""
    if value != "random" and not re.fullmatch(r"-?\d+", value):
        raise PolicyError("neither a whole number nor random", "give 0, or random")


def erasing_ops(config) -> list:
    """Random erasing of the normalised CHW image (``re_prob``, ``re_scale``, ``re_ratio``,
    ``re_value``)."""
    import mindspore.dataset.vision as V
    if not config.re_prob:
        return []
    value = "random" if config.re_value == "random" else int(config.re_value)
    return [V.RandomErasing(config.re_prob, tuple(config.re_scale), tuple(config.re_ratio),
                            value)]


def mixes_batches(config) -> bool:
    """Whether training batches are mixed (mixup or CutMix): their targets are then soft."""
    return config.mixup > 0 or config.cutmix > 0


class BatchMixer:
    """mixup and CutMix of a training batch, as a ``per_batch_map``: each batch is mixed with
    itself reversed (image i with image N-1-i) with the chance ``cutmix_prob``; with both on,
    CutMix with the chance ``mixup_switch_prob``, else mixup; the factor lam ~ Beta(alpha,
    alpha). mixup: x = lam x + (1 - lam) x_reversed. CutMix: a box of area (1 - lam) H W (its
    sides sqrt(1 - lam) H and W, centred anywhere, clipped to the image) comes from the reversed
    image, and lam becomes 1 - the clipped box's share of the image. The targets are
    lam y + (1 - lam) y_reversed of the smoothed one-hot labels y (1 - s on the class, s / (C - 1)
    elsewhere: ``label_smooth_factor``'s rule), so each row sums to 1. Draws come from a numpy
    generator seeded with ``seed`` (a resumed run draws afresh)."""

    def __init__(self, config, seed: int):
        self.mixup, self.cutmix = config.mixup, config.cutmix
        self.prob, self.switch = config.cutmix_prob, config.mixup_switch_prob
        self.classes, self.smoothing = config.num_classes, config.label_smooth_factor
        self.rng = np.random.RandomState(seed)
        self.last = ("none", 1.0, None)  # the last batch's (kind, lam, box): for tests and logs

    def targets(self, labels):
        """The smoothed one-hot rows of ``labels``."""
        off = self.smoothing / (self.classes - 1)
        rows = np.full((len(labels), self.classes), off, np.float32)
        rows[np.arange(len(labels)), labels] = 1.0 - self.smoothing
        return rows

    def draw(self, height: int, width: int) -> tuple:
        """(kind, lam, box (y1, y2, x1, x2) or None) of the next batch."""
        if self.rng.rand() >= self.prob:
            return "none", 1.0, None
        cut = self.cutmix > 0 and (self.mixup <= 0 or self.rng.rand() < self.switch)
        if not cut:
            return "mixup", float(self.rng.beta(self.mixup, self.mixup)), None
        lam = float(self.rng.beta(self.cutmix, self.cutmix))
        ratio = np.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = self.rng.randint(height), self.rng.randint(width)
        y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        return "cutmix", 1.0 - (y2 - y1) * (x2 - x1) / (height * width), (y1, y2, x1, x2)

    def __call__(self, images, labels, batch_info=None):
        images = np.stack(images).astype(np.float32)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        rows = self.targets(labels)
        kind, lam, box = self.draw(*images.shape[2:])
        self.last = (kind, lam, box)
        reversed_images = images[::-1]
        if kind == "mixup":
            images = lam * images + (1.0 - lam) * reversed_images
        elif kind == "cutmix":
            y1, y2, x1, x2 = box
            images = images.copy()
            images[:, :, y1:y2, x1:x2] = reversed_images[:, :, y1:y2, x1:x2]
        mixed = (lam * rows + (1.0 - lam) * rows[::-1]).astype(np.float32)
        return list(images.astype(np.float32)), list(mixed)
