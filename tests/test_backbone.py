"""The networks as backbones, in timm's names: the features-only network's maps are the full
network's activations (forward hooks), at the strides and channels its feature_info says, on
every conv_impl, in PyNative and graph mode, exported too; forward_features / forward_head /
reset_classifier; published (or our) weights into a features-only network."""
import mindspore as ms
import numpy as np
import pytest

from src.models import create_network
from tests.helpers import hooked, randomize_weights, saved_checkpoint

ONE_PER_FAMILY = ["shufflenet_v1_g3_05", "shufflenet_v2_x0_5", "mobilenet_v1_025"]
SIDE = 64


def images(batch=2):
    return ms.Tensor(np.random.RandomState(0).rand(batch, 3, SIDE, SIDE).astype(np.float32))


def full_network(name, conv_impl="auto"):
    net = randomize_weights(create_network(name, num_classes=10, conv_impl=conv_impl))
    net.set_train(False)
    return net


def features_of(full, name, conv_impl="auto", **kwargs):
    """The features-only network of ``name`` with ``full``'s weights: all of them it has."""
    net = create_network(name, features_only=True, conv_impl=conv_impl, **kwargs)
    missing, _ = ms.load_param_into_net(net, full.parameters_dict())
    assert not missing
    net.set_train(False)
    return net


def assert_maps(maps, info, expected, tolerance=1e-6):
    assert len(maps) == len(info) == len(expected)
    for array, level, reference in zip(maps, info, expected, strict=True):
        array = array.asnumpy() if hasattr(array, "asnumpy") else array
        assert array.shape == (2, level["num_chs"], SIDE // level["reduction"],
                               SIDE // level["reduction"]), (array.shape, level)
        scale = max(1.0, float(np.abs(reference).max()))
        assert np.abs(array - reference).max() <= tolerance * scale, level


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_the_head_on_the_last_map_is_the_network(name):
    """forward_head on forward_features is the network's output, pre_logits its pooled
    features, forward_intermediates the hooked maps (every variant's maps: the 28-variant
    export test, tests/test_export_infer.py)."""
    full, x = full_network(name), images()
    info = full.feature_info
    assert info.reduction() == [2, 4, 8, 16, 32]
    reference = hooked(full, info.module_name(), x)
    last = full.forward_features(x)
    assert np.array_equal(full.forward_head(last).asnumpy(), full(x).asnumpy())
    assert full.forward_head(last, pre_logits=True).shape == (2, full.classifier.in_channels)
    _, maps = full.forward_intermediates(x)
    assert_maps(maps, info, [reference[m] for m in info.module_name()])


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
@pytest.mark.parametrize("conv_impl", ["mindspore_split", "mindspore_grouped", "mindspore_taps"])
def test_feature_maps_on_mindspores_operators(name, conv_impl):
    full, x = full_network(name, conv_impl), images()
    features = features_of(full, name, conv_impl, out_indices=(0, 2, 4))
    reference = hooked(full, features.feature_info.module_name(), x)
    assert features.feature_info.reduction() == [2, 8, 32]
    assert_maps(features(x), features.feature_info,
                [reference[m] for m in features.feature_info.module_name()], 1e-5)


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_feature_maps_in_graph_mode_and_exported(name, tmp_path):
    """The features-only network compiled in graph mode (our kernels), and exported to ONNX
    as export.py writes (MindSpore's operators, compiled in graph mode; several outputs), gives
    the hooked maps (MINDIR: the 28-variant export test)."""
    import onnxruntime as ort

    from src.deploy.exporter import EXPORT_CONV_IMPL, write_model
    full, x = full_network(name), images()
    modules = full.feature_info.module_name()
    reference = hooked(full, modules, x)
    expected = [reference[m] for m in modules[1:4]]
    nets = {impl: features_of(full, name, impl, out_indices=(1, 2, 3))
            for impl in ("ours", EXPORT_CONV_IMPL["ONNX"])}
    ms.set_context(mode=ms.GRAPH_MODE)  # the exports compile MindSpore's operators in it
    assert_maps(nets["ours"](x), nets["ours"].feature_info, expected, 1e-5)
    path = write_model(nets[EXPORT_CONV_IMPL["ONNX"]], "ONNX", str(tmp_path / "backbone"), SIDE,
                       SIDE)
    session = ort.InferenceSession(path)
    assert [o.shape[0] for o in session.get_outputs()] == ["batch"] * 3
    assert_maps(session.run(None, {"image": x.asnumpy()}), nets["ours"].feature_info, expected,
                1e-5)


def test_a_features_only_network_takes_a_checkpoints_weights_without_its_head(tmp_path,
                                                                                capsys):
    from src import create_network as create_with_weights
    full = full_network("shufflenet_v2_x0_5")
    path = saved_checkpoint(tmp_path / "m-1_2.ckpt", "shufflenet_v2_x0_5", num_classes=10,
                            net=full)
    capsys.readouterr()
    features = create_with_weights("shufflenet_v2_x0_5", pretrained=path, features_only=True,
                                   out_indices=(2, 4))
    said = capsys.readouterr().out
    assert "the features-only shufflenet_v2_x0_5 leaves the checkpoint's classifier, " \
        "conv_last out" in said
    features.set_train(False)
    x = images()
    reference = hooked(full, features.feature_info.module_name(), x)
    assert_maps(features(x), features.feature_info,
                [reference[m] for m in features.feature_info.module_name()])


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_reset_classifier(name):
    full, x = full_network(name), images()
    pooled = full.forward_head(full.forward_features(x), pre_logits=True).asnumpy()
    full.reset_classifier(3)
    assert full(x).shape == (2, 3)
    assert full.classifier.weight.name == "classifier.weight"
    assert full.classifier.weight.shape == (3, pooled.shape[1])
    full.reset_classifier(0)  # no classifier: the pooled features
    assert np.allclose(full(x).asnumpy(), pooled, atol=1e-6)


@pytest.mark.parametrize("indices", [(5,), (), (1, 1), (-1,)])
def test_out_indices_outside_the_levels_are_refused(indices):
    with pytest.raises(ValueError, match="are not distinct levels of 0..4"):
        create_network("mobilenet_v1_025", features_only=True, out_indices=indices)
