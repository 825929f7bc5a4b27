"""The networks: registry, exact counts, shapes, modes, gradients, channel shuffle, grouped conv."""
import re

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.models import create_network, list_networks
from src.models.complexity import count_macs, count_params
from src.models.layers import ChannelShuffle
from src.models.shufflenet_v1 import stage_channels

# The papers' and the sources' counts: (c1 and stage widths, trainable params, MMACs at 224,
# 1000 classes).
SPEC_TABLE = {
    "shufflenet_v1_g1_05": ((12, 72, 144, 288), 533_484, 38.5),
    "shufflenet_v1_g1_10": ((24, 144, 288, 576), 1_530_936, 143.1),
    "shufflenet_v1_g1_15": ((24, 216, 432, 864), 2_992_032, 308.1),
    "shufflenet_v1_g1_20": ((48, 288, 576, 1152), 4_917_744, 550.3),
    "shufflenet_v1_g2_05": ((12, 104, 200, 400), 643_320, 38.9),
    "shufflenet_v1_g2_10": ((24, 200, 400, 800), 1_732_848, 140.8),
    "shufflenet_v1_g2_15": ((24, 304, 600, 1200), 3_272_400, 303.2),
    "shufflenet_v1_g2_20": ((48, 400, 800, 1600), 5_256_896, 539.1),
    "shufflenet_v1_g3_05": ((12, 120, 240, 480), 717_324, 37.6),
    "shufflenet_v1_g3_10": ((24, 240, 480, 960), 1_864_728, 137.5),
    "shufflenet_v1_g3_15": ((24, 360, 720, 1440), 3_441_168, 292.4),
    "shufflenet_v1_g3_20": ((48, 480, 960, 1920), 5_449_776, 524.0),
    "shufflenet_v1_g4_05": ((12, 144, 272, 544), 777_592, 37.9),
    "shufflenet_v1_g4_10": ((24, 272, 544, 1088), 1_967_344, 134.3),
    "shufflenet_v1_g4_15": ((24, 416, 816, 1632), 3_574_536, 287.1),
    "shufflenet_v1_g4_20": ((48, 544, 1088, 2176), 5_592_528, 510.3),
    "shufflenet_v1_g8_05": ((16, 192, 384, 768), 1_010_448, 40.5),
    "shufflenet_v1_g8_10": ((24, 384, 768, 1536), 2_433_768, 138.4),
    "shufflenet_v1_g8_15": ((24, 576, 1152, 2304), 4_268_952, 290.2),
    "shufflenet_v1_g8_20": ((48, 768, 1536, 3072), 6_521_232, 521.9),
    "shufflenet_v2_x0_5": (None, 1_365_792, 40.5),
    "shufflenet_v2_x1_0": (None, 2_278_760, 145.8),
    "shufflenet_v2_x1_5": (None, 3_506_720, 299.0),
    "shufflenet_v2_x2_0": (None, 7_402_600, 590.8),
    "mobilenet_v1_025": (None, 470_072, 41.0),
    "mobilenet_v1_050": (None, 1_331_592, 149.5),
    "mobilenet_v1_075": (None, 2_585_560, 325.4),
    "mobilenet_v1_100": (None, 4_231_976, 568.7),
}
# The papers' MFLOPs (multiply-adds) where they publish one: ShuffleNetV1 Tables 1, 2 and 5,
# ShuffleNetV2 Table 5, MobileNetV1 Table 6. Left out: g2_05 (38.9, +2.4 %: the paper's 0.5x
# g2 widths are not published, ours round 100 up to 104 so that g divides mid) and g8_05
# (40.5: megvii's and MindCV's table has c1 = 16, not the paper's 12, since g must divide it).
PAPER_MFLOPS = {
    "shufflenet_v1_g1_05": 38, "shufflenet_v1_g3_05": 38, "shufflenet_v1_g4_05": 38,
    "shufflenet_v1_g1_10": 143, "shufflenet_v1_g2_10": 140, "shufflenet_v1_g3_10": 137,
    "shufflenet_v1_g4_10": 133, "shufflenet_v1_g8_10": 137,
    "shufflenet_v1_g3_15": 292, "shufflenet_v1_g3_20": 524,
    "shufflenet_v2_x0_5": 41, "shufflenet_v2_x1_0": 146, "shufflenet_v2_x1_5": 299,
    "shufflenet_v2_x2_0": 591,
    "mobilenet_v1_025": 41, "mobilenet_v1_050": 149, "mobilenet_v1_075": 325,
    "mobilenet_v1_100": 569,
}
ONE_PER_FAMILY = ["shufflenet_v1_g3_05", "shufflenet_v2_x0_5", "mobilenet_v1_025"]


