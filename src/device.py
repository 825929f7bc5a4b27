"""Choosing the device and graph mode, the one way every entry point does it.

Which device a process runs on (``device_id``): the ``--device_id`` flag when given; else, under
msrun (which sets ``MS_ROLE`` in its workers), the device MindSpore negotiates for the worker;
else ``$DEVICE_ID`` (what the rank-table script sets per rank, as the model_zoo's launchers do);
else 0. MindSpore's own default without an id is device 0 in every run not started by msrun, so
a rank-table job that passed none would put every rank on device 0.
"""
import glob
import os
import re
from typing import Optional

import mindspore as ms

from src.errors import UserError

# Set by msrun in each process it starts (MS_WORKER, MS_SCHED).
MSRUN_ROLE = "MS_ROLE"
# The device plugins of a MindSpore wheel, by target, under mindspore/lib/plugin/.
PLUGINS = {"GPU": "libmindspore_gpu.so*", "Ascend": "libmindspore_ascend.so*"}


def device_id_for(configured: int) -> Optional[int]:
    """The device id to give ``ms.set_device``: ``configured`` when it is >= 0, None under msrun
    (MindSpore negotiates one per worker), else ``$DEVICE_ID``, else 0."""
    under_msrun = MSRUN_ROLE in os.environ
    if configured >= 0:
        if under_msrun:
            raise UserError(f"device_id {configured} given to a worker started by msrun",
                            "--device_id", "drop --device_id: msrun gives each worker its own "
                            "device (limit them with CUDA_VISIBLE_DEVICES or "
                            "ASCEND_RT_VISIBLE_DEVICES)")
        return configured
    if under_msrun:
        return None
    text = os.environ.get("DEVICE_ID", "").strip()
    if not text:
        return 0
    if not text.isdigit():
        raise UserError(f"DEVICE_ID {text!r} is not a device number", "$DEVICE_ID",
                        "set DEVICE_ID to 0, 1, ... or unset it")
    return int(text)


def use_device(target: str, conv_impl: str = "auto", device_id: int = -1) -> None:
    """Run on ``target`` (Ascend, GPU, CPU), device ``device_id`` (see ``device_id_for``), in
    GRAPH_MODE, after one tiny op has run there; UserError carrying MindSpore's own reason if the
    device is not usable (its plugin or a library the plugin needs could not be loaded), or if
    ``conv_impl`` asks for our CPU kernels where they do not run."""
    chosen = device_id_for(device_id)
    try:
        ms.set_device(target, chosen)
        _probe()
    except (RuntimeError, ValueError) as err:
        where = "--device_target" if chosen is None else f"--device_target, device {chosen}"
        raise UserError(f"device {target} is not usable: {failure_reason(target, err)}", where,
                        "install that device's driver and the libraries named, or give "
                        "--device_target CPU") from None
    ms.set_context(mode=ms.GRAPH_MODE)
    from src.models.layers import resolve_conv_impl
    try:
        resolve_conv_impl(conv_impl)
    except ValueError as err:
        raise UserError(str(err), "--conv_impl", "give auto: it uses our kernels where they "
                        "run and MindSpore's operators elsewhere") from None


def _probe() -> None:
    """One tiny op on the device just set, read back: a device whose plugin or runtime cannot
    load fails here rather than at the first training step."""
    import numpy as np
    ms.ops.add(ms.Tensor(np.ones(2, np.float32)), 1).asnumpy()


def failure_reason(target: str, err: Exception) -> str:
    """Why ``target`` failed, in one clause: the libraries MindSpore could not load for it (the
    "Device load error message" of its exception, and this wheel's plugin for the target loaded
    here to name what it lacks), else the first line of MindSpore's message."""
    text = str(err)
    tag = target.lower()
    reasons = [f"{lib}: {why.strip()}" for lib, why in re.findall(
        r"Load dynamic library: (\S+) failed\.\s*([^\n]+)", text) if tag in lib.lower()]
    reasons += [r for r in plugin_load_errors(target) if r not in reasons]
    if reasons:
        return "; ".join(reasons[:2])
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return first[:300]


def plugin_load_errors(target: str) -> list:
    """``plugin: loader error`` for each of this wheel's plugins for ``target`` that the system
    loader cannot load (names the missing CUDA, cuDNN or CANN library); [] when they load, or
    when the wheel has none (then MindSpore's own message says so)."""
    import ctypes
    pattern = PLUGINS.get(target)
    if not pattern:
        return []
    folder = os.path.join(os.path.dirname(ms.__file__), "lib", "plugin")
    found, reasons = [], set()
    for path in sorted(glob.glob(os.path.join(folder, pattern)), reverse=True):  # newest first
        try:
            ctypes.CDLL(path)
        except OSError as err:
            if str(err) not in reasons:  # one line per missing library, not per CUDA version
                reasons.add(str(err))
                found.append(f"{os.path.basename(path)}: {err}")
    return found
