"""The train step of recipes that need more than MindSpore's own: gradient accumulation
(``gradient_accumulation_steps``), clipping by global norm (``clip_grad``, ``clip_value``) and an
exponential moving average of the weights (``ema``, ``ema_decay``).

One call is one micro-batch: the loss scaled by the fixed loss scale, its gradients averaged over
the ranks (data parallel) and unscaled; with accumulation they are summed into ``accumulated``
and every k-th call applies their mean. Then the clip (torch.nn.utils.clip_grad_norm_'s rule, on
the unscaled mean gradient), the optimizer (built with loss scale 1), and the EMA update of every
network parameter, BatchNorm's moving statistics included (timm's ModelEmaV2):
ema = decay * ema + (1 - decay) * weight. The accumulated gradients, the cycle's position and the
EMA are parameters of this cell, so a checkpoint of the train network carries them and a resume
continues them exactly, in the middle of a cycle too.
"""
import contextlib

import mindspore as ms
from mindspore import nn, ops

from src.checkpoint import EMA_PREFIX
from src.training.optim import scale_by

_accumulate = ops.MultitypeFuncGraph("accumulate")


@_accumulate.register("Tensor", "Tensor", "Tensor")
def _accumulate_tensor(share, accumulated, grad):
    """accumulated += grad * share; returns the new sum."""
    total = accumulated + grad * ops.cast(share, grad.dtype)
    return ops.depend(total, ops.assign(accumulated, total))


_reset = ops.MultitypeFuncGraph("reset")


@_reset.register("Tensor")
def _reset_tensor(accumulated):
    return ops.assign(accumulated, ops.zeros_like(accumulated))


_average = ops.MultitypeFuncGraph("average")


@_average.register("Tensor", "Tensor", "Tensor")
def _average_tensor(decay, ema, weight):
    """ema = decay ema + (1 - decay) weight."""
    return ops.assign(ema, decay * ema + (1.0 - decay) * weight)


class TrainStep(nn.TrainOneStepCell):
    """``network``: the loss network over ``net``; ``sens``: the fixed loss scale."""

    def __init__(self, network, optimizer, net, sens: float = 1.0, accumulation: int = 1,
                 clip_norm: float = 0.0, ema_decay: float = 0.0):
        super().__init__(network, optimizer, sens)
        self.hyper_map = ops.HyperMap()
        self.unscale = ms.Tensor(1.0 / sens, ms.float32)
        self.accumulation = int(accumulation)
        self.share = ms.Tensor(1.0 / self.accumulation, ms.float32)
        self.clip_norm = float(clip_norm)
        self.use_ema = ema_decay > 0
        if self.accumulation > 1:
            self.accumulated = self.weights.clone(prefix="accumulated", init="zeros")
            self.micro_step = ms.Parameter(ms.Tensor([0], ms.int32), name="micro_step",
                                           requires_grad=False)
        if self.use_ema:
            self.ema_decay = ms.Tensor(ema_decay, ms.float32)
            self.model_weights = ms.ParameterTuple(net.get_parameters())
            self.ema = self.model_weights.clone(prefix=EMA_PREFIX.rstrip("."), init="same")

    def construct(self, *inputs):
        loss = self.network(*inputs)
        sens = ops.fill(loss.dtype, loss.shape, self.sens)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        grads = self.grad_reducer(grads)
        grads = self.hyper_map(ops.partial(scale_by, self.unscale), grads)
        if self.accumulation == 1:
            return ops.depend(loss, self.apply(grads))
        mean = self.hyper_map(ops.partial(_accumulate, self.share), self.accumulated, grads)
        ops.assign_add(self.micro_step, ops.ones_like(self.micro_step))
        if self.micro_step[0] % self.accumulation == 0:
            loss = ops.depend(loss, self.apply(mean))
            loss = ops.depend(loss, self.hyper_map(_reset, self.accumulated))
        return loss

    def apply(self, grads):
        """The clip, the optimizer step and the EMA update of one (mean) gradient."""
        if self.clip_norm > 0:
            grads = ops.clip_by_global_norm(grads, self.clip_norm)
        done = self.optimizer(grads)
        if self.use_ema:
            done = ops.depend(done, self.hyper_map(ops.partial(_average, self.ema_decay),
                                                   self.ema, self.model_weights))
        return done
    def own_state(self) -> list:
        """This cell's state (accumulated gradients, the cycle's position, the EMA), which a
        resume restores by name and rank 0 broadcasts."""
        state = []
        if self.accumulation > 1:
            state += list(self.accumulated) + [self.micro_step]
        if self.use_ema:
            state += list(self.ema)
        return state

    @contextlib.contextmanager
    def ema_weights(self):
        """The network holds the EMA weights inside the block (an eval during training), its
        own ones again after it."""
        if not self.use_ema:
            yield
            return
        kept = [ms.Tensor(p.asnumpy()) for p in self.model_weights]
        for param, ema in zip(self.model_weights, self.ema, strict=True):
            param.set_data(ms.Tensor(ema.asnumpy()))
        try:
            yield
        finally:
            for param, value in zip(self.model_weights, kept, strict=True):
                param.set_data(value)
