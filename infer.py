"""Predict the top-5 classes of images: python infer.py --model FILE.{ckpt,mindir,onnx} IMAGES...

Other flags are config keys (for a .ckpt without metadata: --network, --num_classes).
"""
import sys
import time

from src.cli import ArgumentParser, run_main
from src.errors import UserError


def main(argv):
    from src.deploy.predictor import Predictor, image_files, preprocess, read_labels, softmax
    from src.device import use_device
    from src.model_utils.config import get_config, split_config_args
    from src.weights.pretrained import checkpoint_of

    parser = ArgumentParser(prog="infer.py", description=__doc__, allow_abbrev=False)
    parser.add_argument("--model", default="", help=".ckpt, .mindir or .onnx file (or give "
                        "--pretrained TAG and --network: a source's published weights)")
    parser.add_argument("--labels", default="", help="text file: one class name per line")
    parser.add_argument("images", nargs="+", help="image files or folders")
    config_args, rest = split_config_args(argv)  # config keys may stand anywhere on the line
    args = parser.parse_args(rest)
    config = get_config(config_args)
    model = args.model or checkpoint_of(config)
    if not model:
        raise UserError("no model given", "--model",
                        "give --model FILE (.ckpt, .mindir, .onnx) or --pretrained TAG")
    use_device(config.device_target, config.conv_impl, config.device_id)
    # --batch_size (the config key): images per forward pass; default 8, or a fixed-batch
    # export's batch, which a given one must equal
    given = config.batch_size if "batch_size" in config.explicit else None
    predictor = Predictor(model, config, batch_size=given)
    files = image_files(args.images)
    record = predictor.record
    started = time.time()
    batch_size = given or predictor.fixed_batch or 8
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        probs = softmax(predictor.logits(preprocess(chunk, record.dataset, predictor.size,
                                                    record.input_norm, record.eval_resize)))
        labels = read_labels(args.labels, probs.shape[1], record.class_names)
        for name, row in zip(chunk, probs, strict=True):
            top = row.argsort()[::-1][:5]
            print(f"{name}: " + ", ".join(f"{labels[i]} {row[i]:.4f}" for i in top), flush=True)
    elapsed = time.time() - started
    print(f"infer: {len(files)} images in {elapsed:.2f} s ({len(files) / elapsed:.1f} images/s) "
          f"with {model}", flush=True)


if __name__ == "__main__":
    sys.exit(run_main(main))
