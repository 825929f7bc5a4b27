"""Which device a process binds, and a device that fails: MindSpore's device calls are mocked,
so these run on CPU what an Ascend or GPU run would do."""
import json
import os
import re
import subprocess

import pytest

from src import device
from src.errors import UserError
from tests.helpers import ROOT, write_cifar_folder


@pytest.fixture
def set_device_calls(monkeypatch):
    """ms.set_device recorded instead of called, and the probe a no-op."""
    calls = []
    monkeypatch.setattr(device.ms, "set_device", lambda *args: calls.append(args))
    monkeypatch.setattr(device, "_probe", lambda: None)
    monkeypatch.delenv("DEVICE_ID", raising=False)
    monkeypatch.delenv(device.MSRUN_ROLE, raising=False)
    return calls


def test_the_device_id_comes_from_the_flag_then_the_environment_then_zero(set_device_calls,
                                                                        monkeypatch):
    device.use_device("Ascend", "mindspore", 3)
    monkeypatch.setenv("DEVICE_ID", "5")
    device.use_device("Ascend", "mindspore", -1)
    device.use_device("Ascend", "mindspore", 2)  # the flag wins over $DEVICE_ID
    monkeypatch.delenv("DEVICE_ID")
    device.use_device("GPU", "mindspore", -1)
    assert set_device_calls == [("Ascend", 3), ("Ascend", 5), ("Ascend", 2), ("GPU", 0)]


def test_under_msrun_the_device_is_msruns(set_device_calls, monkeypatch):
    """msrun's workers get None (MindSpore negotiates a device per worker), though msrun also
    exports DEVICE_ID; a --device_id there would put every worker on one device: refused."""
    monkeypatch.setenv(device.MSRUN_ROLE, "MS_WORKER")
    monkeypatch.setenv("DEVICE_ID", "1")
    device.use_device("GPU", "mindspore", -1)
    assert set_device_calls == [("GPU", None)]
    with pytest.raises(UserError, match="msrun gives each worker its own device"):
        device.use_device("GPU", "mindspore", 0)


def test_a_bad_device_id_in_the_environment_is_one_line(set_device_calls, monkeypatch):
    monkeypatch.setenv("DEVICE_ID", "gpu0")
    with pytest.raises(UserError) as err:
        device.use_device("GPU", "mindspore", -1)
    assert err.value.line().startswith("error: DEVICE_ID 'gpu0' is not a device number "
                                       "($DEVICE_ID): ")
    assert not set_device_calls


def test_the_entry_points_pass_device_id_to_set_device(cli, monkeypatch, tmp_path):
    """--device_id and $DEVICE_ID reach ms.set_device from eval.py and train.py's command
    lines (the recorded call stops the run with its reason, as a failing device would)."""
    calls = []

    def record(target, device_id=None):
        calls.append((target, device_id))
        raise RuntimeError("recorded")
    monkeypatch.setattr(device.ms, "set_device", record)
    monkeypatch.delenv(device.MSRUN_ROLE, raising=False)
    monkeypatch.setenv("DEVICE_ID", "6")
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=8, test_count=8)
    result = cli("train.py", "--dataset_path", data, "--device_target", "GPU",
                 "--conv_impl", "mindspore", "--output_path", str(tmp_path / "out"))
    assert result.returncode == 2 and len(result.error_lines()) == 1
    assert re.fullmatch(r"error: device GPU is not usable: libmindspore_gpu\.so\.[\d.]+: "
                        r"lib\w+\.so[.\d]*: cannot open shared object file: No such file or "
                        r"directory \(--device_target, device 6\): install that device's driver "
                        r"and the libraries named, or give --device_target CPU",
                        result.error_lines()[0]), result.stderr
    result = cli("train.py", "--dataset_path", data, "--device_target", "Ascend",
                 "--device_id", "4", "--conv_impl", "mindspore")
    assert result.returncode == 2
    assert calls == [("GPU", 6), ("Ascend", 4)]


