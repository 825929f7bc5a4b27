"""Speed of our networks, and of MindCV's and PyTorch's same architectures, measured in one run.

Each implementation lives in its own worker process (so its threads, memory peak and compile
cache are its own), builds its network, compiles and warms up; then the parent asks the workers
in turn, A B A B ..., for ``steps`` timed steps each. On a noisy machine the ratio of two
neighbouring rounds holds better than two separate runs. Modes:
- train: one optimizer step (forward, loss, backward, Momentum update) on a fixed batch, at
  each batch size of ``--batch_size`` (a comma list sweeps: 8,16,32,64); then train.py itself
  on a generated JPEG folder at each batch size, its figure the median of its own progress
  lines' images/s (what a user's run reports: the data pipeline, the loss scale, weight decay
  and the callbacks included; ``--no_train_py`` leaves it out);
- infer: every way to run a trained network, at batch 1 (median and 90th-percentile latency)
  and at ``--batch_size`` (images/s), A B A B: ours (what eval.py and infer.py run: graph mode
  with our kernels, each conv with its BatchNorm and activation in one kernel), standard (ours
  on MindSpore's operators), mindir (export.py's MINDIR in a GraphCell), onnx (export.py's ONNX
  in onnxruntime), MindCV's network in graph mode, PyTorch eager under no_grad;
- data: the ImageNet-folder training pipeline (decode, random crop, flip, colour, normalise)
  with the configured workers, batches per second times the batch;
- layer / layer_infer: one layer (``--layer``) forward and backward / forward only, on a
  ShuffleNetV2 1.0x stage-3 tensor (batch x 232 x 28 x 28; the stem on the batch of images):
  ours (our kernels), standard (MindSpore's operators as our layers use them without our
  kernels) and PyTorch's layer; CPU only, as our kernels are.
Each implementation's figures say where it ran (``device``): MindSpore's on --device_target,
onnxruntime on the CPU, PyTorch on the GPU when --device_target is GPU and its CUDA build sees
one, else on the CPU.
``--model FILE`` (infer mode) times an exported file of the user's too, as "file" (a MINDIR,
an ONNX, an INT8 ONNX), run as infer.py runs it; its graph's input size and batch are checked
against --image_size and --batch_size, and fill them in when they are not given.
"""
import functools
import importlib.util
import json
import math
import multiprocessing as mp
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from src.cli import ArgumentParser
from src.errors import UserError

