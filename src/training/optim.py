"""The optimizers a recipe names with ``opt``, over the same parameter groups (weight decay on
weights only, not BatchNorm's gamma/beta or biases) and the same per-step lr array:

- ``momentum``: MindSpore's Momentum, the zoo's; with ``use_nesterov`` MindSpore's SGD, whose
  Nesterov step is PyTorch's (2.10's CPU Momentum kernel applies Nesterov's term with the
  previous step's accumulator);
- ``sgd``: MindSpore's SGD with ``momentum`` (and ``use_nesterov``), MindCV's ``sgd``;
- ``adamw``: Adam with decoupled weight decay and bias correction (``AdamW`` below: ``beta1``,
  ``beta2``, ``eps``), as torch.optim.AdamW and MindCV's adamw compute it;
- ``rmsprop``: TensorFlow's RMSProp, the one that trained MobileNet (``RMSProp`` below, as
  MindSpore's nn.RMSProp documents it and timm's ``rmsproptf`` computes it; ``rmsprop_decay``,
  ``momentum``, ``eps``): the squared gradients' average starts at 1, eps is added inside the
  square root, the momentum buffer holds lr-scaled steps. torch.optim.RMSprop starts the average
  at 0 and adds eps outside. (MindSpore 2.10's CPU RMSProp kernel adds eps outside the root for
  the first eight values of a tensor and inside for the rest: not used.)

Every one of them keeps its state in parameters the train network saves with the weights, so a
checkpoint resumes it exactly (``state_of``).
"""
import mindspore as ms
from mindspore import nn, ops

OPTIMIZERS = ("momentum", "sgd", "adamw", "rmsprop")
NO_DECAY = (".gamma", ".beta", ".bias")


HEAD = "classifier."


def param_groups(net, weight_decay: float, lr=None, head_lr_scale: float = 1.0) -> list:
    """Parameter groups of the trainable parameters (frozen ones are not: no update, no weight
    decay): weight decay on weights only, not BatchNorm gamma/beta or biases; with
    ``head_lr_scale`` other than 1, the classifier's in groups of their own at ``lr`` (the
    per-step array) times it."""
    params = net.trainable_params()
    parts = [(params, False)]  # (parameters, at the head's lr)
    if head_lr_scale != 1.0:
        parts = [([p for p in params if not p.name.startswith(HEAD)], False),
                 ([p for p in params if p.name.startswith(HEAD)], True)]
    groups = []
    for part, head in parts:
        for decay in (True, False):
            chosen = [p for p in part if p.name.endswith(NO_DECAY) != decay]
            if not chosen:
                continue
            group = {"params": chosen, "weight_decay": weight_decay if decay else 0.0}
            if head:
                group["lr"] = ms.Tensor(lr * head_lr_scale)
            groups.append(group)
    return groups + [{"order_params": params}]


def create_optimizer(config, net, lr, loss_scale: float = 1.0):
    """The optimizer ``config.opt`` names over ``net``'s parameter groups, with the per-step
    learning rates ``lr`` (a numpy array; the classifier's times ``head_lr_scale``) and the loss
    scale it divides the gradients by."""
    groups = param_groups(net, config.weight_decay, lr, config.head_lr_scale)
    lr = ms.Tensor(lr)
    if config.opt == "momentum" and not config.use_nesterov:
        return nn.Momentum(groups, lr, config.momentum, loss_scale=loss_scale)
    if config.opt in ("momentum", "sgd"):
        return nn.SGD(groups, lr, config.momentum, nesterov=config.use_nesterov,
                      loss_scale=loss_scale)
    if config.opt == "adamw":
        return AdamW(groups, lr, config.beta1, config.beta2, config.eps, loss_scale=loss_scale)
    return RMSProp(groups, lr, config.rmsprop_decay, config.momentum, config.eps,
                   loss_scale=loss_scale)


def state_of(opt, net) -> list:
    """The optimizer's own state parameters (moments, squared-gradient averages...), in a fixed
    order: every parameter it holds but the network's, its step counter and its lr."""
    own = {p.name for p in net.get_parameters()}
    return [p for p in opt.get_parameters()
            if p.name not in own and p.name not in ("global_step", "learning_rate")]


# value * factor in the value's dtype, over a tuple with HyperMap: gradients, weight decays.
scale_by = ops.MultitypeFuncGraph("scale_by")


@scale_by.register("Tensor", "Tensor")
def _scale_by_tensor(factor, value):
    return value * ops.cast(factor, value.dtype)


_adamw_step = ops.MultitypeFuncGraph("adamw_step")


