"""Our CPU kernels (kernels/, one C++ file a kind) as MindSpore ops with their gradients.

MindSpore 2.10's CPU depthwise and grouped convs are many times slower than PyTorch's, and its stem
conv and BatchNorm were most of a training step once those were fixed (docs/PERFORMANCE.md has the
figures). The files in ``kernels/`` (kernels.h lists them: depthwise, GEMM convs, BatchNorm, pools,
whole units) compute these layers with OpenMP, and the GEMMs of the 1x1 and dense convs with
oneDNN's sgemm from the libdnnl that MindSpore ships (portable loops when a MindSpore build has
none). They are compiled into one library once per machine on first use, with ``$CXX`` (default g++)
and ``-march=native``, into ``$ZOO_KERNEL_DIR`` (default ``~/.cache/mobile_cnn_zoo``), under a name
hashed from the sources, the flags and the CPU's features, so a changed source or another CPU builds
anew. When it cannot be built, ``library()`` returns None, says why in one line, and the layers use
MindSpore's operators.
Each kernel uses ``$ZOO_KERNEL_THREADS`` threads, by default every core the process may use
(not OMP_NUM_THREADS, which importing MindSpore sets to 1), from an OpenMP runtime of their own
(``_private_openmp``) that waits passively between kernels whatever was imported first.
"""
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

import mindspore as ms
from mindspore import ops

KERNEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC")
STRIDES = (1, 2)
MAX_KERNEL = 7  # kernels/depthwise.cc sums at most 64 taps per channel
_built = {}  # process-wide: the library path, or None once a build has failed


def library():
    """Path of the built kernel library, building it if needed; None (and one line saying
    why, printed once per process) when it cannot be built."""
    if "path" not in _built:
        path, reason = _build()
        if path is None:
            print(f"warning: fast CPU conv kernels unavailable ({reason}); using MindSpore's "
                  f"own convolutions, which are slower on CPU", flush=True)
        _built["path"] = path
    return _built["path"]