# "standard": ours built from standard operators only (our CPU kernels off). Infer mode adds
# the exported files: "mindir" (GraphCell), "onnx" (onnxruntime) and "openvino" (the ONNX file).
IMPLEMENTATIONS = ("ours", "standard", "mindir", "onnx", "openvino", "mindcv", "torch")
# ours again, as in a script that imports mindspore before src (asked for by name only)
MINDSPORE_FIRST = "mindspore_first"
# filled in after parsing: a given one is seen; --batch_size is a list (train mode sweeps it)
DEFAULTS = {"batch_size": [32], "image_size": 224}
INFER_ONLY = ("mindir", "onnx", "openvino")
JPEG_CLASSES = 4  # the class folders of write_jpeg_folder's generated images
# --layer: (in channels, out channels, kernel, stride, group, side); batch_norm: channels, side.
LAYERS = {"depthwise": (232, 232, 3, 1, 232, 28), "depthwise_s2": (232, 232, 3, 2, 232, 28),
          "grouped_g3": (231, 231, 1, 1, 3, 28), "pointwise": (232, 232, 1, 1, 1, 28),
          "stem": (3, 24, 3, 2, 1, 224), "batch_norm": (232, 232, 1, 1, 1, 28)}


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="benchmark.py", allow_abbrev=False, description=__doc__.split("\n")[0])
    p.add_argument("--network", default="shufflenet_v2_x1_0")
    p.add_argument("--mode", default="train",
                   choices=("train", "infer", "data", "layer", "layer_infer"))
    p.add_argument("--layer", default="depthwise", choices=tuple(LAYERS),
                   help="layer modes: the layer timed")
    p.add_argument("--batch_size", type=batch_list, default=None,
                   help="default 32; train mode takes a comma list to sweep (8,16,32,64)")
    p.add_argument("--image_size", type=int, default=None, help="default 224")
    p.add_argument("--model", default="", help="infer mode: an exported .mindir or .onnx file "
                   "(export.py's) timed beside the others as 'file'")
    p.add_argument("--runtime", default="auto", choices=("auto", "onnxruntime", "openvino"),
                   help="--model FILE.onnx: the runtime it runs on, as infer.py's --runtime")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=2, help="A B A B rounds of --steps each")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the compile")
    p.add_argument("--device_target", default="CPU", help="as train.py's")
    p.add_argument("--compare", default=None, help="comma list of standard (ours with our "
                   "CPU kernels off), mindir, onnx, openvino (infer mode: the exported files; "
                   "openvino runs the ONNX one), mindcv, "
                   "torch, mindspore_first (ours in a process that imports mindspore before "
                   "src): timed in the same run (one that is not importable is skipped with a "
                   "line); default: none, and every one but mindspore_first in infer mode")
    p.add_argument("--conv_impl", default="auto",
                   help="ours: how the 1x1 and depthwise convs are computed, as train.py's")
    p.add_argument("--jit_level", default="", choices=("", "O0", "O1", "O2"),
                   help="ours and MindCV: GRAPH_MODE jit level ('' = MindSpore's default)")
    p.add_argument("--data_path", default="", help="data mode: a folder with train/<class>/; "
                   "default: a generated folder of 256 JPEGs of 500x375")
    p.add_argument("--num_parallel_workers", type=int, default=0, help="data mode: 0 = cores")
    p.add_argument("--auto_augment", default="", help="data mode: train.py's policy on top "
                   "(randaug-m9-mstd0.5-inc1, autoaug, trivialaugwide)")
    p.add_argument("--re_prob", type=float, default=0.0,
                   help="data mode: train.py's random erasing chance")
    p.add_argument("--no_train_py", action="store_true",
                   help="train mode: leave out the train.py runs (in-process steps only)")
    p.add_argument("--json", default="", help="write the figures to this file")
    return p


def batch_list(text: str) -> list:
    """'32' -> [32]; '8,16,32' -> [8, 16, 32] (argparse's type: a ValueError is its error)."""
    return [int(part) for part in text.split(",") if part.strip()]


# The keys the benchmark shares with train.py: their values follow the config's rules.
CONFIG_KEYS = ("network", "device_target", "conv_impl", "image_size", "auto_augment", "re_prob")


def check(args) -> None:
    from src.model_utils.config import check_value
    args.explicit = {k for k in DEFAULTS if getattr(args, k) is not None}
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.batch_sizes = list(dict.fromkeys(args.batch_size))  # the sweep, in the order given
    if not args.batch_sizes:
        raise UserError("no batch size given", "--batch_size", "give one, e.g. 32")
    if len(args.batch_sizes) > 1 and args.mode != "train":
        raise UserError("a sweep of batch sizes is timed in train mode only", "--batch_size",
                        "give one batch size, or --mode train")
    args.batch_size = args.batch_sizes[0]  # the headline figures' batch
    for key in CONFIG_KEYS:
        check_value(key, getattr(args, key), f"--{key}")
    for key, value in (("batch_size", min(args.batch_sizes)), ("steps", args.steps),
                       ("rounds", args.rounds)):
        if value < 1:
            raise UserError(f"{key} must be at least 1", f"--{key}", "give a positive number")
    check_compared(args)
    if args.model:
        check_model_file(args)


def check_compared(args) -> None:
    """--compare against --mode and --device_target."""
    unknown = [c for c in compared(args) if c not in IMPLEMENTATIONS[1:] + (MINDSPORE_FIRST,)]
    if unknown:
        raise UserError(f"unknown reference {unknown[0]!r}", "--compare",
                        f"give {', '.join(IMPLEMENTATIONS[1:] + (MINDSPORE_FIRST,))}")
    if args.mode != "infer" and set(compared(args)) & set(INFER_ONLY):
        raise UserError("mindir, onnx and openvino are timed in infer mode only", "--compare",
                        "give --mode infer, or standard, mindcv, torch")
    if args.mode.startswith("layer") and args.device_target != "CPU":
        raise UserError(f"the layer modes time our CPU kernels, which do not run on "
                        f"{args.device_target}", "--mode",
                        "give --device_target CPU, or --mode train or infer on the device")
    if args.mode.startswith("layer") and "mindcv" in compared(args):
        raise UserError("MindCV is not timed layer by layer", "--compare",
                        "give standard, torch in the layer modes")


