"""MindSpore model zoo for efficient mobile CNNs: ShuffleNetV1, ShuffleNetV2, MobileNetV1.

Importing it sets two environment variables before MindSpore loads (every entry point imports
``src`` first); a value the user set is kept:
- ``GLOG_v=3``: MindSpore's own C++ log shows errors only. Its warnings (some 50 lines of
  "ANALYZER ... side effect nodes were eliminated" at each compile) say nothing a user can act
  on; ``--debug`` on any entry point, or ``GLOG_v=2`` (1 = info), shows them again.
- ``OMP_WAIT_POLICY=PASSIVE``: our CPU kernels (src/models/kernels/) run on OpenMP threads of
  their own runtime (src/models/cpu_kernels.py), which reads it when the kernels load, whatever
  was imported first; spinning between kernels, they would take the cores from MindSpore's own
  ops (docs/PERFORMANCE.md has the figures). ZOO_OMP_WAIT_POLICY_SET marks ours, for processes
  that run PyTorch.

``from src import create_network, list_networks`` is the Python API (src/weights/pretrained.py's
``create_network`` takes ``pretrained=TAG``); they are imported on first use, so ``import src``
stays light for the entry points' argument checks.
"""
import os
import sys

if "GLOG_v" not in os.environ and "--debug" not in sys.argv:
    os.environ["GLOG_v"] = "3"
if "OMP_WAIT_POLICY" not in os.environ:
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
