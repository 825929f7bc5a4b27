"""Our CPU kernels (src/models/kernels/) against MindSpore's nn.Conv2d with group= and
nn.BatchNorm2d: forward, input and weight gradients, every layer kind, stride 1 and 2, odd and
even sizes; MindCV's weights with the kernels on and off; the fallback without a compiler."""
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.models import cpu_kernels, create_network
from src.models.layers import BatchNorm, Conv1x1, ConvKxK, resolve_conv_impl
from tests.helpers import ROOT, randomize_weights, run_entry, write_cifar_folder

# kind: (in channels, out channels, kernel, group)
KINDS = {"depthwise": (12, 12, 3, 12), "depthwise 5x5": (6, 6, 5, 6), "dense stem": (3, 8, 3, 1),
         "grouped 1x1 g3": (12, 24, 1, 3), "pointwise 1x1": (10, 6, 1, 1)}
GEMM_KINDS = ("dense stem", "grouped 1x1 g3", "pointwise 1x1")  # the kinds sgemm computes
BUILDS = ("as built", "portable gemm")


def builds(kind: str) -> tuple:
    """The library builds a kind is tested with: both where the builds differ (the GEMM of the
    1x1 and stem convs: oneDNN's or the portable loops); the depthwise kernels, the pools and
    BatchNorm are the same code in both, so the machine's build."""
    return BUILDS if kind in GEMM_KINDS else BUILDS[:1]


# (kind, stride, size, batch): batch 1 is computed in slices of columns (one GEMM would leave
# every core but one idle), a batch of 3 image by image; only the GEMM kinds differ there.
CASES = [(kind, stride, size, batch) for kind in KINDS for stride in (1, 2)
         for size, batch in (((9, 9), 3), ((8, 10), 3), ((8, 10), 1))
         if (stride == 1 or KINDS[kind][2] > 1)  # the networks' 1x1 convs all have stride 1
         and (batch == 3 or kind in GEMM_KINDS) and (kind != "depthwise 5x5" or size == (9, 9))]


@pytest.fixture(scope="session")
def portable_kernel_dir(tmp_path_factory):
    """One folder for the portable build, so the session compiles it once, not once a test."""
    return str(tmp_path_factory.mktemp("portable_kernels"))


@pytest.fixture(params=BUILDS)
def kernels(request, portable_kernel_dir, monkeypatch):
    """The kernel library as this machine builds it (oneDNN's sgemm where MindSpore ships it),
    and built with the portable GEMM loops a MindSpore without libdnnl gets."""
    monkeypatch.setattr(cpu_kernels, "_built", {})  # find (or build) the library anew here
    if request.param == "portable gemm":
        monkeypatch.setattr(cpu_kernels, "_dnnl_dir", lambda: None)
        monkeypatch.setenv("ZOO_KERNEL_DIR", portable_kernel_dir)
    path = cpu_kernels.library()
    assert path and os.path.isfile(path), "the kernels must build on the test machine"
    return path


class Probe(nn.Cell):
    """sum(layer(x) * r): a random cotangent, so every output element's gradient counts."""

    def __init__(self, layer, cotangent):
        super().__init__()
        self.layer, self.cotangent = layer, cotangent

    def construct(self, x):
        return (self.layer(x) * self.cotangent).sum()


def forward_and_grads(layer, x, cotangent):
    grad = ms.value_and_grad(Probe(layer, cotangent), grad_position=0, weights=[layer.weight])
    _, (dx, (dw,)) = grad(x)
    return layer(x).asnumpy(), dx.asnumpy(), dw.asnumpy()


def relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
@pytest.mark.parametrize("kernels, kind, stride, size, batch",
                         [(build, *case) for case in CASES for build in builds(case[0])],
                         indirect=["kernels"])