@_adamw_step.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                      "Tensor", "Tensor", "Tensor", "Tensor")
def _adamw_update(beta1, beta2, eps, correction1, correction2, lr, decay, param, m, v, gradient):
    """One AdamW step of one parameter (float32 state); ``decay``: lr-free weight decay."""
    gradient = ops.cast(gradient, ms.float32)
    next_m = beta1 * m + (1.0 - beta1) * gradient
    next_v = beta2 * v + (1.0 - beta2) * ops.square(gradient)
    update = (next_m / correction1) / (ops.sqrt(next_v / correction2) + eps)
    next_param = ops.cast(param, ms.float32) * (1.0 - lr * decay) - lr * update
    next_param = ops.depend(next_param, ops.assign(param, ops.cast(next_param, param.dtype)))
    next_param = ops.depend(next_param, ops.assign(m, next_m))
    return ops.depend(next_param, ops.assign(v, next_v))


_rmsprop_step = ops.MultitypeFuncGraph("rmsprop_step")


@_rmsprop_step.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                        "Tensor")
def _rmsprop_update(decay, momentum, eps, lr, param, square, moment, gradient):
    """One TensorFlow RMSProp step of one parameter."""
    gradient = ops.cast(gradient, ms.float32)
    next_square = decay * square + (1.0 - decay) * ops.square(gradient)
    next_moment = momentum * moment + lr * gradient / ops.sqrt(next_square + eps)
    next_param = ops.cast(param, ms.float32) - next_moment
    next_param = ops.depend(next_param, ops.assign(param, ops.cast(next_param, param.dtype)))
    next_param = ops.depend(next_param, ops.assign(square, next_square))
    return ops.depend(next_param, ops.assign(moment, next_moment))


class AdamW(nn.Optimizer):
    """torch.optim.AdamW's step, from MindSpore's operators: m = b1 m + (1 - b1) g,
    v = b2 v + (1 - b2) g^2,
    w <- w (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
    MindSpore's own AdamWeightDecay leaves out the bias correction (1 - b^t), which makes its
    first steps about three times larger."""

    def __init__(self, params, learning_rate, beta1=0.9, beta2=0.999, eps=1e-8,
                 weight_decay=0.0, loss_scale=1.0):
        super().__init__(learning_rate, params, weight_decay, loss_scale)
        self.beta1 = ms.Tensor(beta1, ms.float32)
        self.beta2 = ms.Tensor(beta2, ms.float32)
        self.eps = ms.Tensor(eps, ms.float32)
        self.moments1 = self._parameters.clone(prefix="adam_m", init="zeros")
        self.moments2 = self._parameters.clone(prefix="adam_v", init="zeros")

    def construct(self, gradients):
        gradients = self.scale_grad(gradients)
        lr = self.get_lr()
        # MindSpore keeps weight decay multiplied by the loss scale (for the L2 term it adds to
        # scaled gradients): decoupled, it is divided back.
        decays = self.map_(ops.partial(scale_by, self.reciprocal_scale),
                            self.get_weight_decay())
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        step = ops.cast(self.global_step, ms.float32)
        correction1 = 1.0 - ops.pow(self.beta1, step)
        correction2 = 1.0 - ops.pow(self.beta2, step)
        if self.is_group_lr:  # a learning rate a parameter (head_lr_scale)
            return self.hyper_map(ops.partial(_adamw_step, self.beta1, self.beta2, self.eps,
                                              correction1, correction2),
                                  lr, decays, self._parameters, self.moments1, self.moments2,
                                  gradients)
        return self.hyper_map(ops.partial(_adamw_step, self.beta1, self.beta2, self.eps,
                                          correction1, correction2, lr),
                              decays, self._parameters, self.moments1, self.moments2, gradients)


class RMSProp(nn.Optimizer):
    """TensorFlow's RMSProp from MindSpore's operators, L2 weight decay added to the gradient:
    s = rho s + (1 - rho) g^2 (s starts at 1), b = momentum b + lr g / sqrt(s + eps), w <- w - b."""

    def __init__(self, params, learning_rate, decay=0.9, momentum=0.0, eps=1e-8,
                 weight_decay=0.0, loss_scale=1.0):
        super().__init__(learning_rate, params, weight_decay, loss_scale)
        self.decay = ms.Tensor(decay, ms.float32)
        self.momentum = ms.Tensor(momentum, ms.float32)
        self.eps = ms.Tensor(eps, ms.float32)
        self.mean_square = self._parameters.clone(prefix="mean_square", init="ones")
        self.moment = self._parameters.clone(prefix="moment", init="zeros")

    def construct(self, gradients):
        gradients = self.decay_weight(gradients)
        gradients = self.scale_grad(gradients)
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        if self.is_group_lr:  # a learning rate a parameter (head_lr_scale)
            return self.hyper_map(ops.partial(_rmsprop_step, self.decay, self.momentum,
                                              self.eps),
                                  lr, self._parameters, self.mean_square, self.moment, gradients)
        return self.hyper_map(ops.partial(_rmsprop_step, self.decay, self.momentum, self.eps, lr),
                              self._parameters, self.mean_square, self.moment, gradients)
