"""Our train step: k accumulated micro-batches make one batch's update, the clip is PyTorch's
clip_grad_norm_, the EMA is its closed form, the loss scale divides out; in graph mode."""
import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import nn

from src.CrossEntropySmooth import CrossEntropySmooth
from src.model_utils.config import get_config
from src.training.optim import create_optimizer
from src.training.train_step import TrainStep


class Small(nn.Cell):
    """A conv, a BatchNorm (kept in eval mode: its statistics are fixed) and a dense head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, pad_mode="same", has_bias=False,
                              weight_init=ms.common.initializer.Normal(0.3, 0.0))
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Dense(4 * 8 * 8, 5, weight_init=ms.common.initializer.Normal(0.1, 0.0))
        self.flatten = nn.Flatten()

    def construct(self, x):
        return self.head(self.flatten(self.bn(self.conv(x))))


def make_step(argv=(), seed=0, **kwargs):
    ms.set_seed(seed)
    net = Small()
    config = get_config(["--opt", "sgd", "--momentum", "0.9", "--weight_decay", "0", *argv])
    opt = create_optimizer(config, net, np.full(16, 0.1, np.float32))
    loss = CrossEntropySmooth(sparse=True, num_classes=5)
    step = TrainStep(nn.WithLossCell(net, loss), opt, net, **kwargs)
    step.set_train()
    net.bn.set_train(False)
    return step, net


def batch(count, seed=1):
    rng = np.random.RandomState(seed)
    return (ms.Tensor(rng.randn(count, 3, 8, 8).astype(np.float32)),
            ms.Tensor(rng.randint(0, 5, count).astype(np.int32)))


def weights(net):
    return {p.name: p.asnumpy().copy() for p in net.trainable_params()}


@pytest.fixture(params=[ms.PYNATIVE_MODE, ms.GRAPH_MODE], ids=["pynative", "graph"])
def mode(request):
    ms.set_context(mode=request.param)
    return request.param


def test_k_micro_batches_make_the_update_of_one_batch_of_k_b(mode):
    x, y = batch(12)
    whole, whole_net = make_step()
    whole(x, y)
    whole(*batch(12, seed=2))
    parts, parts_net = make_step(accumulation=3)
    for start in range(0, 12, 4):  # one optimizer step of 3 micro-batches of 4
        before = weights(parts_net)
        parts(x[start:start + 4], y[start:start + 4])
        if start < 8:  # no step until the cycle ends
            assert all(np.array_equal(before[k], v) for k, v in weights(parts_net).items())
    x2, y2 = batch(12, seed=2)
    for start in range(0, 12, 4):
        parts(x2[start:start + 4], y2[start:start + 4])
    got, expected = weights(parts_net), weights(whole_net)
    assert max(np.abs(got[k] - expected[k]).max() for k in got) < 1e-5
    assert int(parts.micro_step.asnumpy()[0]) == 6
    assert all(not a.asnumpy().any() for a in parts.accumulated)  # reset after each cycle
    assert int(parts.optimizer.global_step.asnumpy()[0]) == 2


def test_the_clip_is_pytorchs_clip_grad_norm(mode):
    x, y = batch(8)
    plain, plain_net = make_step(["--momentum", "0"])
    start = weights(plain_net)
    plain(x, y)
    grads = {k: (start[k] - v) / 0.1 for k, v in weights(plain_net).items()}  # lr 0.1, SGD
    clipped, clipped_net = make_step(["--momentum", "0"], clip_norm=0.05)
    clipped(x, y)
    tensors = [torch.tensor(g) for g in grads.values()]
    for t in tensors:
        t.grad = t.clone()
    norm = torch.nn.utils.clip_grad_norm_(tensors, 0.05)
    assert float(norm) > 0.05  # the clip acts
    expected = {k: start[k] - 0.1 * t.grad.numpy() for k, t in zip(grads, tensors, strict=True)}
    got = weights(clipped_net)
    assert max(np.abs(got[k] - expected[k]).max() for k in got) < 1e-5


def test_the_ema_is_its_closed_form(mode):
    step, net = make_step(ema_decay=0.8)
    params = list(net.get_parameters())
    history = [[p.asnumpy().copy() for p in params]]
    for seed in range(4):
        step(*batch(8, seed))
        history.append([p.asnumpy().copy() for p in params])
    # ema_N = d^N w_0 + sum_i (1 - d) d^(N - i) w_i
    n = len(history) - 1
    for index, ema in enumerate(step.ema):
        expected = 0.8 ** n * history[0][index] + sum(
            0.2 * 0.8 ** (n - i) * history[i][index] for i in range(1, n + 1))
        assert np.abs(ema.asnumpy() - expected).max() < 1e-5, ema.name
    assert step.ema[0].name == "ema." + params[0].name
    with step.ema_weights():  # the network holds the EMA inside, its own weights after
        assert np.array_equal(params[0].asnumpy(), step.ema[0].asnumpy())
    assert np.array_equal(params[0].asnumpy(), history[-1][0])


def test_the_loss_scale_divides_out(mode):
    x, y = batch(8)
    plain, plain_net = make_step()
    plain(x, y)
    scaled, scaled_net = make_step(sens=1024.0)
    scaled(x, y)
    got, expected = weights(scaled_net), weights(plain_net)
    assert max(np.abs(got[k] - expected[k]).max() for k in got) < 1e-5
