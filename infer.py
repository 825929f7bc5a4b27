"""Predict the top classes of images: python infer.py --model FILE.{ckpt,mindir,onnx} IMAGES...

Images are files or folders, or a text file of paths (--files_from FILE, - for standard input).
Each image's top-k (--topk, default 5) is printed, and with --output FILE.json|FILE.csv written
as src/deploy/results.py describes. Other flags are config keys (for a .ckpt without metadata:
--network, --num_classes).
"""
import sys
import time

from src.cli import ArgumentParser, run_main
from src.errors import UserError


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="infer.py", description=__doc__, allow_abbrev=False)
    p.add_argument("--model", default="", help=".ckpt, .mindir or .onnx file (or give "
                   "--pretrained TAG and --network: a source's published weights)")
    p.add_argument("--labels", default="", help="text file: one class name per line")
    p.add_argument("--topk", default="", help="classes per image (default 5, or every class "
                   "of a model of fewer)")
    p.add_argument("--output", default="", help="also write the results to FILE.json or "
                   "FILE.csv (file, rank, class_index, class_name, probability)")
    p.add_argument("--output_format", default="", help="json or csv (default: --output's "
                   "suffix)")
    p.add_argument("--files_from", default="", help="a text file of image paths, one a line "
                   "(- reads them from standard input)")
    p.add_argument("images", nargs="*", help="image files or folders")
    return p


def main(argv):
    from src.deploy.predictor import (
        Predictor,
        image_files,
        listed_files,
        predict_files,
        read_labels,
    )
    from src.deploy.results import check_writable, output_format, top_k, write_results
    from src.device import use_device
    from src.model_utils.config import get_config, split_config_args
    from src.weights.pretrained import checkpoint_of

    config_args, rest = split_config_args(argv)  # config keys may stand anywhere on the line
    args = parser().parse_args(rest)
    config = get_config(config_args)
    if not args.images and not args.files_from:
        raise UserError("no images given", "command line",
                        "give image files or folders, or --files_from LIST")
    if args.topk and (not args.topk.isdigit() or int(args.topk) < 1):
        raise UserError(f"--topk {args.topk} is not a positive whole number", "--topk",
                        "give e.g. 5")
    fmt = output_format(args.output, args.output_format) if args.output else ""
    if args.output:
        check_writable(args.output)
    model = args.model or checkpoint_of(config)
    if not model:
        raise UserError("no model given", "--model",
                        "give --model FILE (.ckpt, .mindir, .onnx) or --pretrained TAG")
    use_device(config.device_target, config.conv_impl, config.device_id)
    # --batch_size (the config key): images per forward pass; default 8, or a fixed-batch
    # export's batch, which a given one must equal
    given = config.batch_size if "batch_size" in config.explicit else None
    predictor = Predictor(model, config, batch_size=given)
    files = image_files(args.images) if args.images else []
    if args.files_from:
        files += image_files(listed_files(args.files_from))
    classes = predictor.record.num_classes
    topk = int(args.topk) if args.topk else min(5, classes)
    if topk > classes:
        raise UserError(f"--topk {topk} is more than the model's {classes} classes", "--topk",
                        f"give 1 to {classes}")
    labels = read_labels(args.labels, classes, predictor.record.class_names)
    started, results = time.time(), []
    for name, probs in predict_files(predictor, files, given or predictor.fixed_batch or 8):
        best = top_k(probs, topk, labels)
        results.append({"file": name, "topk": best})
        print(f"{name}: " + ", ".join(f"{b['class_name']} {b['probability']:.4f}" for b in best),
              flush=True)
    elapsed = time.time() - started
    if args.output:
        write_results(args.output, fmt, results)
    print(f"infer: {len(files)} images in {elapsed:.2f} s ({len(files) / elapsed:.1f} images/s) "
          f"with {model}" + (f"; results in {args.output}" if args.output else ""), flush=True)


if __name__ == "__main__":
    sys.exit(run_main(main))
