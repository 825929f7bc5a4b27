"""What each source publishes of our networks' ImageNet weights: one record per file.

The family modules list them (``PRETRAINED``), as timm's ``pretrained_cfg`` and MindCV's
``default_cfgs`` do; ``src/weights/pretrained.py`` downloads, verifies, converts and caches them.
The top-1/top-5 are each source's published figures, not ours.
"""
import dataclasses
import re

MINDCV_URL = "https://download.mindspore.cn/toolkits/mindcv/"
TORCHVISION_URL = "https://download.pytorch.org/models/"
# megvii publishes its trained models only in a OneDrive folder (ShuffleNet-Series README).
MEGVII_PAGE = "https://1drv.ms/f/s!AgaP37NGYuEXhRfQxHRseR7eSxXo"


@dataclasses.dataclass(frozen=True)
class PublishedWeights:
    """One published weight file: its tag (``--pretrained TAG``, the source's name: mindcv,
    torchvision, timm, megvii), where it is, what it expects and what its source reports."""
    tag: str
    url: str  # "" when the source links no file (megvii: a OneDrive folder, ``page``)
    top1: float  # the source's published ImageNet top-1 and top-5, in %
    top5: float
    num_classes: int = 1000
    input_norm: str = "imagenet"  # the pixels: see dataset.INPUT_NORMS
    eval_resize: int = 0  # the short side before the 224 crop; 0 = 256
    size_mb: float = 0.0  # the source's file size, where it states one
    page: str = ""  # where to get the file by hand

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        """The first hex digits of the file's SHA-256, which MindCV's and torchvision's file
        names end in ('' where a name carries none: timm's, megvii's)."""
        match = re.search(r"-([0-9a-f]{8,})\.(ckpt|pth)$", self.file_name)
        return match.group(1) if match else ""


def mindcv(path: str, top1: float, top5: float, num_classes: int = 1000) -> PublishedWeights:
    """MindCV 0.3.0's weights (default_cfgs; top-1/5 from its configs' READMEs): a MindSpore
    checkpoint of MindCV's layout, ImageNet pixels at 256 -> 224."""
    return PublishedWeights("mindcv", MINDCV_URL + path, top1, top5, num_classes)


def torchvision(file: str, top1: float, top5: float, size_mb: float,
                eval_resize: int = 0) -> PublishedWeights:
    """torchvision's ShuffleNet_V2_*_Weights.IMAGENET1K_V1 (its meta: acc@1, acc@5, file size;
    x1.5 and x2.0 are evaluated at a resize of 232)."""
    return PublishedWeights("torchvision", TORCHVISION_URL + file, top1, top5,
                            eval_resize=eval_resize, size_mb=size_mb)


def timm(repo: str, top1: float, top5: float) -> PublishedWeights:
    """timm's weights on the Hugging Face hub (safetensors; its results table at 224; pixels
    mean = std = 0.5). The hub names carry no hash."""
    return PublishedWeights("timm", f"https://huggingface.co/{repo}/resolve/main/model.safetensors",
                            top1, top5, input_norm="inception")


def megvii(top1_error: float, top5_error: float) -> PublishedWeights:
    """megvii's ShuffleNet-Series weights (its README gives top-1/top-5 errors): only in a
    OneDrive folder, so downloaded by hand and converted with convert_weights.py. BGR 0-255."""
    return PublishedWeights("megvii", "", round(100 - top1_error, 2), round(100 - top5_error, 2),
                            input_norm="megvii_bgr", page=MEGVII_PAGE)


# What the ports this zoo replaces report for their own training runs (configs/ holds each
# recipe): (port, top-1 %, top-5 % or None). Their figures, not measured here.
PORTS_REPORTED = {
    "shufflenet_v1_g3_20": ("model_zoo ShuffleNetV1, 8 Ascend", 73.9, 91.4),
    "shufflenet_v1_g3_05": ("MindCV, 8 Ascend", 57.05, 79.73),
    "shufflenet_v2_x1_0": ("Ascend PyTorch, 1 device", 68.5, None),
    "mobilenet_v1_100": ("model_zoo MobileNetV1, 4 Ascend", 71.28, 90.10),
}
