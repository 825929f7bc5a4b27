"""Evaluation: Loss, Top_1_Acc and Top_5_Acc of a checkpoint over the whole validation set."""
import time

from mindspore import nn
from mindspore.train import Model

from src.checkpoint import load_weights, read_checkpoint, resolve, write_error
from src.CrossEntropySmooth import CrossEntropySmooth
from src.dataset import check_layout, create_dataset
from src.device import use_device
from src.errors import UserError
from src.pretrained import checkpoint_of

EVAL_LOG = "eval_log.txt"


def eval_metrics(num_classes: int) -> dict:
    """Loss, Top_1_Acc and Top_5_Acc (top-all when there are fewer than 5 classes, where
    MindSpore's top-5 metric would fail)."""
    return {"Loss": nn.Loss(), "Top_1_Acc": nn.Top1CategoricalAccuracy(),
            "Top_5_Acc": nn.TopKCategoricalAccuracy(min(5, int(num_classes)))}


def evaluate(config) -> dict:
    """Evaluate ``config.checkpoint_path`` (or the weights ``--pretrained`` names); print the
    zoo's result line and append it to eval_log.txt."""
    path = checkpoint_of(config)
    if not path:
        raise UserError("no checkpoint given", "--checkpoint_path",
                        "give --checkpoint_path CKPT or --pretrained TAG (evaluating random "
                        "weights is never useful)")
    use_device(config.device_target, config.conv_impl)
    params, meta = read_checkpoint(path)
    record = resolve(config, meta, path)
    check_layout(record.dataset, config.dataset_path)
    net = record.build(conv_impl=config.conv_impl)
    load_weights(net, params, path)
    net.set_train(False)
    dataset = create_dataset(record.data_config(config), training=False,
                             classes=record.class_names or None)
    loss = CrossEntropySmooth(sparse=True, reduction="mean", smooth_factor=0.0,
                              num_classes=record.num_classes)
    model = Model(net, loss_fn=loss, metrics=eval_metrics(record.num_classes))
    started = time.time()
    result = model.eval(dataset, dataset_sink_mode=False)
    line = (f"result: {result}, network: {record.network}, ckpt: '{path}', "
            f"time: {time.time() - started:.1f} s")
    print(line, flush=True)
    try:
        with open(EVAL_LOG, "a", encoding="utf-8") as log:
            log.write(line + "\n")
    except OSError as err:  # the result is printed above; the log line is what is lost
        raise write_error(err, EVAL_LOG, len(line)) from err
    return result
