"""MindSpore model zoo for efficient mobile CNNs: ShuffleNetV1, ShuffleNetV2, MobileNetV1."""
import os

# Our CPU kernels (src/models/cpu_kernels.cc) run on OpenMP threads. Spinning between kernels,
# they take the cores from MindSpore's own ops: ShuffleNetV2 training took 706 ms a step with
# OpenMP's default wait policy and 509 ms with PASSIVE. libgomp reads the policy once, when
# MindSpore's import loads it, so it is set here, before any module imports MindSpore. A value
# the user set is kept; ZOO_OMP_WAIT_POLICY_SET marks ours, for processes that run PyTorch.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["ZOO_OMP_WAIT_POLICY_SET"] = "1"