def check_model_file(args) -> None:
    """The --model file against its own graph (src.deploy.predictor's checks): a given
    --image_size or --batch_size that contradicts it is one line; one not given is the file's."""
    if args.mode != "infer":
        raise UserError("an exported file is timed in infer mode only", "--model",
                        "give --mode infer")
    from src.deploy.predictor import Predictor
    from src.model_utils.config import get_config
    config = get_config(([f"--image_size={args.image_size}"] if "image_size" in args.explicit
                         else []) + runtime_flag(args))
    batch = args.batch_size if "batch_size" in args.explicit else None
    predictor = Predictor(args.model, config, batch_size=batch)
    args.image_size = predictor.exported_side(args.model)
    args.batch_size = predictor.fixed_batch or args.batch_size


def runtime_flag(args) -> list:
    """--runtime as the config takes it, when one is chosen (auto: none)."""
    return [] if args.runtime == "auto" else [f"--runtime={args.runtime}"]


def compared(args) -> list:
    if args.compare is None:
        return list(IMPLEMENTATIONS[1:]) if args.mode == "infer" else []
    return [c.strip() for c in args.compare.split(",") if c.strip()]


def _file_setup(args) -> dict:
    """{batch: the timed call} of the --model file, as infer.py runs it (a fixed-batch file
    gets batch 1 padded to its batch)."""
    from src.deploy.predictor import Predictor
    from src.model_utils.config import get_config
    predictor = Predictor(args.model, get_config(runtime_flag(args)))
    return {batch: functools.partial(predictor.logits, np.random.rand(
        batch, 3, args.image_size, args.image_size).astype(np.float32)) for batch in shapes(args)}


def shapes(args) -> list:
    """The batch sizes each implementation is timed at: the sweep's (train), the batch and
    batch 1 (infer: latency), the batch (the other modes)."""
    if args.mode == "train":
        return args.batch_sizes
    return [1, args.batch_size] if args.mode == "infer" and args.batch_size > 1 \
        else [args.batch_size]


# ---- the workers: each builds one implementation and times steps on request

def _mindspore_setup(args, impl) -> dict:
    """{batch: the timed call} of ours, standard or MindCV (train, infer), and of the exported
    MINDIR (infer)."""
    import mindspore as ms
    from mindspore import nn

    from src.device import use_device
    use_device(args.device_target, args.conv_impl if impl == "ours" else "mindspore")
    if args.jit_level:
        ms.set_context(jit_config={"jit_level": args.jit_level})
    if impl == "mindcv":
        import mindcv
        net = mindcv.create_model(args.network, num_classes=1000)
    else:
        from src.deploy.exporter import EXPORT_CONV_IMPL
        from src.models import create_network
        conv_impl = {"ours": args.conv_impl, "standard": "mindspore"}.get(impl) or \
            EXPORT_CONV_IMPL["MINDIR" if impl == "mindir" else "ONNX"]  # export.py's network
        net = create_network(args.network, num_classes=1000, conv_impl=conv_impl)
    if args.mode == "train":
        loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        opt = nn.Momentum(net.trainable_params(), 0.01, 0.9)
        step = nn.TrainOneStepCell(nn.WithLossCell(net, loss), opt)
        step.set_train()
        calls = {}
        for batch in shapes(args):  # graph mode compiles one graph a shape
            x = ms.Tensor(np.random.rand(batch, 3, args.image_size, args.image_size)
                          .astype(np.float32))
            y = ms.Tensor(np.random.randint(0, 1000, batch).astype(np.int32))
            calls[batch] = lambda x=x, y=y: step(x, y).asnumpy()
        return calls
    net.set_train(False)
    if impl in INFER_ONLY:
        net = _exported(args, net, impl)
    calls = {}
    for batch in shapes(args):
        x = np.random.rand(batch, 3, args.image_size, args.image_size).astype(np.float32)
        calls[batch] = functools.partial(net, x) if impl in ("onnx", "openvino") else \
            functools.partial(lambda data: net(data).asnumpy(), ms.Tensor(x))
    return calls