def _dnnl_dir():
    """MindSpore's lib folder when it holds libdnnl.so.3, else None."""
    lib = os.path.join(os.path.dirname(ms.__file__), "lib")
    return lib if os.path.isfile(os.path.join(lib, "libdnnl.so.3")) else None


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _build():
    """(path, None) of the library, built or found in the cache; (None, reason) on failure."""
    if platform.system() != "Linux":
        return None, f"built only on Linux, this is {platform.system()}"
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        return None, f"no C++ compiler {os.environ.get('CXX', 'g++')!r} on PATH; set CXX to one"
    folder = os.environ.get("ZOO_KERNEL_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "mobile_cnn_zoo")
    dnnl = _dnnl_dir()
    command = [compiler, *FLAGS]
    if dnnl:
        command += ["-DZOO_WITH_DNNL", f"-L{dnnl}", "-l:libdnnl.so.3", f"-Wl,-rpath,{dnnl}"]
    openmp = _private_openmp(compiler, folder)
    if openmp:  # before the driver's own -lgomp, which --as-needed then leaves out
        command += ["-Wl,--as-needed", f"-L{openmp}", f"-l:{PRIVATE_OPENMP}",
                    f"-Wl,-rpath,{openmp}"]
    names = sorted(os.listdir(KERNEL_DIR))  # the sources and kernels.h
    sources = [os.path.join(KERNEL_DIR, name) for name in names if name.endswith(".cc")]
    key = hashlib.sha256(" ".join(command).encode() + _cpu_features().encode())
    for name in names:
        with open(os.path.join(KERNEL_DIR, name), "rb") as src:
            key.update(name.encode() + b"\0" + src.read())
    path = os.path.join(folder, f"cpu_kernels-{key.hexdigest()[:16]}.so")
    if os.path.isfile(path):
        return path, None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, partial = tempfile.mkstemp(suffix=".so", prefix=".partial-", dir=folder)
        os.close(fd)
    except OSError as err:
        return None, f"cannot write to {folder}: {err.strerror}; set ZOO_KERNEL_DIR"
    # Sources and options first, libraries last (the linker resolves left to right).
    command = command[:len(FLAGS) + 1] + sources + ["-o", partial] + command[len(FLAGS) + 1:]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        os.unlink(partial)
        return None, f"{compiler} did not run: {err}"
    if done.returncode != 0:
        os.unlink(partial)
        lines = [line for line in done.stderr.splitlines() if "error" in line] or [""]
        return None, f"{os.path.basename(compiler)} failed: {lines[0].strip()[:200]}"
    os.replace(partial, path)  # concurrent builds (msrun ranks) each replace atomically
    print(f"built fast CPU conv kernels: {path}", flush=True)  # progress: stdout, as the rest
    return path, None


# Our kernels' own OpenMP runtime: the compiler's libgomp under a name of its own (the same
# length: only its SONAME changes). The dynamic linker shares one libgomp per process by that
# name, so with the real one the kernels ran on the runtime MindSpore loaded, whose wait policy
# was read when MindSpore was imported: a script that imported mindspore before src got
# threads that spin between kernels against MindSpore's own. The copy is loaded with the
# kernels, after src has set OMP_WAIT_POLICY=PASSIVE, and reads it then.
OPENMP = b"libgomp.so.1"
PRIVATE_OPENMP = "libzomp.so.1"


def _private_openmp(compiler: str, folder: str):
    """The folder holding the private copy of the compiler's OpenMP runtime (made once), or
    None where it cannot be made: then the kernels link the shared one, as before."""
    try:
        found = subprocess.run([compiler, "-print-file-name=libgomp.so"], capture_output=True,
                               text=True, timeout=60).stdout.strip()
        with open(os.path.realpath(found), "rb") as f:
            runtime = f.read()
    except (OSError, subprocess.SubprocessError):
        return None
    if runtime.count(OPENMP + b"\0") != 1:
        return None
    where = os.path.join(folder, f"openmp-{hashlib.sha256(runtime).hexdigest()[:12]}")
    target = os.path.join(where, PRIVATE_OPENMP)
    if not os.path.isfile(target):
        try:
            os.makedirs(where, exist_ok=True)
            fd, partial = tempfile.mkstemp(prefix=".partial-", dir=where)
            with os.fdopen(fd, "wb") as f:
                f.write(runtime.replace(OPENMP + b"\0", PRIVATE_OPENMP.encode() + b"\0"))
            os.replace(partial, target)
        except OSError:
            return None
    return where


def _op(name, out_shape, bprop=None):
    return ops.Custom(f"{library()}:{name}", out_shape=out_shape,
                      out_dtype=lambda first, *_: first, func_type="aot", bprop=bprop)


def _gradient_ops(prefix):
    """The bprop of a (x, w) -> y kernel: its input gradient and weight gradient kernels."""
    grad_input = _op(f"{prefix}GradInput", lambda dy, w, x: x)
    grad_weight = _op(f"{prefix}GradWeight", lambda dy, x, w: w)

    def bprop(x, w, _out, dout):
        return grad_input(dout, w, x), grad_weight(dout, x, w)
    return bprop


def conv_kernel(kind: str, stride: int = 1) -> tuple:
    """(the kernel's entry in kernels/, its output shape from the x and w shapes) of a conv
    ``kind``: "depthwise" or "dense" (k x k, padding k // 2, stride 1 or 2, odd k <= 7) or
    "1x1" (any number of groups, stride 1)."""
    if kind == "1x1":
        return "Conv1x1", lambda x, w: [x[0], w[0], x[2], x[3]]
    if stride not in STRIDES:
        raise ValueError(f"fast k x k conv takes stride {STRIDES}, not {stride}")

    def out_shape(x, w):
        k = w[2]
        return [x[0], w[0], (x[2] + 2 * (k // 2) - k) // stride + 1,
                (x[3] + 2 * (k // 2) - k) // stride + 1]
    return f"{'Depthwise' if kind == 'depthwise' else 'Dense'}S{stride}", out_shape


def conv_op(kind: str, stride: int = 1):
    """(x (N, Cin, H, W), w) -> the conv ``kind`` (see conv_kernel), with its gradients. Call
    only when ``library()`` is not None."""
    name, out_shape = conv_kernel(kind, stride)
    return _op(f"{name}Forward", out_shape, _gradient_ops(name))


# Inference: the eval-mode BatchNorm after a conv and the activation after it, in the conv's
# output pass (kernels.h's BatchNormActivation epilogue).
ACTIVATIONS = {None: "", "relu": "ReLU", "relu6": "ReLU6"}


def conv_bn_act_op(kind: str, stride: int = 1, activation=None):
    """(x, w, gamma, beta, moving mean, moving variance, eps (1,)) -> activation(BatchNorm(
    conv(x, w))) with BatchNorm's moving statistics, in one pass; ``activation`` None, "relu" or
    "relu6". Forward only (eval mode). Call only when ``library()`` is not None."""
    name, out_shape = conv_kernel(kind, stride)
    return _op(f"{name}BN{ACTIVATIONS[activation]}", lambda x, w, *_: out_shape(x, w))


def shufflenet_v2_unit_op(stride: int):
    """(x, then weight, gamma, beta, moving mean, moving variance of each conv of a ShuffleNetV2
    unit: main's three, then for stride 2 proj's two; eps (1,)) -> the unit's output, in eval
    mode, as one op (kernels/whole_units.cc's shufflenet_v2_unit; megvii's layout): stride 1
    concat(x's even channels, main(x's odd channels)), stride 2 concat(proj(x), main(x)). Forward
    only. Call only when ``library()`` is not None."""
    if stride not in STRIDES:
        raise ValueError(f"a ShuffleNetV2 unit has stride {STRIDES}, not {stride}")

    def out_shape(x, *tensors):
        main_out = tensors[10][0]
        if stride == 1:
            return [x[0], x[1] // 2 + main_out, x[2], x[3]]
        return [x[0], tensors[20][0] + main_out, (x[2] - 1) // 2 + 1, (x[3] - 1) // 2 + 1]
    return _op(f"ShuffleNetV2UnitS{stride}", out_shape)


def shufflenet_v1_unit_op(stride: int, shuffle_order: str):
    """(x, then weight, gamma, beta, moving mean, moving variance of a ShuffleNetV1 unit's three
    convs; eps (1,)) -> the unit's output, in eval mode, as one op
    (kernels/whole_units.cc's shufflenet_v1_unit; the channel shuffle in ``shuffle_order``
    "paper" or "megvii"): stride 1 ReLU(x + main(x)), stride 2
    ReLU(concat(avgpool(x), main(x))). Forward only. Call only when ``library()`` is not None."""
    if stride not in STRIDES:
        raise ValueError(f"a ShuffleNetV1 unit has stride {STRIDES}, not {stride}")

    def out_shape(x, *tensors):
        if stride == 1:
            return list(x)
        return [x[0], x[1] + tensors[10][0], (x[2] - 1) // 2 + 1, (x[3] - 1) // 2 + 1]
    order = "" if shuffle_order == "paper" else "Megvii"
    return _op(f"ShuffleNetV1UnitS{stride}{order}", out_shape)


def separable_block_op(stride: int, activation: str):
    """(x, then weight, gamma, beta, moving mean, moving variance of a 3x3 depthwise conv and of
    the 1x1 conv after it; eps (1,)) -> act(BN(1x1(act(BN(depthwise(x)))))) with ``activation``
    "relu" or "relu6", in eval mode, as one op (kernels/whole_units.cc's separable_block).
    Forward only. Call only when ``library()`` is not None."""
    if stride not in STRIDES:
        raise ValueError(f"a separable block has stride {STRIDES}, not {stride}")
    return _op(f"SeparableS{stride}BN{ACTIVATIONS[activation]}",
               lambda x, *tensors: [x[0], tensors[5][0], (x[2] - 1) // stride + 1,
                                    (x[3] - 1) // stride + 1])


def fully_connected_op(bias: bool):
    """(x (N, K), weight (M, K)[, bias (M,)]) -> x weight^T (+ bias), (N, M): ``nn.Dense``'s
    forward. Forward only (eval mode). Call only when ``library()`` is not None."""
    return _op("FullyConnectedBias" if bias else "FullyConnected",
               lambda x, w, *_: [x[0], w[0]])


def pool_op(kind: str):
    """x (N, C, H, W) -> the 3x3 stride-2 ``kind`` ("max" or "avg") pool of x padded with one
    row and column of zeros on each side (the average counts them), with its gradient (the
    max's to the first input of a window equal to its output). Call only when ``library()`` is
    not None."""
    name = f"{'Max' if kind == 'max' else 'Avg'}Pool3x3S2"
    grad = _op(f"{name}Grad", lambda dy, x, y: x)

    def bprop(x, out, dout):  # a def: graph mode parses a bprop's source
        return (grad(dout, x, out),)
    return _op(name, lambda x: [x[0], x[1], (x[2] - 1) // 2 + 1, (x[3] - 1) // 2 + 1], bprop)


def global_mean_op():
    """x (N, C, H, W) -> its mean over H and W, (N, C), with its gradient. Call only when
    ``library()`` is not None."""
    grad = _op("GlobalMeanGrad", lambda dy, x: x)

    def bprop(x, out, dout):
        return (grad(dout, x),)
    return _op("GlobalMean", lambda x: [x[0], x[1]], bprop)


def batch_norm_op(activation=None):
    """(x (N, C, H, W), gamma, beta, eps (1,)) -> (y, batch mean, 1 / sqrt(var + eps), biased
    batch variance): training-mode BatchNorm, with ``activation`` (None, "relu" or "relu6")
    applied to y as it is written, and the gradient of y (the activation's mask read from y).
    Call only when ``library()`` is not None."""
    name = f"BatchNorm{ACTIVATIONS[activation]}"
    grad = ops.Custom(f"{library()}:{name}Grad",
                      out_shape=lambda dy, x, gamma, mean, invstd, y: [x, gamma, gamma],
                      out_dtype=lambda dy, x, *_: [x, x, x], func_type="aot")

    def bprop(x, gamma, beta, eps, out, dout):
        dx, dgamma, dbeta = grad(dout[0], x, gamma, out[1], out[2], out[0])
        return dx, dgamma, dbeta, ops.zeros_like(eps)
    return ops.Custom(f"{library()}:{name}Forward",
                      out_shape=lambda x, gamma, beta, eps: [x, gamma, gamma, gamma],
                      out_dtype=lambda x, *_: [x, x, x, x], func_type="aot", bprop=bprop)