def test_each_rank_of_a_rank_table_binds_its_own_device(tmp_path, set_device_calls,
                                                       monkeypatch):
    """The rank-table script's plan (DRY_RUN=1) for devices 4-7: each rank's environment, as the
    script starts it, makes use_device bind that rank's device, not device 0."""
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"version": "1.0", "server_list": [{"server_id": "10.0.0.1",
        "device": [{"device_id": str(d), "device_ip": f"192.98.92.{100 + d}",
                    "rank_id": str(r)} for r, d in enumerate([4, 5, 6, 7])]}]}))
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=8, test_count=8)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK_SIZE", "SERVER_ID")}
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_distribute_train.sh"),
                           str(table), data], cwd=tmp_path, capture_output=True, text=True,
                          env={**env, "DRY_RUN": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    plans = re.findall(r"RANK_ID=(\d+) DEVICE_ID=(\d+) ", proc.stdout)
    assert plans == [("0", "4"), ("1", "5"), ("2", "6"), ("3", "7")]
    for _, device_id in plans:
        monkeypatch.setenv("DEVICE_ID", device_id)
        device.use_device("Ascend", "mindspore", -1)
    assert set_device_calls == [("Ascend", d) for d in (4, 5, 6, 7)]


def test_a_device_that_fails_its_probe_is_one_line_with_mindspores_reason(set_device_calls,
                                                                        monkeypatch):
    """set_device succeeds (it loads no plugin) and the first op fails: the line carries the
    library MindSpore could not load, taken from its own message."""
    message = ("Unsupported device target GPU. This process only supports one of the ['CPU'].\n"
               "- Device load error message:\n"
               "Load dynamic library: libmindspore_ascend.so.2 failed. libge_runner.so: cannot "
               "open shared object file\n"
               "Load dynamic library: libmindspore_gpu.so.11.6 failed. libcudnn.so.8: cannot "
               "open shared object file: No such file or directory\n")

    def probe():
        raise RuntimeError(message)
    monkeypatch.setattr(device, "_probe", probe)
    monkeypatch.setattr(device, "plugin_load_errors", lambda target: [])
    with pytest.raises(UserError) as err:
        device.use_device("GPU", "mindspore", 1)
    line = err.value.line()
    assert "\n" not in line and line.startswith(
        "error: device GPU is not usable: libmindspore_gpu.so.11.6: libcudnn.so.8: cannot open "
        "shared object file: No such file or directory (--device_target, device 1): ")
    assert "ascend" not in line.lower()


def test_this_wheels_gpu_plugin_names_what_it_lacks_here():
    """On this CPU machine MindSpore's GPU plugin cannot load: the reason names a CUDA library
    (the real loader, not a mock); CPU has no plugin to blame."""
    reasons = device.plugin_load_errors("GPU")
    assert reasons and all(r.startswith("libmindspore_gpu.so") for r in reasons)
    assert re.search(r"lib\w+\.so[.\d]*: cannot open shared object file", reasons[0])
    assert device.plugin_load_errors("CPU") == []


def test_loss_scaling_keeps_the_optimizer_and_the_manager_consistent():
    """Fixed: the optimizer divides by the manager's scale and every step is applied. Dynamic:
    MindSpore's DynamicLossScaleManager with our scale, factor and window; the train step
    unscales the gradients itself, so the optimizer's scale is 1."""
    from src.model_utils.config import get_config
    from src.training.trainer import loss_scaling
    manager, optimizer_scale = loss_scaling(get_config(["--loss_scale", "512"]))
    assert (manager.get_loss_scale(), optimizer_scale) == (512, 512)
    assert manager.get_drop_overflow_update() is False
    config = get_config(["--loss_scale", "4096", "--loss_scale_type", "dynamic",
                         "--scale_factor", "4", "--scale_window", "50"])
    manager, optimizer_scale = loss_scaling(config)
    assert optimizer_scale == 1.0 and manager.get_drop_overflow_update() is True
    assert (manager.get_loss_scale(), manager.scale_factor, manager.scale_window) == \
        (4096, 4, 50)


def test_a_dynamic_loss_scale_on_cpu_is_one_line_before_anything_starts(cli, tmp_path):
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=8, test_count=8)
    result = cli("train.py", "--dataset_path", data, "--loss_scale_type", "dynamic",
                 "--output_path", str(tmp_path / "out"))
    assert result.returncode == 2 and result.error_lines() == [
        "error: a dynamic loss scale does not run on CPU (MindSpore 2.10 builds its "
        "overflow-skipping train step for Ascend and GPU only) (--loss_scale_type): give "
        "--loss_scale_type fixed on CPU"]
    assert not (tmp_path / "out").exists()
    result = cli("src.tools.launch", "check", "--dataset_path", data, "--loss_scale_type",
                 "dynamic")
    assert result.returncode == 2 and "dynamic loss scale does not run on CPU" in result.stderr


def test_export_writes_the_same_forms_on_every_device(monkeypatch):
    """A file is written once and runs anywhere: each format's conv form does not follow the
    device that exports it (a MINDIR exported on a GPU kept grouped convs before)."""
    from src.deploy.exporter import EXPORT_CONV_IMPL
    from src.models import layers
    forms = {}
    for target in ("CPU", "GPU", "Ascend"):
        monkeypatch.setattr(layers.ms, "get_context",
                            lambda key, target=target: target if key == "device_target" else None)
        forms[target] = {fmt: layers.resolve_conv_impl(impl)
                         for fmt, impl in EXPORT_CONV_IMPL.items()}
    assert forms["CPU"] == forms["GPU"] == forms["Ascend"] == {
        "MINDIR": "mindspore_taps", "AIR": "mindspore_split", "ONNX": "mindspore_grouped"}
