"""MindSpore model zoo for efficient mobile CNNs: ShuffleNetV1, ShuffleNetV2, MobileNetV1.

Importing it sets two environment variables before MindSpore loads (every entry point imports
``src`` first); a value the user set is kept:
- ``GLOG_v=3``: MindSpore's own C++ log shows errors only. Its warnings (some 50 lines of
  "ANALYZER ... side effect nodes were eliminated" at each compile) say nothing a user can act
  on; ``--debug`` on any entry point, or ``GLOG_v=2`` (1 = info), shows them again.
- ``OMP_WAIT_POLICY=PASSIVE``: our CPU kernels (src/models/kernels/) run on OpenMP threads. Spinning
  between kernels, they take the cores from MindSpore's own ops (docs/PERFORMANCE.md has the
  figures). libgomp reads the policy once, when MindSpore's import loads it, so a script that
  imports mindspore first gets the default: it is warned in one line. ZOO_OMP_WAIT_POLICY_SET marks
  ours, for processes that run PyTorch.

``from src import create_network, list_networks`` is the Python API (src/weights/pretrained.py's
``create_network`` takes ``pretrained=TAG``); they are imported on first use, so ``import src``
stays light for the entry points' argument checks.
"""
import os
import sys

if "GLOG_v" not in os.environ and "--debug" not in sys.argv:
    os.environ["GLOG_v"] = "3"
if "OMP_WAIT_POLICY" not in os.environ:
    if "mindspore" in sys.modules:  # its libgomp has read the default policy already
        print("warning: mindspore was imported before src, so our CPU kernels' OpenMP threads "
              "spin between kernels and training runs slower (docs/PERFORMANCE.md): "
              "import src first, or set OMP_WAIT_POLICY=PASSIVE before Python starts",
              file=sys.stderr, flush=True)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["ZOO_OMP_WAIT_POLICY_SET"] = "1"


def __getattr__(name):  # PEP 562: the Python API, imported when first asked for
    if name == "create_network":
        from src.weights.pretrained import create_network
        return create_network
    if name == "list_networks":
        from src.models import list_networks
        return list_networks
    raise AttributeError(f"module 'src' has no attribute {name!r}")
