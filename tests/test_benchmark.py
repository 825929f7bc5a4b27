"""benchmark.py in a tiny setting: it runs ours and the references side by side and its JSON has
the figures. Nothing here is about speed (that is what the benchmark itself measures)."""
import json

import pytest

from tests.helpers import run_entry

pytestmark = pytest.mark.slow
FIGURES = {"compile_s", "step_times", "ms_per_step", "images_per_s", "peak_rss_mb"}


def test_train_sweeps_batch_sizes_against_the_references_and_train_py(tmp_path):
    """Train mode at two batch sizes: ours, standard, MindCV and PyTorch side by side at each,
    then train.py's own progress figure at each (the median of its lines after the compile)."""
    out = tmp_path / "bench.json"
    proc = run_entry("benchmark.py", "--network", "mobilenet_v1_025", "--mode", "train",
                     "--image_size", "32", "--batch_size", "2,3", "--steps", "2", "--rounds", "2",
                     "--warmup", "0", "--compare", "standard,mindcv,torch", "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["batch_sizes"] == [2, 3] and result["batch_size"] == 2
    assert set(result["results"]) == {"ours", "standard", "mindcv", "torch", "train.py"}
    for impl in ("ours", "standard", "mindcv", "torch"):
        figures = result["results"][impl]
        assert FIGURES <= set(figures)
        assert len(figures["step_times"]) == 2 and all(len(r) == 2 for r in figures["step_times"])
        assert figures["images_per_s"] > 0 and figures["peak_rss_mb"] > 0
        assert set(figures["by_batch"]) == {"2", "3"}
        assert figures["by_batch"]["2"]["images_per_s"] == figures["images_per_s"]
    for name in ("ours/standard", "ours/mindcv", "ours/torch"):
        assert len(result["ratios"][name]["per_round"]) == 2
        assert set(result["ratios"][name]["by_batch"]) == {"2", "3"}
    train_py = result["results"]["train.py"]
    for batch in ("2", "3"):  # steps x rounds lines after the first (the compile's, no figure)
        assert len(train_py["by_batch"][batch]["progress_rates"]) == 4
        assert train_py["by_batch"][batch]["images_per_s"] > 0
    assert set(result["ratios"]["train.py/ours"]["by_batch"]) == {"2", "3"}
    assert result["machine"]["cpu_count"] >= 1
    assert "ratio ours/torch (images/s)" in proc.stdout
    assert "train.py: mobilenet_v1_025 at 32 train batch 3: " in proc.stdout


def test_infer_times_every_way_to_infer_at_batch_1_and_the_batch(tmp_path):
    """ours (our kernels, fused BatchNorm), standard (MindSpore's operators), the exported MINDIR
    and ONNX files, MindCV and PyTorch: batch-1 latency (median, 90th percentile) and images/s
    at the batch, in one run."""
    out = tmp_path / "bench.json"
    proc = run_entry("benchmark.py", "--network", "mobilenet_v1_025", "--mode", "infer",
                     "--image_size", "32", "--batch_size", "4", "--steps", "3", "--rounds", "2",
                     "--warmup", "0", "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["results"]) == {"ours", "standard", "mindir", "onnx", "openvino", "mindcv",
                                      "torch"}
    for figures in result["results"].values():
        assert FIGURES | {"b1_ms_median", "b1_ms_p90"} <= set(figures)
        assert 0 < figures["b1_ms_median"] <= figures["b1_ms_p90"]
        assert figures["images_per_s"] > 0 and len(figures["step_times"]) == 2
    assert "ours (CPU): mobilenet_v1_025 at 32 infer batch 1: " in proc.stdout
    assert {impl: f["device"] for impl, f in result["results"].items()} == {
        impl: "CPU" for impl in result["results"]}  # where each side ran, said per side


def test_data_mode(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_entry("benchmark.py", "--network", "mobilenet_v1_025", "--mode", "data",
                     "--image_size", "32", "--batch_size", "4", "--steps", "2", "--rounds", "1",
                     "--auto_augment", "randaug-m9-mstd0.5-inc1", "--re_prob", "0.25",
                     "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "data" and FIGURES <= set(result["results"]["ours"])
    assert (result["auto_augment"], result["re_prob"]) == ("randaug-m9-mstd0.5-inc1", 0.25)


@pytest.mark.parametrize("mode, layer", [("layer", "depthwise_s2"), ("layer_infer", "batch_norm")])
def test_layer_modes_time_our_kernels_standard_and_torch(tmp_path, mode, layer):
    out = tmp_path / "bench.json"
    proc = run_entry("benchmark.py", "--mode", mode, "--layer", layer, "--batch_size", "2",
                     "--steps", "2", "--rounds", "1", "--warmup", "0", "--compare",
                     "standard,torch", "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["layer"] == layer and set(result["results"]) == {"ours", "standard", "torch"}
    assert f"ours (CPU): {layer} layer {mode} batch 2:" in proc.stdout


def test_off_cpu_the_layer_modes_are_refused_and_torch_says_where_it_runs(cli, monkeypatch):
    """The layer modes time our CPU kernels: on a GPU or Ascend run they are one line. PyTorch
    runs on the GPU beside ours only where its CUDA build sees one; the figures say which."""
    result = cli("benchmark.py", "--mode", "layer", "--device_target", "GPU")
    assert result.returncode == 2 and result.error_lines() == [
        "error: the layer modes time our CPU kernels, which do not run on GPU (--mode): give "
        "--device_target CPU, or --mode train or infer on the device"]
    import torch

    from src.tools import benchmark
    args = benchmark.parser().parse_args(["--device_target", "GPU", "--mode", "infer"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert benchmark.runs_on(args, "torch") == "GPU" and benchmark.runs_on(args, "onnx") == "CPU"
    assert benchmark.runs_on(args, "ours") == "GPU"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert benchmark.runs_on(args, "torch") == "CPU"
    args.device_target = "Ascend"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert benchmark.runs_on(args, "torch") == "CPU"