def test_registry_has_the_28_mindcv_names():
    names = list_networks()
    assert len(names) == 28
    assert set(names) == set(SPEC_TABLE)
    pattern = re.compile(r"shufflenet_v1_g[12348]_(05|10|15|20)|shufflenet_v2_x[0-2]_[05]"
                         r"|mobilenet_v1_(025|050|075|100)")
    assert all(pattern.fullmatch(n) for n in names)


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="shufflenet_v2_x1_0"):
        create_network("shufflenet_v2_x1")
    with pytest.raises(ValueError, match="unknown network"):
        create_network("resnet50")


@pytest.mark.parametrize("name", [n for n, row in SPEC_TABLE.items() if row[0]])
def test_shufflenet_v1_channel_rule(name):
    group, width = int(name[15]), int(name[-2:]) / 10
    assert stage_channels(group, width) == SPEC_TABLE[name][0]


@pytest.mark.parametrize("name", list(SPEC_TABLE))
def test_params_and_macs_of_every_variant(name):
    """Exact trainable parameters; MACs within 2 % of the published MMACs and of the papers'."""
    _, params, mmacs = SPEC_TABLE[name]
    net = create_network(name)
    assert count_params(net) == params, name
    macs = count_macs(net, 224) / 1e6
    assert abs(macs - mmacs) <= 0.02 * mmacs, (name, macs)
    if name in PAPER_MFLOPS:
        assert abs(macs - PAPER_MFLOPS[name]) <= 0.02 * PAPER_MFLOPS[name], (name, macs)


def test_ten_classes_shrink_only_the_classifier():
    full = count_params(create_network("mobilenet_v1_100"))
    cifar = count_params(create_network("mobilenet_v1_100", num_classes=10))
    assert full - cifar == 990 * 1024 + 990
    full = count_params(create_network("shufflenet_v1_g3_10"))
    cifar = count_params(create_network("shufflenet_v1_g3_10", num_classes=10))
    assert full - cifar == 990 * 960


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
@pytest.mark.parametrize("size", [224, 32])
def test_output_shape(name, size):
    net = create_network(name, num_classes=7)
    net.set_train(False)
    x = ms.Tensor(np.random.rand(2, 3, size, size).astype(np.float32))
    assert net(x).shape == (2, 7)


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_graph_and_pynative_give_the_same_logits(name):
    ms.set_seed(1)
    net = create_network(name, num_classes=10)
    net.set_train(False)
    x = ms.Tensor(np.random.RandomState(0).rand(2, 3, 64, 64).astype(np.float32))
    eager = net(x).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = net(x).asnumpy()
    assert np.abs(graph - eager).max() <= 1e-5


@pytest.mark.parametrize("name", ONE_PER_FAMILY + ["shufflenet_v1_g8_05"])
def test_every_parameter_gets_a_finite_gradient(name):
    net = create_network(name, num_classes=10)
    net.set_train(True)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    x = ms.Tensor(np.random.RandomState(0).rand(4, 3, 64, 64).astype(np.float32))
    y = ms.Tensor(np.array([0, 1, 2, 3], np.int32))
    params = net.trainable_params()
    grad_fn = ms.value_and_grad(lambda a, b: loss_fn(net(a), b), None, params)
    loss, grads = grad_fn(x, y)
    assert np.isfinite(loss.asnumpy())
    assert len(grads) == len(params)
    for p, g in zip(params, grads, strict=True):
        g = g.asnumpy()
        assert g.shape == p.shape and np.isfinite(g).all(), p.name
    # Gradients reach the stem, not only the head.
    assert np.abs(grads[0].asnumpy()).sum() > 0


def test_channel_shuffle_is_the_papers_permutation():
    # 6 channels in g = 3 groups of 2: groups (0 1) (2 3) (4 5). The paper reshapes to
    # (g, C/g) = [[0, 1], [2, 3], [4, 5]], transposes and flattens: 0 2 4 1 3 5.
    x = np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1) * np.ones((1, 1, 2, 2), np.float32)
    out = ChannelShuffle(3, "paper")(ms.Tensor(x)).asnumpy()
    assert out[0, :, 0, 0].tolist() == [0, 2, 4, 1, 3, 5]
    # Channel i*(C/g) + j lands at j*g + i.
    for i in range(3):
        for j in range(2):
            assert out[0, j * 3 + i, 1, 1] == i * 2 + j
    # megvii/MindCV reshape to (C/g, g) instead: the inverse permutation.
    out = ChannelShuffle(3, "megvii")(ms.Tensor(x)).asnumpy()
    assert out[0, :, 0, 0].tolist() == [0, 3, 1, 4, 2, 5]
    assert ChannelShuffle(1)(ms.Tensor(x)).asnumpy().tolist() == x.tolist()