def _exported(args, net, impl):
    """``net`` as export.py writes it (BatchNorm folded, the batch open) and as a deployment
    runs the file: a GraphCell on the MINDIR, or an onnxruntime or OpenVINO session on the ONNX
    file (infer.py's)."""
    import mindspore as ms

    from src.deploy.exporter import write_model
    from src.deploy.runtimes import open_onnx
    side = args.image_size
    fmt = "MINDIR" if impl == "mindir" else "ONNX"
    path = write_model(net, fmt, os.path.join(tempfile.mkdtemp(), "net"), side, side)
    if impl == "mindir":
        return ms.nn.GraphCell(ms.load(path))
    return open_onnx(path, "onnxruntime" if impl == "onnx" else "openvino").run


def _mindspore_first_setup(args) -> dict:
    """Ours as a user's script that imports mindspore before src runs it: MindSpore's OpenMP
    runtime reads no wait policy (the one src set in this benchmark's environment is taken
    away first), then src's import sets it, as it does after mindspore."""
    if "mindspore" in sys.modules:
        raise RuntimeError("mindspore was loaded before this worker could import it first")
    _default_wait_policy()
    import mindspore  # noqa: F401  (first, as the script does)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # what importing src does next
    return _mindspore_setup(args, "ours")


def _default_wait_policy() -> None:
    """OpenMP's own default wait policy for what this worker loads next: the one src set in the
    benchmark's environment (ZOO_OMP_WAIT_POLICY_SET marks it) is taken away; a user's is kept."""
    if os.environ.pop("ZOO_OMP_WAIT_POLICY_SET", None):
        os.environ.pop("OMP_WAIT_POLICY", None)


def _torch_defaults():
    """PyTorch with its own threading defaults: every core (a process spawned by one that has
    imported MindSpore starts with 1 thread) and OpenMP's default wait policy, not the one
    src/__init__.py sets for our kernels."""
    _default_wait_policy()
    import torch

    from src.dataset import cpu_count
    torch.set_num_threads(cpu_count())
    return torch


