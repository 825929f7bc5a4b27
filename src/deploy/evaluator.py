"""Evaluation: Loss, Top_1_Acc and Top_5_Acc of a checkpoint, or of an exported file (MINDIR,
ONNX, INT8 ONNX), over the whole validation set."""
import time

import numpy as np
from mindspore import nn
from mindspore.train import Model

from src.checkpoint import load_weights, read_checkpoint, resolve, write_error
from src.CrossEntropySmooth import CrossEntropySmooth
from src.dataset import check_layout, create_dataset, split_record
from src.deploy.runtimes import check_runtime_applies
from src.device import use_device
from src.errors import UserError
from src.model_utils.config import with_values
from src.weights.pretrained import checkpoint_of

EVAL_LOG = "eval_log.txt"


def eval_metrics(num_classes: int) -> dict:
    """Loss, Top_1_Acc and Top_5_Acc (top-all when there are fewer than 5 classes, where
    MindSpore's top-5 metric would fail)."""
    return {"Loss": nn.Loss(), "Top_1_Acc": nn.Top1CategoricalAccuracy(),
            "Top_5_Acc": nn.TopKCategoricalAccuracy(min(5, int(num_classes)))}


def evaluate(config, model: str = "") -> dict:
    """Evaluate ``config.checkpoint_path`` (or the weights ``--pretrained`` names), or the
    exported file ``model``; print the zoo's result line and append it to eval_log.txt."""
    if model:
        return evaluate_file(config, model)
    path = checkpoint_of(config)
    if not path:
        raise UserError("no checkpoint given", "--checkpoint_path",
                        "give --checkpoint_path CKPT, --model FILE (.mindir, .onnx) or "
                        "--pretrained TAG (evaluating random weights is never useful)")
    check_runtime_applies(config, path)
    use_device(config.device_target, config.conv_impl, config.device_id)
    params, meta = read_checkpoint(path)
    record = resolve(config, meta, path)
    check_layout(record.dataset, config.dataset_path, training=False)
    net = record.build(conv_impl=config.conv_impl)
    which = load_weights(net, params, path, use_ema=config.use_ema_weights)
    net.set_train(False)
    data_config = held_out_config(config, record, meta, path)
    dataset = create_dataset(data_config, training=False, classes=record.class_names or None)
    loss = CrossEntropySmooth(sparse=True, reduction="mean", smooth_factor=0.0,
                              num_classes=record.num_classes)
    model = Model(net, loss_fn=loss, metrics=eval_metrics(record.num_classes))
    started = time.time()
    result = model.eval(dataset, dataset_sink_mode=False)
    weights = ", weights: ema" if which == "ema" else ""  # the moving average a run saved
    return _report(result, f"network: {record.network}, ckpt: '{path}'{weights}", started)


def held_out_config(config, record, meta: dict, path: str):
    """The data config of an eval: the record's pixels and classes; and where the run held its
    validation files out of one folder (val_fraction), those files, unless --val_fraction is
    given, checked to be the ones the run held out (their count and digest)."""
    data_config = record.data_config(config)
    if "val_fraction" in config.explicit or not float(meta.get("val_fraction", 0) or 0):
        return data_config
    fraction = float(meta["val_fraction"])
    data_config = with_values(data_config, val_fraction=fraction)
    if record.dataset == "imagenet":
        mine = split_record(config.dataset_path, fraction)["val_split"]
        if mine != str(meta.get("val_split", "")):
            raise UserError(f"the data folder's held-out files ({mine}) are not the ones the run "
                            f"held out ({meta.get('val_split')}; count:digest)",
                            config.dataset_path, "give the folder the run trained on, unchanged, "
                            "or --val_fraction 0 with a val/ folder")
        print(f"eval: the {mine.split(':')[0]} files the run held out ({fraction:g} of each "
              f"class folder) of {config.dataset_path}", flush=True)
    return data_config


def evaluate_file(config, path: str) -> dict:
    """The result line of an exported file (export.py's MINDIR or ONNX, float32 or INT8) on
    the validation set, read through the same pipeline as a checkpoint's: the pixels its
    sidecar records, the size and classes its graph declares."""
    from src.deploy.predictor import Predictor
    if config.checkpoint_path or config.pretrained:
        raise UserError("both --model and a checkpoint given", "command line",
                        "give --model FILE or --checkpoint_path CKPT, not both")
    use_device(config.device_target, config.conv_impl, config.device_id)
    batch = config.eval_batch_size if "eval_batch_size" in config.explicit else None
    predictor = Predictor(path, config, batch_size=batch)
    side = predictor.exported_side(path)
    record = predictor.record
    check_layout(record.dataset, config.dataset_path, training=False)
    data_config = with_values(record.data_config(config), image_size=side)
    dataset = create_dataset(data_config, training=False, classes=record.class_names or None,
                             batch_size=predictor.fixed_batch)
    metrics = eval_metrics(record.num_classes)
    started, losses, count = time.time(), 0.0, 0
    for images, labels in dataset.create_tuple_iterator(output_numpy=True):
        logits = predictor.logits(images.astype(np.float32))
        labels = labels.astype(np.int64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        losses -= float(log_probs[np.arange(len(labels)), labels].sum())
        count += len(labels)
        for name in ("Top_1_Acc", "Top_5_Acc"):
            metrics[name].update(logits, labels)
    if not count:
        raise UserError("no images to evaluate", config.dataset_path, "give a validation set")
    result = {"Loss": losses / count,
              **{name: metrics[name].eval() for name in ("Top_1_Acc", "Top_5_Acc")}}
    return _report(result, f"network: {record.network}, model: '{path}'", started)


def _report(result: dict, subject: str, started: float) -> dict:
    line = f"result: {result}, {subject}, time: {time.time() - started:.1f} s"
    print(line, flush=True)
    try:
        with open(EVAL_LOG, "a", encoding="utf-8") as log:
            log.write(line + "\n")
    except OSError as err:  # the result is printed above; the log line is what is lost
        raise write_error(err, EVAL_LOG, len(line)) from err
    return result