def test_layout_options_keep_names_and_shapes():
    base = {p.name: p.shape for p in create_network("shufflenet_v1_g3_10").get_parameters()}
    for kwargs in ({"pool_pad": "same", "shuffle_order": "megvii"},
                   {"conv_impl": "mindspore_grouped"}, {"conv_impl": "ours"}):
        other = {p.name: p.shape for p in
                 create_network("shufflenet_v1_g3_10", **kwargs).get_parameters()}
        assert other == base
    assert "features.0.branch_main_1.0.weight" in base
    assert base["features.4.branch_main_1.0.weight"] == (120, 80, 1, 1)  # grouped: in/g = 240/3
    assert "classifier.weight" in base and "classifier.bias" not in base
    mbv1 = {p.name for p in create_network("mobilenet_v1_100", activation="relu6").get_parameters()}
    assert {"features.0.weight", "features.15.3.weight", "classifier.bias"} <= mbv1


@pytest.mark.parametrize("name", ["shufflenet_v1_g3_05", "shufflenet_v2_x0_5", "mobilenet_v1_025"])
def test_drop_rate_drops_the_classifiers_inputs_in_training_only(name):
    """The same parameters; in training about drop_rate of the classifier's inputs are zeroed
    (the rest scaled by 1 / (1 - drop_rate)); eval mode is the network without dropout."""
    plain = create_network(name, num_classes=10, conv_impl="mindspore")
    dropping = create_network(name, num_classes=10, conv_impl="mindspore", drop_rate=0.5)
    assert [p.name for p in dropping.get_parameters()] == \
        [p.name for p in plain.get_parameters()]
    ms.load_param_into_net(dropping, {p.name: p for p in plain.get_parameters()})
    features = ms.Tensor(np.ones((64, dropping.classifier.in_channels), np.float32))
    dropping.classifier.set_train(True)
    kept = dropping.classifier.dropout(features).asnumpy()
    assert 0.4 < (kept == 0).mean() < 0.6 and np.allclose(kept[kept != 0], 2.0)
    x = ms.Tensor(np.random.RandomState(0).rand(2, 3, 64, 64).astype(np.float32))
    plain.set_train(False)
    dropping.set_train(False)
    assert np.abs(dropping(x).asnumpy() - plain(x).asnumpy()).max() < 1e-5
    dropping.set_train(True)
    plain.set_train(True)
    assert np.abs(dropping(x).asnumpy() - plain(x).asnumpy()).max() > 1e-4


@pytest.mark.parametrize("name, options", [
    ("shufflenet_v1_g3_05", {"pool_pad": "same", "shuffle_order": "megvii"}),
    ("shufflenet_v2_x0_5", {"pool_pad": "same"}),
    ("mobilenet_v1_025", {}),
])
def test_mindcv_weights_give_mindcv_logits(name, options):
    """MindCV's own network and ours, with MindCV's pooling/shuffle options, agree on its
    weights."""
    import mindcv
    theirs = mindcv.create_model(name, num_classes=10)
    ours = create_network(name, num_classes=10, **options)
    not_loaded, _ = ms.load_param_into_net(ours, {p.name: p for p in theirs.get_parameters()},
                                           strict_load=True)
    assert not not_loaded
    theirs.set_train(False)
    ours.set_train(False)
    x = ms.Tensor(np.random.RandomState(0).rand(2, 3, 64, 64).astype(np.float32))
    assert np.abs(ours(x).asnumpy() - theirs(x).asnumpy()).max() <= 1e-6


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("size", [7, 8])
def test_symmetric_pools_match_a_padded_reference(kind, size):
    from src.models.layers import Pool3x3s2
    x = np.random.RandomState(size).rand(2, 3, size, size).astype(np.float32)  # >= 0, as after ReLU
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = (size + 2 - 3) // 2 + 1
    reduce = np.max if kind == "max" else np.mean
    window = lambda i, j: padded[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]  # noqa: E731
    expected = np.stack([np.stack([reduce(window(i, j), axis=(2, 3)) for j in range(out)], -1)
                         for i in range(out)], -2)
    got = Pool3x3s2(kind, "pad")(ms.Tensor(x)).asnumpy()
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-6
