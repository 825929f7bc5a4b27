"""Choosing the device and graph mode, the one way every entry point does it."""
import mindspore as ms

from src.errors import UserError


def use_device(target: str) -> None:
    """Run on ``target`` (Ascend, GPU, CPU) in GRAPH_MODE; UserError if this build lacks it."""
    try:
        ms.set_device(target)
    except (RuntimeError, ValueError) as err:
        raise UserError(f"device {target} is not usable in this MindSpore build",
                        "--device_target", "give a target this install supports, e.g. CPU") from err
    ms.set_context(mode=ms.GRAPH_MODE)