def test_fast_layer_equals_grouped_conv2d(kernels, kind, stride, size, batch, mode):
    ms.set_context(mode=mode)
    cin, cout, k, group = KINDS[kind]
    if k == 1:
        fast = Conv1x1(cin, cout, group, impl="ours")
    else:
        fast = ConvKxK(cin, cout, k, stride, group, impl="ours")
    reference = nn.Conv2d(cin, cout, k, stride=stride, pad_mode="pad", padding=k // 2,
                          group=group, has_bias=False)
    assert fast.weight.shape == reference.weight.shape
    assert fast.fast
    rng = np.random.RandomState(stride * 100 + size[1])
    reference.weight.set_data(ms.Tensor(rng.randn(*reference.weight.shape).astype(np.float32)))
    fast.weight.set_data(reference.weight.data)
    x = ms.Tensor(rng.randn(batch, cin, *size).astype(np.float32))
    y_ref, dx_ref, dw_ref = forward_and_grads(reference, x, 1)
    cotangent = ms.Tensor(rng.randn(*y_ref.shape).astype(np.float32))
    y_ref, dx_ref, dw_ref = forward_and_grads(reference, x, cotangent)
    y, dx, dw = forward_and_grads(fast, x, cotangent)
    assert y.shape == y_ref.shape
    assert np.abs(y - y_ref).max() <= 1e-5
    assert relative(dx, dx_ref) <= 1e-4
    assert relative(dw, dw_ref) <= 1e-4


@pytest.mark.parametrize("kind, stride", [("depthwise", 1), ("depthwise", 2), ("dense stem", 2),
                                          ("grouped 1x1 g3", 1), ("pointwise 1x1", 1)])
def test_fast_layer_under_mixed_precision_computes_in_float32(kind, stride):
    """amp_level O2/O3 (the zoo configs' settings) set to_float(float16) on the conv cells: our
    layer casts around the float32 kernel and returns float16, equal to the float32 conv of the
    same float16 values to float16 precision, and so are its gradients."""
    ms.set_context(mode=ms.GRAPH_MODE)
    cin, cout, k, group = KINDS[kind]
    fast = Conv1x1(cin, cout, group, impl="ours") if k == 1 else \
        ConvKxK(cin, cout, k, stride, group, impl="ours")
    reference = nn.Conv2d(cin, cout, k, stride=stride, pad_mode="pad", padding=k // 2,
                          group=group, has_bias=False)
    rng = np.random.RandomState(stride + k)
    weight = rng.randn(*reference.weight.shape).astype(np.float16).astype(np.float32)
    reference.weight.set_data(ms.Tensor(weight))
    fast.weight.set_data(ms.Tensor(weight))
    x = ms.Tensor(rng.randn(2, cin, 10, 10).astype(np.float16).astype(np.float32))
    half = fast.to_float(ms.float16)
    y_half = half(x)
    assert y_half.dtype == ms.float16
    cotangent = rng.randn(*y_half.shape).astype(np.float16).astype(np.float32)
    y_ref, dx_ref, dw_ref = forward_and_grads(reference, x, ms.Tensor(cotangent))
    grad = ms.value_and_grad(Probe(half, ms.Tensor(cotangent, ms.float16)), grad_position=0,
                             weights=[fast.weight])
    _, (dx, (dw,)) = grad(x)
    fp16_step = 2.0 ** -10
    assert relative(y_half.asnumpy().astype(np.float32), y_ref) <= fp16_step
    assert relative(dx.asnumpy().astype(np.float32), dx_ref) <= 2 * fp16_step
    assert relative(dw.asnumpy().astype(np.float32), dw_ref) <= 2 * fp16_step


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
@pytest.mark.parametrize("kernels", builds("batch norm"), indirect=True)
@pytest.mark.parametrize("size", [(9, 9), (8, 10)])
def test_fast_batch_norm_equals_mindspore_in_training(kernels, size, mode):
    """Output, input/gamma/beta gradients and the moving statistics after two steps."""
    ms.set_context(mode=mode)
    rng = np.random.RandomState(size[1])
    reference, fast = nn.BatchNorm2d(6, momentum=0.9, eps=1e-5), BatchNorm(6, impl="ours")
    assert fast.fast and [p.name for p in fast.get_parameters()] == \
        [p.name for p in reference.get_parameters()]
    for layer in (reference, fast):
        layer.gamma.set_data(ms.Tensor(rng.rand(6).astype(np.float32) + 0.5))
        layer.beta.set_data(ms.Tensor(rng.randn(6).astype(np.float32)))
        layer.set_train(True)
    fast.gamma.set_data(reference.gamma.data)
    fast.beta.set_data(reference.beta.data)
    x = ms.Tensor((rng.randn(4, 6, *size) * 3 + 2).astype(np.float32))
    cotangent = ms.Tensor(rng.randn(4, 6, *size).astype(np.float32))
    results = []
    for layer in (reference, fast):
        grad = ms.value_and_grad(Probe(layer, cotangent), grad_position=0,
                                 weights=[layer.gamma, layer.beta])
        _, (dx, (dgamma, dbeta)) = grad(x)  # one step: moving statistics updated once
        y = layer(x)  # and twice
        results.append([y.asnumpy(), dx.asnumpy(), dgamma.asnumpy(), dbeta.asnumpy(),
                        layer.moving_mean.asnumpy(), layer.moving_variance.asnumpy()])
    (y_ref, *grads_ref, mean_ref, var_ref), (y, *grads, mean, var) = results
    assert np.abs(y - y_ref).max() <= 1e-5
    for ours, theirs in zip(grads, grads_ref, strict=True):
        assert relative(ours, theirs) <= 1e-4
    assert np.abs(mean - mean_ref).max() <= 1e-5 and np.abs(var - var_ref).max() <= 1e-4
    assert not np.allclose(var, 1.0)  # the statistics did move