def _layer_setup(args, impl):
    """One layer's forward (layer_infer) or forward and backward (layer) for ``impl``."""
    cin, cout, k, stride, group, side = LAYERS[args.layer]
    x = np.random.rand(args.batch_size, cin, side, side).astype(np.float32)
    wants_dx = args.layer != "stem"  # a stem's input is the data
    if impl == "torch":
        torch = _torch_defaults()
        layer = torch.nn.BatchNorm2d(cin) if args.layer == "batch_norm" else \
            torch.nn.Conv2d(cin, cout, k, stride, k // 2, groups=group, bias=False)
        inputs = torch.from_numpy(x).requires_grad_(wants_dx and args.mode == "layer")
        if args.mode == "layer_infer":
            layer.train(args.layer == "batch_norm")  # BatchNorm as training computes it

            def infer():
                with torch.no_grad():
                    return layer(inputs).numpy()
            return infer

        cotangent = torch.rand(layer(inputs).shape)

        def step():
            layer.zero_grad()
            layer(inputs).backward(cotangent)
            return float(layer.weight.grad[0].sum())
        return step
    import mindspore as ms
    from mindspore import nn, ops

    from src.device import use_device
    from src.models.layers import BatchNorm, Conv1x1, ConvKxK
    use_device(args.device_target)
    conv_impl = "ours" if impl == "ours" else "mindspore"
    if args.layer == "batch_norm":
        layer = BatchNorm(cin, conv_impl)
    elif k == 1:
        layer = Conv1x1(cin, cout, group, conv_impl)
    else:
        layer = ConvKxK(cin, cout, k, stride, group, conv_impl)
    inputs = ms.Tensor(x)
    layer.set_train(args.mode == "layer" or args.layer == "batch_norm")  # BN: training's
    if args.mode == "layer_infer":
        return lambda: layer(inputs).asnumpy()
    # The backward from a given output gradient, as in a network, without a loss's own cost
    # (MindSpore's CPU ReduceSum of this tensor alone is slower than many layers it would time).
    cotangent = ms.Tensor(np.random.rand(*layer(inputs).shape).astype(np.float32))

    class Backward(nn.Cell):
        def __init__(self):
            super().__init__()
            self.layer, self.weights = layer, ms.ParameterTuple(layer.trainable_params())
            self.grad = ops.GradOperation(get_all=wants_dx, get_by_list=True, sens_param=True)

        def construct(self, data, dy):  # the output too: the backward alone would not need it
            return self.layer(data), self.grad(self.layer, self.weights)(data, dy)
    backward = Backward()

    def step():
        output, grads = backward(inputs, cotangent)  # grads: (inputs', weights') or weights'
        return output.asnumpy(), (grads[1] if wants_dx else grads)[0].asnumpy()
    return step


def torch_device(args, torch) -> str:
    """Where PyTorch runs beside ours: its GPU when ours runs on one and its CUDA build sees
    one, else the CPU (PyTorch has no Ascend backend here)."""
    return "cuda" if args.device_target == "GPU" and torch.cuda.is_available() else "cpu"


def _torch_setup(args) -> dict:
    torch = _torch_defaults()
    from reference.torch_models import torch_network
    device = torch_device(args, torch)
    net = torch_network(args.network).to(device)

    def batch_of(batch):
        return torch.rand(batch, 3, args.image_size, args.image_size, device=device)
    if args.mode == "train":
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        net.train()

        def step(x, y):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            return loss.item()  # waits for the device
        return {batch: functools.partial(step, batch_of(batch),
                                         torch.randint(0, 1000, (batch,), device=device))
                for batch in shapes(args)}
    net.eval()

    def infer(x):
        with torch.no_grad():
            return net(x).cpu().numpy()
    return {batch: functools.partial(infer, batch_of(batch)) for batch in shapes(args)}


def runs_on(args, impl: str) -> str:
    """The device ``impl`` runs on in this benchmark (worker side: PyTorch is imported)."""
    if impl == "torch":
        import torch
        return "GPU" if torch_device(args, torch) == "cuda" else "CPU"
    if impl in ("onnx", "openvino") or (impl == "file" and args.model.endswith(".onnx")):
        return "CPU"  # onnxruntime's CPU execution provider
    return args.device_target


def _data_setup(args):
    from src.dataset import create_dataset
    from src.model_utils.config import get_config
    path = args.data_path or write_jpeg_folder(tempfile.mkdtemp())
    config = get_config(["--dataset", "imagenet", "--dataset_path", path, "--network",
                         args.network, "--image_size", str(args.image_size), "--batch_size",
                         str(args.batch_size), "--num_parallel_workers",
                         str(args.num_parallel_workers), "--auto_augment", args.auto_augment,
                         "--re_prob", str(args.re_prob)])
    data = create_dataset(config, training=True)
    iterator = data.create_tuple_iterator(num_epochs=-1, output_numpy=True)

    def next_batch():
        try:
            return next(iterator)
        except StopIteration:  # the end of an epoch: the next call starts the next one
            return next(iterator)
    return next_batch


def linked_subset(source: str, root: str, count: int) -> str:
    """root/train/<class>/: links to the first ``count`` images of write_jpeg_folder's
    ``source`` (one epoch of a given length, without writing the images again)."""
    for i in range(count):
        path = jpeg_path(root, i)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(jpeg_path(source, i), path)
    return root


def jpeg_path(root: str, i: int) -> str:
    """Where write_jpeg_folder puts image ``i``: root/train/class_<i mod classes>/<i>.jpg."""
    return os.path.join(root, "train", f"class_{i % JPEG_CLASSES}", f"{i}.jpg")


def write_jpeg_folder(root: str, count: int = 256) -> str:
    """root/train/<class>/*.jpg: ``count`` 500x375 JPEGs, ImageNet's typical size and quality."""
    from PIL import Image
    rng = np.random.RandomState(0)
    base = rng.randint(0, 256, (375 // 8 + 1, 500 // 8 + 1, 3)).astype(np.uint8)
    for i in range(count):
        path = jpeg_path(root, i)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # smooth-ish content compresses like a photograph, not like noise
        small = np.roll(base, i, axis=1)
        image = Image.fromarray(small).resize((500, 375), Image.BILINEAR)
        image.save(path, quality=90)
    return root


def _setup(args, impl) -> dict:
    """{batch: the timed call} of ``impl`` in this mode."""
    if args.mode == "data":
        return {args.batch_size: _data_setup(args)}
    if args.mode.startswith("layer"):
        return {args.batch_size: _layer_setup(args, impl)}
    if impl == "torch":
        return _torch_setup(args)
    if impl == "file":
        return _file_setup(args)
    if impl == MINDSPORE_FIRST:
        return _mindspore_first_setup(args)
    return _mindspore_setup(args, impl)


def _worker(args, impl, pipe):
    """Set up ``impl``, report the compile (the first call of each shape) time, then time calls
    on request: (batch, count) -> the count times of that batch's call."""
    try:
        started = time.perf_counter()
        calls = _setup(args, impl)
        for call in calls.values():
            call()  # graph mode compiles on the first call of each shape
        compile_s = time.perf_counter() - started
        for call in calls.values():
            for _ in range(args.warmup):
                call()
        pipe.send(("ready", (compile_s, runs_on(args, impl))))
        while True:
            request = pipe.recv()
            if request is None:
                break
            batch, count = request
            times = []
            for _ in range(count):
                begin = time.perf_counter()
                calls[batch]()
                times.append(time.perf_counter() - begin)
            pipe.send(("times", times))
        pipe.send(("rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    except Exception as err:  # reported by the parent as that implementation's failure
        first_line = str(err).splitlines()[0] if str(err) else ""
        pipe.send(("error", f"{type(err).__name__}: {first_line}"))


def available(impl: str) -> str:
    """'' if ``impl`` can run here, else why not. Looks the package up without importing it:
    only its worker process loads it."""
    package = {"mindir": "mindspore", "onnx": "onnxruntime"}.get(impl, impl)  # openvino: its own
    if impl in ("ours", "standard", "file", MINDSPORE_FIRST) or \
            importlib.util.find_spec(package) is not None:
        return ""
    return f"{package} is not importable"


def _start_worker(context, args, impl) -> tuple:
    """((process, pipe), its first figures) of the worker of ``impl``, set up and warmed up."""
    parent, child = context.Pipe()
    process = context.Process(target=_worker, args=(args, impl, child), daemon=True)
    process.start()
    kind, value = parent.recv()  # set-ups one at a time, so compiles are not slowed down
    if kind == "error":
        process.join()
        raise UserError(f"{impl} failed to set up: {value}", args.network,
                        "run with --debug, or leave it out of --compare")
    compile_s, device = value
    print(f"benchmark: {impl} on {device} compiled and warmed up in {compile_s:.1f} s",
          flush=True)
    return (process, parent), {"compile_s": round(compile_s, 2), "device": device}


def result_header(args) -> dict:
    """What the run timed, with what, on what machine (the figures' JSON, before them)."""
    result = {"network": args.network, "mode": args.mode, "batch_size": args.batch_size,
              "image_size": args.image_size, "steps": args.steps, "rounds": args.rounds,
              "device_target": args.device_target, "conv_impl": args.conv_impl,
              "jit_level": args.jit_level or "default",
              "layer": args.layer if args.mode.startswith("layer") else "",
              "model": os.path.abspath(args.model) if args.model else "",
              "machine": machine(), "results": {}, "ratios": {}}
    if args.mode == "train":
        result["batch_sizes"] = args.batch_sizes
    if args.mode == "data":
        result.update(auto_augment=args.auto_augment, re_prob=args.re_prob)
    return result


def run_benchmark(args) -> dict:
    """Time ours (and the references) as ``args`` says; returns the figures."""
    impls = ["ours"] + ([] if args.mode == "data" else compared(args)) + \
        (["file"] if args.model else [])
    context = mp.get_context("spawn")
    workers, result = {}, result_header(args)
    for impl in impls:
        why = available(impl)
        if why:
            print(f"benchmark: {impl} skipped: {why}", flush=True)
            continue
        workers[impl], result["results"][impl] = _start_worker(context, args, impl)
    times = {impl: {batch: [] for batch in shapes(args)} for impl in workers}
    for _ in range(args.rounds):  # A B A B ..., each shape in turn
        for batch in shapes(args):
            for impl, (_, pipe) in workers.items():
                pipe.send((batch, args.steps))
                kind, value = pipe.recv()
                if kind == "error":
                    raise UserError(f"{impl} failed: {value}", args.network, "run with --debug")
                times[impl][batch].append(value)
    for impl, (process, pipe) in workers.items():
        pipe.send(None)
        _, rss = pipe.recv()
        process.join(timeout=60)
        result["results"][impl].update(summary(args, times[impl]), peak_rss_mb=round(rss, 1))
    for impl in workers:
        if impl != "ours":
            result["ratios"][f"ours/{impl}"] = side_by_side(args, times["ours"], times[impl])
    if args.mode == "train" and not args.no_train_py:
        ours = result["results"]["ours"]["by_batch"]
        figures = result["results"]["train.py"] = time_train_py(args)
        by_batch = {b: round(f["images_per_s"] / ours[b]["images_per_s"], 3)
                    for b, f in figures["by_batch"].items()}
        # train.py's runs come after the rounds: its figure over the in-process one, 1.0 no gap
        result["ratios"]["train.py/ours"] = {"median": by_batch[str(args.batch_size)],
                                             "by_batch": by_batch}
    return result


def summary(args, times: dict) -> dict:
    """A worker's figures from its ``times`` ({batch: [each round's step times]}): the headline
    batch's step_times, ms_per_step and images_per_s; in train mode every batch's (by_batch); in
    infer mode batch 1's latency, median and 90th percentile."""
    figures = {"step_times": times[args.batch_size], **rate(args.batch_size,
                                                            times[args.batch_size])}
    if args.mode == "train":
        figures["by_batch"] = {str(batch): rate(batch, rounds) for batch, rounds in times.items()}
    if args.mode == "infer":  # batch 1: the latency a single image waits
        latencies = sorted(t for rounds in times[min(times)] for t in rounds)
        figures.update({"b1_ms_median": round(statistics.median(latencies) * 1000, 2),
                        "b1_ms_p90": round(latencies[math.ceil(0.9 * len(latencies)) - 1]
                                           * 1000, 2)})  # nearest rank
    return figures


def rate(batch: int, rounds: list) -> dict:
    """The median step of ``rounds`` (lists of seconds) as ms and images/s."""
    median = statistics.median(t for times in rounds for t in times)
    return {"ms_per_step": round(median * 1000, 2), "images_per_s": round(batch / median, 2)}


def side_by_side(args, mine: dict, theirs: dict) -> dict:
    """ours / theirs images/s: each round's ratio (the two ran side by side in it) and the
    median over rounds, of the headline batch; in train mode every batch's median too."""
    def per_round(batch):
        return [statistics.median(b) / statistics.median(a)
                for a, b in zip(mine[batch], theirs[batch], strict=True)]
    pairs = per_round(args.batch_size)
    ratio = {"per_round": [round(r, 3) for r in pairs],
             "median": round(statistics.median(pairs), 3)}
    if args.mode == "train":
        ratio["by_batch"] = {str(b): round(statistics.median(per_round(b)), 3) for b in mine}
    return ratio


# train.py's progress line (src/training/callbacks.py's ProgressMonitor) and the figure it reports
PROGRESS_RATE = re.compile(r"^epoch: \d+ step: \d+, .*images/s: ([\d.]+|\?), eta: ", re.M)


def time_train_py(args) -> dict:
    """train.py itself, at each batch size: default_config_imagenet.yaml's recipe for
    ``args.network`` on a generated folder of 500x375 JPEGs (decoded, cropped and jittered by
    its pipeline as ImageNet's are), one epoch of ``1 + warmup + steps x rounds`` steps, a
    progress line each step; its figure is the median of the lines' images/s after the first
    ``1 + warmup`` (the first has none: it holds the compile)."""
    skip = 1 + args.warmup
    steps = skip + args.steps * args.rounds
    root = tempfile.mkdtemp(prefix="benchmark-train-py-")
    images = write_jpeg_folder(os.path.join(root, "images"), count=max(args.batch_sizes) * steps)
    from src.model_utils.config import REPO_ROOT
    script = os.path.join(REPO_ROOT, "train.py")
    figures = {"by_batch": {}}
    for batch in args.batch_sizes:
        data = linked_subset(images, os.path.join(root, f"data-{batch}"), batch * steps)
        command = [sys.executable, script, "--config_path", os.path.join(
                       os.path.dirname(script), "default_config_imagenet.yaml"),
                   "--network", args.network, "--dataset_path", data,
                   "--image_size", str(args.image_size), "--batch_size", str(batch),
                   "--epoch_size", "1", "--log_interval", "1", "--save_checkpoint", "False",
                   "--conv_impl", args.conv_impl, "--device_target", args.device_target,
                   "--output_path", os.path.join(root, f"run-{batch}")]
        print(f"benchmark: train.py at batch {batch} ({steps} steps)", flush=True)
        done = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "GLOG_v": "3"})
        rates = [float(r) for r in PROGRESS_RATE.findall(done.stdout) if r != "?"][skip - 1:]
        if done.returncode != 0 or not rates:
            lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
            raise UserError(f"train.py failed at batch {batch}: {lines[-1][:300]}",
                            " ".join(command[1:]), "run that command to see why")
        figures["by_batch"][str(batch)] = {"images_per_s": round(statistics.median(rates), 2),
                                           "progress_rates": rates}
    figures["images_per_s"] = figures["by_batch"][str(args.batch_size)]["images_per_s"]
    figures["command"] = "train.py " + " ".join(command[2:])
    shutil.rmtree(root, ignore_errors=True)
    return figures


def machine() -> dict:
    import mindspore

    from src.dataset import cpu_count
    info = {"cpu_count": cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "mindspore": mindspore.__version__}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f
                               if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def report(result: dict) -> None:
    unit = "batch" if result["mode"] == "data" else "step"
    subject = f"{result['layer']} layer" if result["layer"] else \
        f"{result['network']} at {result['image_size']}"
    for impl, figures in result["results"].items():
        label = "data pipeline" if result["mode"] == "data" else \
            f"{impl} ({figures.get('device', result['device_target'])})"
        if impl == "train.py":
            for batch, each in figures["by_batch"].items():
                print(f"train.py: {subject} train batch {batch}: {each['images_per_s']} "
                      f"images/s (the median of its progress lines)", flush=True)
            continue
        latency = f"batch 1: {figures['b1_ms_median']} ms (median), {figures['b1_ms_p90']} ms " \
                  f"(90th percentile); " if "b1_ms_median" in figures else ""
        print(f"{label}: {subject} {result['mode']} {latency}batch {result['batch_size']}: "
              f"{figures['images_per_s']} images/s, "
              f"{figures['ms_per_step']} ms per {unit} (median), compile "
              f"{figures['compile_s']} s, peak memory {figures['peak_rss_mb']} MB", flush=True)
        for batch, each in list(figures.get("by_batch", {}).items())[1:]:
            print(f"{label}: {subject} {result['mode']} batch {batch}: {each['images_per_s']} "
                  f"images/s, {each['ms_per_step']} ms per {unit} (median)", flush=True)
    for name, ratio in result["ratios"].items():
        rounds = f" (per round {ratio['per_round']})" if "per_round" in ratio else ""
        batches = f"; by batch {ratio['by_batch']}" if len(ratio.get("by_batch", ())) > 1 \
            or name == "train.py/ours" else ""
        print(f"ratio {name} (images/s): {ratio['median']}{rounds}{batches}", flush=True)


def benchmark_command(argv) -> dict:
    """benchmark.py: parse, check, run, print, and write --json."""
    args = parser().parse_args(argv)
    check(args)
    if args.json:
        from src.errors import writable_folder
        writable_folder(os.path.dirname(os.path.abspath(args.json)), "--json")
    result = run_benchmark(args)
    report(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return result
