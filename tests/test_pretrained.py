"""Pretrained weights by name, against an HTTP server this test starts on 127.0.0.1 (nothing
leaves the machine: ZOO_MIRROR points every published URL at it). It serves files made here in
each source's format, under names with the right SHA-256 digits."""
import hashlib
import http.server
import json
import os
import threading

import mindspore as ms
import numpy as np
import pytest

from src import create_network
from src.checkpoint import read_checkpoint
from src.models.weights import PublishedWeights, mindcv, torchvision
from tests.helpers import RESULT, randomize_weights, write_image_folder

NET = "shufflenet_v2_x0_5"


class FileServer(http.server.ThreadingHTTPServer):
    """Serves ``root``'s files; honours Range; sends only half of the files named in ``cut``
    (with the whole file's Content-Length, as a dropped connection does)."""

    def __init__(self, root):
        self.root, self.cut, self.requests = root, set(), []
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        name = os.path.basename(self.path)
        self.server.requests.append((name, self.headers.get("Range")))
        path = os.path.join(self.server.root, name)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        data = open(path, "rb").read()
        start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if name in self.server.cut:
            self.server.cut.discard(name)
            body = body[:len(body) // 2]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    root = tmp_path / "served"
    root.mkdir()
    httpd = FileServer(str(root))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("ZOO_MIRROR", f"http://127.0.0.1:{httpd.server_address[1]}/mirror")
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    yield httpd
    httpd.shutdown()


def publish(server, monkeypatch, network, data: bytes, make_record, name):
    """Serve ``data`` as ``name`` with its SHA-256 digits (``{name}-{digits}.{ext}``) and make
    it the only weights published of ``network``; returns the record."""
    stem, ext = name.rsplit(".", 1)
    file = f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.{ext}"
    with open(os.path.join(server.root, file), "wb") as f:
        f.write(data)
    record = make_record(file)
    import src.weights.pretrained
    monkeypatch.setattr(src.weights.pretrained, "published_weights",
                        lambda n: (record,) if n == network else ())
    return record


def mindcv_file(tmp_path, classes=3) -> bytes:
    """A checkpoint as MindCV writes it: its parameter names, no metadata of ours."""
    net = randomize_weights(create_network(NET, num_classes=classes, pool_pad="same"))
    path = str(tmp_path / "made.ckpt")
    ms.save_checkpoint(net, path)
    return open(path, "rb").read()


def test_download_verify_cache_eval_and_offline(server, monkeypatch, tmp_path, cli):
    data = mindcv_file(tmp_path)
    publish(server, monkeypatch, NET, data,
            lambda f: mindcv(f"shufflenet/{f}", 60.0, 80.0, num_classes=3), NET + ".ckpt")
    images = write_image_folder(str(tmp_path / "images"), per_class=1, classes=3, size=64)
    args = ("eval.py", "--pretrained", "mindcv", "--network", NET, "--dataset", "imagenet",
            "--dataset_path", images, "--image_size", "64")
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert RESULT.search(result.stdout) and "download: " in result.stdout
    cached = tmp_path / "home" / "weights" / f"{NET}-mindcv.ckpt"
    assert f"cached in {cached}" in result.stdout
    _, meta = read_checkpoint(str(cached))  # our record, with the pixels it expects
    assert (meta["network"], meta["num_classes"], meta["pool_pad"]) == (NET, 3, "same")
    assert (meta["dataset"], meta["image_size"], meta["input_norm"]) == ("imagenet", 224,
                                                                         "imagenet")
    # Offline: the server is gone, the cache answers.
    server.shutdown()
    server.server_close()
    result = cli(*args)
    assert result.returncode == 0 and "download: " not in result.stdout, result.stderr
    # Python: create_network(name, pretrained=TAG), the weights' classes.
    net = create_network(NET, pretrained="mindcv")
    assert net.classifier.weight.shape == (3, 1024)


def test_a_hash_mismatch_is_refused_and_deleted(server, monkeypatch, tmp_path, cli):
    publish(server, monkeypatch, NET, mindcv_file(tmp_path),
            lambda f: mindcv(f"shufflenet/{f}", 60.0, 80.0, num_classes=3), NET + ".ckpt")
    served = os.listdir(server.root)[0]
    with open(os.path.join(server.root, served), "ab") as f:
        f.write(b"tampered")
    result = cli("export.py", "--pretrained", "mindcv", "--network", NET)
    lines = result.error_lines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "does not have the SHA-256 its name gives" in lines[0] and "deleted" in lines[0]
    assert os.listdir(tmp_path / "home" / "weights") == []


def test_a_cut_download_leaves_nothing_loadable_and_resumes(server, monkeypatch, tmp_path):
    from src.errors import UserError
    from src.weights.pretrained import fetch
    data = mindcv_file(tmp_path)
    record = publish(server, monkeypatch, NET, data,
                     lambda f: mindcv(f"shufflenet/{f}", 60.0, 80.0, num_classes=3),
                     NET + ".ckpt")
    server.cut.add(record.file_name)
    with pytest.raises(UserError, match=f"cut off at {len(data) // 2} of {len(data)} bytes"):
        fetch(NET, "mindcv")
    weights = tmp_path / "home" / "weights"
    assert os.listdir(weights) == [record.file_name + ".partial"]  # no name a loader takes
    path = fetch(NET, "mindcv")  # continues where it stopped
    assert server.requests[-1] == (record.file_name, f"bytes={len(data) // 2}-")
    assert (weights / record.file_name).read_bytes() == data
    assert read_checkpoint(path)[1]["network"] == NET


def test_no_connection_unknown_tag_and_a_file_placed_by_hand(tmp_path, monkeypatch, cli):
    import src.weights.pretrained
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ZOO_MIRROR", "http://127.0.0.1:9")  # nothing listens on the discard port
    result = cli("eval.py", "--pretrained", "mindcv", "--network", NET)
    lines = result.error_lines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    real = src.weights.pretrained.find(NET, "mindcv")
    weights = tmp_path / "home" / "weights"
    assert lines[0].startswith("error: cannot download http://127.0.0.1:9/") and \
        f"place {real.file_name} in {weights} by hand" in lines[0]
    result = cli("train.py", "--network", NET, "--pretrained", "imagenet21k",
                 "--dataset_path", tmp_path)  # a folder: a missing one is refused first
    assert result.error_lines() == [
        f"error: no weights published as 'imagenet21k' for {NET} (--pretrained): give one of: "
        "mindcv, torchvision, megvii (python -m src.weights.pretrained lists them), or a "
        "checkpoint file"]
    # The file placed in the cache by hand, with the digits its name gives: used as it is.
    data = mindcv_file(tmp_path)
    file = f"{NET}-{hashlib.sha256(data).hexdigest()[:8]}.ckpt"
    weights.mkdir(parents=True, exist_ok=True)
    (weights / file).write_bytes(data)
    monkeypatch.setattr(src.weights.pretrained, "published_weights",
                        lambda n: (mindcv(f"shufflenet/{file}", 60.0, 80.0, 3),))
    assert read_checkpoint(src.weights.pretrained.fetch(NET, "mindcv"))[1]["num_classes"] == 3


def torch_source_file(kind, tmp_path):
    """A torchvision .pth or a timm .safetensors of random weights, and its PyTorch network."""
    torch = pytest.importorskip("torch", reason="torch==2.13.0 is in requirements-test.txt")
    from reference import torch_models as ref
    if kind == "torchvision":
        model = ref.randomize(ref.TorchvisionShuffleNetV2("0_5"), seed=4)
        path = tmp_path / "tv.pth"
        torch.save(model.state_dict(), path)
        return model, path.read_bytes()
    model = ref.randomize(ref.TimmMobileNetV1(), seed=5)
    return model, safetensors_bytes({k: v.numpy() for k, v in model.state_dict().items()})


def safetensors_bytes(state: dict) -> bytes:
    """The .safetensors layout: 8-byte header length, JSON header, the tensors' bytes."""
    header, blobs, offset = {}, [], 0
    for name, array in state.items():
        array = np.ascontiguousarray(array)
        dtype = {np.dtype("float32"): "F32", np.dtype("int64"): "I64"}[array.dtype]
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        blobs.append(array.tobytes())
        offset += array.nbytes
    head = json.dumps(header).encode()
    return len(head).to_bytes(8, "little") + head + b"".join(blobs)


@pytest.mark.parametrize("kind", ["torchvision", "timm"])
def test_converted_on_download_gives_the_logits_of_converting_by_hand(kind, server, monkeypatch,
                                                                      tmp_path, cli):
    torch = pytest.importorskip("torch", reason="torch==2.13.0 is in requirements-test.txt")
    model, data = torch_source_file(kind, tmp_path)
    network = "shufflenet_v2_x0_5" if kind == "torchvision" else "mobilenet_v1_100"
    if kind == "torchvision":
        publish(server, monkeypatch, network, data,
                lambda f: torchvision(f, 60.55, 81.75, 5.3), "shufflenetv2_x0.5.pth")
    else:
        data_name = "model.safetensors"
        (tmp_path / "served" / data_name).write_bytes(data)
        record = PublishedWeights("timm", f"https://huggingface.co/timm/m/resolve/main/"
                                  f"{data_name}", 75.38, 92.31, input_norm="inception")
        import src.weights.pretrained
        monkeypatch.setattr(src.weights.pretrained, "published_weights",
                            lambda n: (record,) if n == network else ())
        (tmp_path / "by_hand.safetensors").write_bytes(data)
    by_hand = tmp_path / "by_hand.ckpt"
    source = tmp_path / ("tv.pth" if kind == "torchvision" else "by_hand.safetensors")
    result = cli("convert_weights.py", "--source", kind, "--network", network, source, by_hand)
    assert result.returncode == 0, result.stderr
    x = ms.Tensor(np.random.RandomState(0).randn(2, 3, 224, 224).astype(np.float32))
    logits = []
    for pretrained in (kind, str(by_hand)):
        net = create_network(network, pretrained=pretrained, conv_impl="mindspore")
        net.set_train(False)
        logits.append(net(x).asnumpy())
    assert np.abs(logits[0] - logits[1]).max() == 0.0
    with torch.no_grad():
        expected = model(torch.from_numpy(x.asnumpy())).numpy()
    assert np.abs(logits[0] - expected).max() <= 1e-4
    _, meta = read_checkpoint(str(tmp_path / "home" / "weights" / f"{network}-{kind}.ckpt"))
    assert meta["input_norm"] == ("imagenet" if kind == "torchvision" else "inception")