FUSED = [("depthwise", 1, None), ("depthwise", 2, "relu"), ("depthwise", 1, "relu6"),
         ("dense stem", 2, "relu"), ("dense stem", 1, "relu6"), ("grouped 1x1 g3", 1, "relu"),
         ("pointwise 1x1", 1, None), ("pointwise 1x1", 1, "relu6")]


def conv_bn_act(kind, stride, activation, impl):
    cin, cout, k, group = KINDS[kind]
    conv = Conv1x1(cin, cout, group, impl) if k == 1 else \
        ConvKxK(cin, cout, k, stride, group, impl)
    act = {None: [], "relu": [nn.ReLU()], "relu6": [nn.ReLU6()]}[activation]
    return [conv, BatchNorm(cout, impl)] + act


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
@pytest.mark.parametrize("kernels, kind, stride, activation, batch",
                         [(build, *case, batch) for case in FUSED for build in builds(case[0])
                          for batch in ((3, 1) if case[0] in GEMM_KINDS else (3,))],
                         indirect=["kernels"])
def test_fused_inference_equals_conv_batchnorm_activation(kernels, kind, stride, activation,
                                                          batch, mode):
    """In eval mode a FusedSequence runs conv -> BatchNorm (moving statistics) -> activation as
    one kernel: the same output as the three layers one by one, within float32 rounding."""
    from src.models.layers import FusedSequence
    ms.set_context(mode=mode)
    fused = FusedSequence(conv_bn_act(kind, stride, activation, "ours"))
    reference = nn.SequentialCell(conv_bn_act(kind, stride, activation, "mindspore"))
    assert fused.fusing and fused.groups == ((0, 2 if activation is None else 3),)
    randomize_weights(fused)
    assert not ms.load_param_into_net(reference, fused.parameters_dict())[0]
    fused.set_train(False)
    reference.set_train(False)
    x = ms.Tensor((np.random.RandomState(stride).randn(batch, KINDS[kind][0], 9, 10) * 12)
                  .astype(np.float32))
    got, expected = fused(x).asnumpy(), reference(x).asnumpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    if activation:  # the activation really clips: some outputs sit at its bounds
        assert (expected == 0).any() and (activation != "relu6" or (expected == 6).any())


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
@pytest.mark.parametrize("kind, stride, activation", [case for case in FUSED if case[2]])
def test_fused_training_equals_conv_batchnorm_activation(kind, stride, activation, mode):
    """In training a FusedSequence's BatchNorm kernel applies the activation after it (its op
    left out): output, input gradient, and conv weight, gamma and beta gradients equal to the
    three layers on MindSpore's operators (1e-4), and so are the moving statistics."""
    from src.models.layers import FusedSequence
    ms.set_context(mode=mode)
    fused = FusedSequence(conv_bn_act(kind, stride, activation, "ours"))
    reference = nn.SequentialCell(conv_bn_act(kind, stride, activation, "mindspore"))
    assert fused.training_cells == ((0, 1),)  # the activation runs in the BatchNorm's kernel
    randomize_weights(fused)
    assert not ms.load_param_into_net(reference, fused.parameters_dict())[0]
    rng = np.random.RandomState(stride)
    gamma = ms.Tensor(rng.rand(KINDS[kind][1]).astype(np.float32) * 2 + 3)  # reaches 6
    for sequence in (reference, fused):
        sequence.cell_list[1].gamma.set_data(gamma)
    x = ms.Tensor((rng.randn(3, KINDS[kind][0], 9, 10) * 4).astype(np.float32))
    results = []
    for sequence in (reference, fused):
        sequence.set_train(True)
        conv, bn = sequence.cell_list[0], sequence.cell_list[1]
        cotangent = ms.Tensor(np.random.RandomState(1).randn(*sequence(x).shape) * 3,
                              ms.float32)
        grad = ms.value_and_grad(Probe(sequence, cotangent), grad_position=0,
                                 weights=[conv.weight, bn.gamma, bn.beta])
        _, (dx, weight_grads) = grad(x)
        results.append([sequence(x).asnumpy(), dx.asnumpy(),
                        *[g.asnumpy() for g in weight_grads], bn.moving_variance.asnumpy()])
    (y_ref, *grads_ref, var_ref), (y, *grads, var) = results
    assert np.abs(y - y_ref).max() <= 1e-4 * np.abs(y_ref).max()
    assert (y_ref == 0).any() and (activation != "relu6" or (y_ref == 6).any())  # it clips
    for ours, theirs in zip(grads, grads_ref, strict=True):
        assert relative(ours, theirs) <= 1e-4
    assert np.abs(var - var_ref).max() <= 1e-4 * np.abs(var_ref).max()


