"""The runtimes an exported ONNX file runs on: onnxruntime and OpenVINO (``runtime``: auto,
onnxruntime, openvino), each as a session with the graph's declared input and output shapes
and ``run(batch) -> logits``.

``auto`` takes, of the installed ones, the runtime that ran the file's family and kind (float32
or INT8) fastest at batch 32 in docs/DEPLOY.md's measurements (``FASTEST``), and says which
in one line. OpenVINO computes in float32 (INFERENCE_PRECISION_HINT f32): on a CPU with
bfloat16 its default would round every layer to bfloat16, and the logits would no longer be
the file's.
"""
import numpy as np

from src.errors import UserError

RUNTIMES = ("auto", "onnxruntime", "openvino")
INSTALL = {"onnxruntime": 'pip install onnxruntime "numpy<2"',
           "openvino": 'pip install openvino "numpy<2"'}


def check_runtime_applies(config, model_path: str) -> None:
    """One line when --runtime is given for a file that is not an exported .onnx."""
    kind = model_path.lower().rsplit(".", 1)[-1] if "." in model_path else model_path
    if "runtime" in config.explicit and kind != "onnx":
        raise UserError(f"--runtime {config.runtime} chooses how an exported .onnx runs, and "
                        f"this is a .{kind} file", model_path,
                        "drop --runtime, or give an .onnx file")


def installed(runtime: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(runtime) is not None


# (family, INT8) -> the runtime that ran our 1.0x network's file fastest at batch 32 in
# docs/DEPLOY.md's measurements (a 2-core AVX-512 CPU).
FASTEST = {("shufflenet_v1", False): "openvino", ("shufflenet_v1", True): "openvino",
           ("shufflenet_v2", False): "openvino", ("shufflenet_v2", True): "openvino",
           ("mobilenet_v1", False): "onnxruntime", ("mobilenet_v1", True): "openvino"}


def chosen_runtime(runtime: str, quantized: bool, family: str = "") -> str:
    """The runtime ``runtime`` names, or for auto the fastest installed one for the file's
    ``family`` and kind (a file of no known family: onnxruntime)."""
    if runtime != "auto":
        return runtime
    best = FASTEST.get((family, quantized), "onnxruntime")
    preferred = (best,) + tuple(r for r in RUNTIMES[1:] if r != best)
    return next((r for r in preferred if installed(r)), best)


def open_onnx(path: str, runtime: str, quantized: bool = False, family: str = ""):
    """A session of the ONNX file at ``path`` on ``runtime`` (RUNTIMES); one line when that
    runtime is not installed or cannot read the file."""
    name = chosen_runtime(runtime, quantized, family)
    if not installed(name):
        raise UserError(f"{name} is not installed", path, INSTALL[name] +
                        ("" if runtime == "auto" else ", or choose another --runtime"))
    session = (OpenVinoSession if name == "openvino" else OnnxRuntimeSession)(path)
    if runtime == "auto":
        kind = f"{family + ' ' if family else ''}{'INT8' if quantized else 'float32'} ONNX"
        other = "onnxruntime" if name == "openvino" else "openvino"
        print(f"runtime: {name}, the faster at batch 32 for a {kind} as docs/DEPLOY.md "
              f"measured it (--runtime {other} for the other)", flush=True)
    return session


class OnnxRuntimeSession:
    name = "onnxruntime"

    def __init__(self, path: str):
        import onnxruntime
        try:
            self.session = onnxruntime.InferenceSession(path)
        except Exception as err:  # onnxruntime raises its own error types
            raise UserError("not a loadable ONNX file", path,
                            "export it again with export.py") from err
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = list(self.session.get_inputs()[0].shape)
        self.output_shape = list(self.session.get_outputs()[0].shape)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


class OpenVinoSession:
    name = "openvino"

    def __init__(self, path: str):
        import openvino
        core = openvino.Core()
        try:
            model = core.read_model(path)
            self.compiled = core.compile_model(model, "CPU", {
                "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
        except Exception as err:  # OpenVINO raises RuntimeError and its own types
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
            raise UserError(f"OpenVINO cannot read the file ({first})", path,
                            "export it again with export.py, or give --runtime onnxruntime") \
                from err
        self.request = self.compiled.create_infer_request()
        self.input_shape = [d.get_length() if d.is_static else None
                            for d in model.inputs[0].get_partial_shape()]
        self.output_shape = [d.get_length() if d.is_static else None
                             for d in model.outputs[0].get_partial_shape()]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: batch})[0])
