"""The optimizers ``opt`` names take the steps PyTorch's take on the same weights and gradients,
with weight decay on weights only, in PyNative and in a graph-mode train step."""
import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import nn

from src.model_utils.config import get_config
from src.training.optim import create_optimizer, state_of

STEPS = 3


class Tiny(nn.Cell):
    """A weight that takes weight decay and a BatchNorm gamma that does not."""

    def __init__(self, weight, gamma):
        super().__init__()
        # copies: a Tensor may share a numpy array's memory, and the steps write into it
        self.weight = ms.Parameter(ms.Tensor(weight.copy()), name="conv.weight")
        self.gamma = ms.Parameter(ms.Tensor(gamma.copy()), name="bn.gamma")

    def construct(self, x):
        return (x * self.weight).sum() + self.gamma.sum()


class Gap(nn.Cell):
    def construct(self, out, label):
        return out - label


def draws(seed=0):
    rng = np.random.RandomState(seed)
    weight, gamma = rng.randn(4, 3).astype(np.float32), rng.randn(3).astype(np.float32)
    grads = [(rng.randn(4, 3).astype(np.float32), rng.randn(3).astype(np.float32))
             for _ in range(STEPS)]
    return weight, gamma, grads


def torch_steps(opt_class, weight, gamma, grads, lrs, weight_decay, **kwargs):
    w, g = torch.tensor(weight, requires_grad=True), torch.tensor(gamma, requires_grad=True)
    opt = opt_class([{"params": [w], "weight_decay": weight_decay},
                     {"params": [g], "weight_decay": 0.0}], lr=float(lrs[0]), **kwargs)
    if opt_class is torch.optim.RMSprop:  # TensorFlow's convention: the average starts at 1
        for p in (w, g):
            opt.state[p] = {"step": torch.tensor(0.0), "square_avg": torch.ones_like(p),
                            "momentum_buffer": torch.zeros_like(p)}
    for (gw, gg), lr in zip(grads, lrs, strict=True):
        for group in opt.param_groups:
            group["lr"] = float(lr)
        w.grad, g.grad = torch.tensor(gw), torch.tensor(gg)
        opt.step()
    return w.detach().numpy(), g.detach().numpy()


def our_steps(argv, weight, gamma, grads, lrs, loss_scale=1.0):
    config = get_config(argv)
    net = Tiny(weight, gamma)
    opt = create_optimizer(config, net, np.asarray(lrs, np.float32), loss_scale)
    for gw, gg in grads:
        opt((ms.Tensor(gw * loss_scale), ms.Tensor(gg * loss_scale)))
    return net.weight.asnumpy(), net.gamma.asnumpy(), opt, net


LRS = np.array([0.1, 0.05, 0.02], np.float32)
CASES = {
    "momentum": (["--opt", "momentum", "--momentum", "0.9", "--weight_decay", "0.01"],
                 torch.optim.SGD, {"momentum": 0.9}, LRS),
    "momentum_nesterov": (["--opt", "momentum", "--use_nesterov", "True", "--weight_decay",
                           "0.01"], torch.optim.SGD, {"momentum": 0.9, "nesterov": True}, LRS),
    "sgd_nesterov": (["--opt", "sgd", "--use_nesterov", "True", "--weight_decay", "0.01"],
                     torch.optim.SGD, {"momentum": 0.9, "nesterov": True}, LRS),
    "adamw": (["--opt", "adamw", "--weight_decay", "0.05", "--beta1", "0.8", "--beta2", "0.99",
               "--eps", "1e-8"], torch.optim.AdamW, {"betas": (0.8, 0.99), "eps": 1e-8}, LRS),
    # RMSProp is TensorFlow's (optim.py): PyTorch's with its squared-gradient average started at
    # 1, a tiny eps (ours adds it inside the square root, PyTorch outside:
    # test_rmsprop_puts_eps_inside_the_root pins ours down) and a constant lr (ours keeps
    # lr-scaled steps in its momentum buffer).
    "rmsprop": (["--opt", "rmsprop", "--momentum", "0.5", "--rmsprop_decay", "0.9", "--eps",
                 "1e-12", "--weight_decay", "0.01"], torch.optim.RMSprop,
                {"alpha": 0.9, "momentum": 0.5, "eps": 1e-12}, np.full(3, 0.01, np.float32)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_steps_equal_pytorchs(case):
    argv, torch_class, kwargs, lrs = CASES[case]
    weight, gamma, grads = draws()
    wd = float(argv[argv.index("--weight_decay") + 1])
    expected = torch_steps(torch_class, weight, gamma, grads, lrs, wd, **kwargs)
    got_w, got_g, opt, net = our_steps(argv, weight, gamma, grads, lrs)
    assert np.abs(got_w - expected[0]).max() < 1e-5, case
    assert np.abs(got_g - expected[1]).max() < 1e-5, case
    assert np.abs(got_w - weight).max() > 1e-3  # it moved
    assert int(opt.global_step.asnumpy()[0]) == STEPS
    assert state_of(opt, net) and all(p.name not in ("conv.weight", "bn.gamma")
                                      for p in state_of(opt, net))


def test_the_loss_scale_divides_the_gradients():
    argv = CASES["adamw"][0]
    weight, gamma, grads = draws(1)
    plain = our_steps(argv, weight, gamma, grads, LRS)
    scaled = our_steps(argv, weight, gamma, grads, LRS, loss_scale=1024.0)
    assert np.abs(plain[0] - scaled[0]).max() < 1e-6


def test_rmsprop_puts_eps_inside_the_root():
    weight, gamma, grads = draws(2)
    lrs = np.full(1, 0.01, np.float32)
    got, _, _, _ = our_steps(["--opt", "rmsprop", "--momentum", "0", "--eps", "1.0",
                              "--weight_decay", "0"], weight, gamma, grads[:1], lrs)
    square = 0.9 * 1.0 + 0.1 * grads[0][0] ** 2  # the average started at 1
    assert np.abs(got - (weight - 0.01 * grads[0][0] / np.sqrt(square + 1.0))).max() < 1e-6


@pytest.mark.parametrize("opt", ["sgd", "adamw", "rmsprop"])
def test_each_optimizer_trains_in_a_graph_mode_step(opt):
    """The train step as train.py compiles it: the optimizer inside one graph."""
    ms.set_context(mode=ms.GRAPH_MODE)
    weight, gamma, _ = draws(3)
    net = Tiny(weight, gamma)
    config = get_config(["--opt", opt])
    optimizer = create_optimizer(config, net, np.full(4, 0.01, np.float32))
    step = nn.TrainOneStepCell(nn.WithLossCell(net, Gap()), optimizer)
    x = ms.Tensor(np.ones((4, 3), np.float32))
    losses = [float(step(x, ms.Tensor(0.0, ms.float32)).asnumpy()) for _ in range(3)]
    assert losses[-1] < losses[0]  # the loss is linear in the weights: every step lowers it


def test_nesterov_without_momentum_is_one_line(cli, tmp_path):
    result = cli("train.py", "--dataset", "synthetic", "--opt", "adamw", "--use_nesterov",
                 "True", "--output_path", tmp_path / "out")
    assert result.returncode == 2 and result.error_lines() == [
        "error: Nesterov's momentum needs opt momentum or sgd with a momentum above 0 (opt "
        "adamw, momentum 0.9) (--use_nesterov): give --use_nesterov False, or --opt momentum "
        "with --momentum 0.9"]