def check_whole_kernel(fast, reference, x, mode) -> tuple:
    """``fast`` (a block our kernel runs whole in eval mode) against ``reference`` (the same
    block on MindSpore's operators, ``fast``'s weights loaded): equal eval outputs (1e-5) and,
    in PyNative, equal training outputs (the layers one by one, batch statistics; 1e-4).
    Returns the eval outputs, ours then the reference's."""
    assert not ms.load_param_into_net(reference, fast.parameters_dict())[0]
    fast.set_train(False)
    reference.set_train(False)
    got, expected = fast(x).asnumpy(), reference(x).asnumpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    if mode == ms.PYNATIVE_MODE:  # a mode-free branch: checked once
        fast.set_train(True)
        reference.set_train(True)
        assert np.abs(fast(x).asnumpy() - reference(x).asnumpy()).max() <= \
            1e-4 * np.abs(expected).max()
    return got, expected


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
@pytest.mark.parametrize("kernels, stride, in_channels, batch, size",
                         [(build, *case) for build in BUILDS
                          for case in ((1, 12, 3, (9, 9)), (1, 12, 1, (8, 10)),
                                       (2, 6, 3, (9, 9)), (2, 6, 1, (8, 10)))],
                         indirect=["kernels"])
def test_whole_shufflenet_v2_unit_equals_its_layers(kernels, stride, in_channels, batch, size,
                                                    mode):
    """In eval mode a ShuffleNetV2 unit (megvii's layout) runs as one kernel: the even channels
    passed and the odd ones through main (stride 1), or proj and main (stride 2), side by side,
    equal to the unit's layers one by one on MindSpore's operators; training runs the layers."""
    from src.models.shufflenet_v2 import ShuffleV2Block
    ms.set_context(mode=mode)
    unit = randomize_weights(ShuffleV2Block(in_channels, 12, stride, conv_impl="ours"))
    reference = ShuffleV2Block(in_channels, 12, stride, conv_impl="mindspore")
    assert unit.whole_unit and not reference.whole_unit
    x = ms.Tensor(np.random.RandomState(batch).randn(batch, in_channels, *size)
                  .astype(np.float32))
    got, _ = check_whole_kernel(unit, reference, x, mode)
    assert got.shape == (batch, 12, *[(s - 1) // stride + 1 for s in size])
    if stride == 1:  # the even input channels come first, as they are
        assert np.array_equal(got[:, :in_channels // 2], x.asnumpy()[:, 0::2])


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
@pytest.mark.parametrize("kernels, stride, in_channels, first_group, order, batch",
                         [(build, *case) for build in BUILDS
                          for case in ((1, 24, False, "paper", 3), (1, 24, False, "megvii", 1),
                                       (2, 12, True, "paper", 1), (2, 12, False, "megvii", 3))],
                         indirect=["kernels"])
def test_whole_shufflenet_v1_unit_equals_its_layers(kernels, stride, in_channels, first_group,
                                                    order, batch, mode):
    """In eval mode a ShuffleNetV1 unit runs as one kernel, its channel shuffle (either order)
    read in place: ReLU(x + main(x)) at stride 1, ReLU(concat(avgpool(x), main(x))) at stride 2,
    equal to the unit's layers one by one on MindSpore's operators; training runs the layers."""
    from src.models.shufflenet_v1 import ShuffleV1Block
    ms.set_context(mode=mode)
    units = [ShuffleV1Block(in_channels, 36 if stride == 2 else 24, stride, 3, first_group,
                            shuffle_order=order, conv_impl=impl) for impl in ("ours", "mindspore")]
    unit, reference = randomize_weights(units[0]), units[1]
    assert unit.whole_unit and not reference.whole_unit
    x = ms.Tensor(np.random.RandomState(batch).randn(batch, in_channels, 9, 10)
                  .astype(np.float32))
    _, expected = check_whole_kernel(unit, reference, x, mode)
    assert (expected == 0).any()  # the ReLU clips


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
@pytest.mark.parametrize("kernels, stride, activation, batch, size",
                         [(build, *case) for build in BUILDS
                          for case in ((1, "relu", 3, (9, 9)), (2, "relu6", 1, (8, 10)),
                                       (1, "relu6", 1, (30, 7)), (2, "relu", 3, (9, 9)))],
                         indirect=["kernels"])
def test_whole_separable_block_equals_its_layers(kernels, stride, activation, batch, size,
                                                 mode):
    """In eval mode a MobileNetV1 block (3x3 depthwise + BN + act, 1x1 + BN + act) runs as one
    kernel, a band of rows at a time (30 rows: several bands an image), equal to its layers on
    MindSpore's operators; training runs the layers."""
    from src.models.mobilenet_v1 import ACTIVATIONS, SeparableBlock
    ms.set_context(mode=mode)
    act = ACTIVATIONS[activation]
    block, reference = [SeparableBlock(10, 6, stride, act, impl) for impl in ("ours", "mindspore")]
    randomize_weights(block)
    block[3].weight.set_data(block[3].weight * 20)  # outputs past 6, so ReLU6 clips there too
    assert block.whole_block and not reference.whole_block
    x = ms.Tensor((np.random.RandomState(batch).randn(batch, 10, *size) * 12).astype(np.float32))
    _, expected = check_whole_kernel(block, reference, x, mode)
    assert expected.shape == (batch, 6, *[(s - 1) // stride + 1 for s in size])
    assert (expected == 0).any() and (activation != "relu6" or (expected == 6).any())


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
@pytest.mark.parametrize("kind", ["max", "avg", "global"])
@pytest.mark.parametrize("batch, size", [(3, (9, 9)), (1, (8, 10)), (2, (1, 2))])
def test_pools_equal_mindspores_forward_and_gradient(kind, batch, size, mode):
    """Our pool kernels (3x3 stride 2 with the zero padding, max or average counting the zeros;
    the global mean) give MindSpore's pad-then-pool and mean, and the same input gradient, in
    eval and training mode. Negative inputs: a padded zero is the max of a border window of
    them (its gradient falls on the padding)."""
    from src.models.layers import GlobalAvgPool, Pool3x3s2
    ms.set_context(mode=mode)
    fast, standard = [GlobalAvgPool(impl) if kind == "global" else Pool3x3s2(kind, "pad", impl)
                      for impl in ("ours", "mindspore")]
    assert fast.fast and not standard.fast
    rng = np.random.RandomState(batch)
    x = ms.Tensor(rng.randn(batch, 5, *size).astype(np.float32))
    for layer in (fast, standard):
        layer.set_train(False)
    got, expected = fast(x).asnumpy(), standard(x).asnumpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-6 * max(1.0, np.abs(expected).max())
    if kind == "max":
        assert (expected == 0).any()  # some windows' max is a padded zero
    cotangent = ms.Tensor(rng.randn(*expected.shape).astype(np.float32))
    grads = []
    for layer in (fast, standard):
        layer.set_train(True)
        grads.append(ms.grad(Probe(layer, cotangent))(x).asnumpy())
    assert np.abs(grads[0] - grads[1]).max() <= 1e-5 * np.abs(grads[1]).max()
    assert np.abs(grads[1]).max() > 0


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
@pytest.mark.parametrize("kernels, bias, batch",
                         [(build, bias, batch) for build in BUILDS for bias in (True, False)
                          for batch in (1, 3)], indirect=["kernels"])
def test_eval_mode_classifier_equals_dense(kernels, bias, batch, mode):
    """The networks' classifier in eval mode (our kernel, its 1000 outputs cut among the
    threads) gives nn.Dense's output with the same parameters; training is nn.Dense's."""
    from src.models.layers import Classifier
    ms.set_context(mode=mode)
    fast, standard = [Classifier(40, 1000, bias, impl) for impl in ("ours", "mindspore")]
    randomize_weights(fast)
    assert fast.fast and not standard.fast
    assert not ms.load_param_into_net(standard, fast.parameters_dict())[0]
    x = ms.Tensor(np.random.RandomState(batch).randn(batch, 40).astype(np.float32))
    fast.set_train(False)
    standard.set_train(False)
    got, expected = fast(x).asnumpy(), standard(x).asnumpy()
    assert got.shape == expected.shape == (batch, 1000)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


# One network's eval logits at batch 1 and 2, and its training gradients, from fixed weights:
# run with and without ZOO_SERIAL_WORK=0 (every region on every thread / small ones on one).
THREADING_SCRIPT = """
import sys
import numpy as np
import src
import mindspore as ms
from src.models import create_network
from tests.helpers import randomize_weights
ms.set_device("CPU")
ms.set_context(mode=ms.GRAPH_MODE)
net = create_network(sys.argv[1], num_classes=10)
randomize_weights(net)
rng = np.random.RandomState(0)
out = {}
net.set_train(False)
for batch in (1, 2):
    out[f"eval{batch}"] = net(ms.Tensor(rng.rand(batch, 3, 64, 64).astype(np.float32))).asnumpy()
net.set_train(True)


def total(x):
    return net(x).sum()


grads = ms.value_and_grad(total, None, net.trainable_params())(
    ms.Tensor(rng.rand(2, 3, 64, 64).astype(np.float32)))[1]
for i, grad in enumerate(grads):
    out[f"grad{i}"] = grad.asnumpy()
np.savez(sys.argv[2], **out)
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "shufflenet_v1_g3_05", "mobilenet_v1_025"])
def test_small_work_on_one_thread_equals_every_thread(name, tmp_path):
    """Below kSerialWork a kernel's parallel region runs on one thread (at batch 1 waking the
    second cost more than it saved): the same logits and gradients as with every region on
    every thread (ZOO_SERIAL_WORK=0, what the rest of the tests run)."""
    script = tmp_path / "run.py"  # a file: graph mode reads the functions' source
    script.write_text(THREADING_SCRIPT)
    results = []
    for serial in ("", "0"):
        env = {k: v for k, v in os.environ.items() if k != "ZOO_SERIAL_WORK"}
        if serial:
            env["ZOO_SERIAL_WORK"] = serial
        path = tmp_path / f"out{serial or 'default'}.npz"
        done = subprocess.run([sys.executable, str(script), name, str(path)], cwd=ROOT,
                              env={**env, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        results.append(np.load(path))
    one_thread, every_thread = results
    assert set(one_thread) == set(every_thread) and len(one_thread) > 10
    for key in every_thread:
        expected = every_thread[key]
        assert np.abs(one_thread[key] - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("group", [2, 3, 8])
def test_split_grouped_conv_equals_native(group):
    rng = np.random.RandomState(group)
    native = Conv1x1(24, 48, group, impl="mindspore_grouped")
    split = Conv1x1(24, 48, group, impl="mindspore_split")
    assert native.weight.shape == split.weight.shape == (48, 24 // group, 1, 1)
    assert split.split and not native.split and not native.fast
    split.weight.set_data(native.weight.data)
    x = ms.Tensor(rng.randn(2, 24, 5, 7).astype(np.float32))
    reference = ms.ops.conv2d(x, native.weight, groups=group).asnumpy()
    assert np.abs(native(x).asnumpy() - reference).max() <= 1e-5
    assert np.abs(split(x).asnumpy() - reference).max() <= 1e-5


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
@pytest.mark.parametrize("kind", ["depthwise", "dense stem"])
@pytest.mark.parametrize("stride, size", [(1, (9, 9)), (1, (8, 10)), (2, (9, 9)), (2, (8, 10)),
                                          (2, (1, 2))])
def test_nine_windows_conv_equals_conv2d(kind, stride, size, mode):
    """conv_impl mindspore_taps (what export writes for MINDIR on CPU): a 3x3 conv from the nine
    shifted windows of its input (a 1x1 conv of them, or their per-channel weighted sum) gives
    Conv2D's output and, in training mode, gradients, at odd and even sides, stride 1 and 2;
    in eval mode its output too."""
    ms.set_context(mode=mode)
    cin, cout, k, group = KINDS[kind]
    taps = ConvKxK(cin, cout, k, stride, group, impl="mindspore_taps")
    reference = nn.Conv2d(cin, cout, k, stride=stride, pad_mode="pad", padding=1, group=group,
                          has_bias=False)
    assert taps.taps and not taps.fast
    for layer in (taps, reference):  # gradients in training mode (eval leaves the batch open)
        layer.set_train(True)
    rng = np.random.RandomState(stride)
    reference.weight.set_data(ms.Tensor(rng.randn(*reference.weight.shape).astype(np.float32)))
    taps.weight.set_data(reference.weight.data)
    x = ms.Tensor(rng.randn(2, cin, *size).astype(np.float32))
    cotangent = ms.Tensor(rng.randn(*reference(x).shape).astype(np.float32))
    y_ref, dx_ref, dw_ref = forward_and_grads(reference, x, cotangent)
    y, dx, dw = forward_and_grads(taps, x, cotangent)
    assert y.shape == y_ref.shape
    assert np.abs(y - y_ref).max() <= 1e-5 * np.abs(y_ref).max()
    assert relative(dx, dx_ref) <= 1e-5 and relative(dw, dw_ref) <= 1e-5
    taps.set_train(False)
    assert np.abs(taps(x).asnumpy() - y_ref).max() <= 1e-5 * np.abs(y_ref).max()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shufflenet_v1_g3_05", "shufflenet_v2_x0_5", "mobilenet_v1_025"])
def test_mindcv_weights_give_the_same_logits_with_fast_layers_on_and_off(name):
    """MindCV 0.3.0's own network and weights: its logits, ours with our kernels, ours without."""
    import mindcv
    ms.set_context(mode=ms.GRAPH_MODE)
    theirs = randomize_weights(mindcv.create_model(name, num_classes=7))
    theirs.set_train(False)
    x = ms.Tensor(np.random.RandomState(0).rand(2, 3, 64, 64).astype(np.float32))
    expected = theirs(x).asnumpy()
    options = {"pool_pad": "same", "shuffle_order": "megvii"} if "v1_g" in name else \
        {"pool_pad": "same"} if "v2" in name else {}
    logits = {}
    for impl in ("ours", "mindspore"):
        ours = create_network(name, num_classes=7, conv_impl=impl, **options)
        assert not ms.load_param_into_net(ours, theirs.parameters_dict())[0]
        ours.set_train(False)
        logits[impl] = ours(x).asnumpy()
    scale = np.abs(expected).max()
    assert scale > 0.1
    assert np.abs(logits["ours"] - expected).max() <= 1e-5 * scale
    assert np.abs(logits["mindspore"] - expected).max() <= 1e-5 * scale


def test_auto_is_ours_on_cpu_and_mindspore_never_is(monkeypatch):
    assert resolve_conv_impl("auto") == "ours"
    assert resolve_conv_impl("mindspore") == "mindspore_split"
    assert resolve_conv_impl("mindspore_grouped") == "mindspore_grouped"
    # The names before 2026-11 are taken as input, and resolve to today's names.
    assert [resolve_conv_impl(old) for old in ("fast", "standard", "split", "native")] == \
        ["ours", "mindspore_split", "mindspore_split", "mindspore_grouped"]
    net = create_network("shufflenet_v1_g3_05", conv_impl="mindspore")
    assert all(not getattr(cell, "fast", False) for _, cell in net.cells_and_names())
    # Our kernels asked for off CPU are refused, not silently dropped (use_device turns this
    # into the one error line); auto picks MindSpore's grouped convs there.
    real = ms.get_context
    monkeypatch.setattr(ms, "get_context", lambda key: "GPU" if key == "device_target"
                        else real(key))
    with pytest.raises(ValueError, match=r"conv_impl ours \(our CPU kernels\) does not run "
                                         r"here \(GPU\)"):
        resolve_conv_impl("ours")
    assert resolve_conv_impl("auto") == "mindspore_grouped"


@pytest.mark.slow
def test_without_a_compiler_training_falls_back_with_one_line(tmp_path, monkeypatch, capsys):
    # In process: no kernels, "auto" falls back to MindSpore's convs, saying so once.
    monkeypatch.setenv("CXX", "no-such-compiler-zoo")
    monkeypatch.setattr(cpu_kernels, "_built", {})  # build (or fail) anew in this test
    assert cpu_kernels.library() is None
    assert resolve_conv_impl("auto") == "mindspore_split"
    lines = [line for line in capsys.readouterr().out.splitlines() if "kernels" in line]
    assert lines == ["warning: fast CPU conv kernels unavailable (no C++ compiler "
                     "'no-such-compiler-zoo' on PATH; set CXX to one); using MindSpore's own "
                     "convolutions, which are slower on CPU"]
    # The training command: trains through the fallback and writes its checkpoint.
    data = write_cifar_folder(str(tmp_path / "data"), train_count=64, test_count=16)
    proc = run_entry("train.py", "--dataset_path", data, "--network", "mobilenet_v1_025",
                     "--num_classes", 4, "--epoch_size", 1, "--batch_size", 16,
                     "--output_path", tmp_path / "out", "--image_size", 32,
                     "--num_parallel_workers", 1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fast CPU conv kernels unavailable (no C++ compiler" in proc.stdout
    ckpts = [f for _, _, files in os.walk(tmp_path / "out") for f in files if f.endswith(".ckpt")]
    assert ckpts


def test_a_first_build_says_so_on_stdout(tmp_path, monkeypatch, capsys):
    """The line a fresh machine's first run prints goes with the progress lines: stderr keeps
    only a bad input's one error line (CI's first test met a build line beside it there)."""
    monkeypatch.setenv("ZOO_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "_built", {})
    monkeypatch.setattr(cpu_kernels.subprocess, "run",  # the compile itself: tested above
                        lambda command, **_: subprocess.CompletedProcess(command, 0, "", ""))
    path = cpu_kernels.library()
    assert os.path.dirname(path) == str(tmp_path) and os.path.isfile(path)
    out, err = capsys.readouterr()
    assert out == f"built fast CPU conv kernels: {path}\n" and err == ""
