"""Choosing the device and graph mode, the one way every entry point does it."""
import mindspore as ms

from src.errors import UserError


def use_device(target: str, conv_impl: str = "auto") -> None:
    """Run on ``target`` (Ascend, GPU, CPU) in GRAPH_MODE; UserError if this build lacks it, or
    if ``conv_impl`` asks for our CPU kernels where they do not run."""
    try:
        ms.set_device(target)
    except (RuntimeError, ValueError) as err:
        raise UserError(f"device {target} is not usable in this MindSpore build",
                        "--device_target", "give a target this install supports, e.g. CPU") from err
    ms.set_context(mode=ms.GRAPH_MODE)
    from src.models.layers import resolve_conv_impl
    try:
        resolve_conv_impl(conv_impl)
    except ValueError as err:
        raise UserError(str(err), "--conv_impl", "give auto: it uses our kernels where they "
                        "run and MindSpore's operators elsewhere") from None
