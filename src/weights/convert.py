"""PyTorch checkpoints of megvii, torchvision and timm to MindSpore checkpoints of our networks.

Each source is one declared table: the family it covers, the options our network needs to
compute what its code computes, the pixels its weights expect, and a function from its module
names to ours. Leaf names map the same for all (weight/bias of a BatchNorm -> gamma/beta,
running_mean/var -> moving_mean/variance; num_batches_tracked dropped). Every source tensor must
land on one of our parameters with its shape and every parameter must be filled, or nothing is
written. Layout differences:
- megvii ShuffleNetV1 shuffles after the depthwise conv and its BN, we before: those two get
  their channels permuted by the shuffle (and our shuffle uses megvii's order).
- torchvision's ShuffleNetV2 is another network (branch widths, split, shuffle place): it loads
  into ours built with ``layout: torchvision``.
- megvii expects BGR 0-255, timm mean = std = 0.5: recorded as ``input_norm`` in the checkpoint,
  and eval/infer/--pretrained apply it.
torch is needed by this tool only (``pip install torch==2.13.0``).
"""
import json
import os
import re
import warnings

import mindspore as ms
import numpy as np

from src.checkpoint import build_network, save_atomically
from src.errors import ArgumentParser, UserError, writable_folder
from src.models import family_of, list_networks, options_of

BN_LEAVES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
             "running_var": "moving_variance"}
MOBILENET_STAGE_BLOCKS = (1, 2, 2, 6, 2)  # timm's blocks.s.b: separable blocks per stage
TORCHVISION_STAGE_START = {"stage2": 0, "stage3": 4, "stage4": 12}  # index in our features


def megvii_v1_module(name: str) -> str:
    """megvii ShuffleNetV1 -> ours: its branch_main_1.{3,4} (dw, BN) and branch_main_2.{0,1}
    are our branch_main_2.{0,1,2,3}; classifier.0 is our classifier."""
    if name == "classifier.0":
        return "classifier"
    match = re.fullmatch(r"(features\.\d+)\.branch_main_(\d)\.(\d)", name)
    if match:
        unit, branch, index = match.group(1), int(match.group(2)), int(match.group(3))
        if branch == 1 and index >= 3:
            return f"{unit}.branch_main_2.{index - 3}"
        if branch == 2:
            return f"{unit}.branch_main_2.{index + 2}"
    return name


def megvii_v2_module(name: str) -> str:
    """megvii ShuffleNetV2 -> ours: the same names but classifier.0."""
    return "classifier" if name == "classifier.0" else name


def torchvision_v2_module(name: str) -> str:
    """torchvision ShuffleNetV2 -> ours (layout torchvision): conv1/conv5/fc are our
    first_conv/conv_last/classifier, stageS.i.branch1/branch2 our features.n.branch_proj/main."""
    match = re.fullmatch(r"(stage\d)\.(\d+)\.branch([12])\.(\d+)", name)
    if match:
        unit = TORCHVISION_STAGE_START.get(match.group(1), -1000) + int(match.group(2))
        branch = "branch_proj" if match.group(3) == "1" else "branch_main"
        return f"features.{unit}.{branch}.{match.group(4)}"
    for theirs, ours in (("conv1.", "first_conv."), ("conv5.", "conv_last.")):
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return "classifier" if name == "fc" else name


def timm_mobilenet_module(name: str) -> str:
    """timm mobilenetv1_100 -> ours: conv_stem/bn1 are features.0/1, blocks.s.b's conv_dw, bn1,
    conv_pw, bn2 are features.(3 + block).{0,1,3,4}."""
    stem = {"conv_stem": "features.0", "bn1": "features.1"}
    if name in stem:
        return stem[name]
    match = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(conv_dw|bn1|conv_pw|bn2)", name)
    if match:
        stage, block = int(match.group(1)), int(match.group(2))
        unit = 3 + sum(MOBILENET_STAGE_BLOCKS[:stage]) + block
        index = {"conv_dw": 0, "bn1": 1, "conv_pw": 3, "bn2": 4}[match.group(3)]
        return f"features.{unit}.{index}"
    return name


def megvii_shuffle_permutation(channels: int, groups: int) -> np.ndarray:
    """sigma with shuffle(x)[j] = x[sigma[j]] for megvii's shuffle (view (C/g, g), transpose)."""
    return np.arange(channels).reshape(channels // groups, groups).T.reshape(-1)


def permute_megvii_v1(params: dict, net) -> None:
    """Move megvii's post-depthwise shuffle before the depthwise conv: permute that conv's and
    its BN's channels by the shuffle (new[j] = old[sigma[j]])."""
    for name, cell in net.cells_and_names():
        if name.endswith(".branch_main_2"):
            groups = int(cell[2].group)  # the unit's second grouped 1x1 conv
            mid = params[f"{name}.0.weight"].shape[0]
            sigma = megvii_shuffle_permutation(mid, groups)
            for leaf in ("0.weight", "1.gamma", "1.beta", "1.moving_mean", "1.moving_variance"):
                params[f"{name}.{leaf}"] = params[f"{name}.{leaf}"][sigma]


# source -> families it covers, our network's options for its code, the input_norm its weights
# expect, its module names -> ours per family, and per family a fix-up of the mapped tensors.
SOURCES = {
    "megvii": {"families": ("shufflenet_v1", "shufflenet_v2"),
               "options": {"pool_pad": "pad", "shuffle_order": "megvii", "layout": "megvii"},
               "input_norm": "megvii_bgr",
               "modules": {"shufflenet_v1": megvii_v1_module, "shufflenet_v2": megvii_v2_module},
               "fixups": {"shufflenet_v1": permute_megvii_v1}},
    "torchvision": {"families": ("shufflenet_v2",),
                    "options": {"pool_pad": "pad", "layout": "torchvision"},
                    "input_norm": "imagenet",
                    "modules": {"shufflenet_v2": torchvision_v2_module}},
    "timm": {"families": ("mobilenet_v1",), "options": {"activation": "relu6"},
             "input_norm": "inception", "modules": {"mobilenet_v1": timm_mobilenet_module}},
}


SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                      "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                      "BOOL": np.bool_}


def read_safetensors(path: str) -> dict:
    """name -> numpy array of a .safetensors file (an 8-byte header length, a JSON header of
    dtype, shape and byte range per tensor, the bytes): what the Hugging Face hub serves timm's
    weights as. Needs no torch. A file cut short is refused (its header says its length)."""
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(length)) if 0 < length < 100_000_000 else None
            data = f.read()
    except (OSError, ValueError) as err:
        raise UserError("not a readable safetensors file", path,
                        "give the .safetensors file the source published") from err
    if not isinstance(header, dict):
        raise UserError("not a readable safetensors file", path,
                        "give the .safetensors file the source published")
    header.pop("__metadata__", None)
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if len(data) < end:
        raise UserError(f"safetensors file cut short ({len(data)} of {end} data bytes)", path,
                        "download it again")
    out = {}
    for name, tensor in header.items():
        begin, stop = tensor["data_offsets"]
        raw = np.frombuffer(data[begin:stop], np.uint16 if tensor["dtype"] == "BF16"
                            else SAFETENSORS_DTYPES[tensor["dtype"]])
        if tensor["dtype"] == "BF16":  # bfloat16 is float32's upper half
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[name] = raw.reshape(tensor["shape"])
    return out


def read_torch_state(path: str) -> dict:
    """name -> float32 numpy array of a PyTorch checkpoint (a state_dict, or one under
    'state_dict' / 'model') or a .safetensors file, with 'module.' prefixes stripped and
    num_batches_tracked dropped."""
    if not os.path.isfile(path):
        raise UserError("source checkpoint not found", path, "give the PyTorch .pth/.pth.tar file")
    if path.endswith(".safetensors"):
        return clean_state(read_safetensors(path))
    try:
        import torch
    except ImportError as err:
        raise UserError("torch is not installed", "convert_weights.py",
                        "pip install torch==2.13.0 (CPU wheel; a plain 'torch' pulls CUDA)"
                        ) from err
    # A bad file can make torch warn (e.g. of an odd pickle protocol) before it fails: those
    # warnings are held back so the user sees our one line; a file that loads gets them shown.
    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many kinds (pickle, zip, runtime) for a bad file
            raise UserError("not a readable PyTorch checkpoint", path,
                            "give the .pth/.pth.tar file the source published") from err
    for warning in held:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
        raise UserError("the file holds no state_dict of tensors", path,
                        "give the checkpoint file of the network's weights")
    return clean_state({name: tensor.detach().float().cpu().numpy()
                        for name, tensor in state.items()})


def clean_state(state: dict) -> dict:
    """float32 arrays by name, without DataParallel's 'module.' and BatchNorm's step counter."""
    out = {}
    for name, array in state.items():
        name = name[len("module."):] if name.startswith("module.") else name
        if not name.endswith("num_batches_tracked"):
            out[name] = np.asarray(array, np.float32)
    return out


def first_few(names: list, count: int = 6) -> str:
    """The first ``count`` names, comma-separated, with '...' when there are more."""
    return ", ".join(names[:count]) + ("..." if len(names) > count else "")


def convert(state: dict, source: str, network: str, path: str) -> tuple:
    """(our parameters as name -> numpy array, checkpoint metadata) from a source state_dict.

    Refuses with the unmatched names (theirs and ours), else with the shape mismatches.
    """
    spec = SOURCES[source]
    family = family_of(network)
    if family not in spec["families"]:
        raise UserError(f"{source} publishes no {family} weights", "--network",
                        f"give a network of {', '.join(spec['families'])}")
    head = [k for k in state if k.endswith("weight") and state[k].ndim == 2]
    if len(head) != 1:
        raise UserError("cannot find the classifier (one 2-D weight)", path,
                        f"give a {source} checkpoint of {network}")
    meta = {"network": network, "num_classes": int(state[head[0]].shape[0]),
            **{k: v for k, v in spec["options"].items() if k in options_of(network)}}
    net = build_network(meta, conv_impl="mindspore")
    ours = {p.name: tuple(p.shape) for p in net.get_parameters()}
    bn_modules = {n.rsplit(".", 1)[0] for n in ours if n.endswith(".gamma")}
    to_module = spec["modules"][family]
    converted, unmatched, wrong_shape = {}, [], []
    for name, value in state.items():
        module, leaf = name.rsplit(".", 1)
        module = to_module(module)
        leaf = BN_LEAVES.get(leaf, leaf) if module in bn_modules else leaf
        target = f"{module}.{leaf}"
        if target not in ours:
            unmatched.append(name)
            continue
        if tuple(value.shape) != ours[target]:
            wrong_shape.append(f"{name} {tuple(value.shape)} for our {ours[target]}")
        converted[target] = value
    missing = sorted(set(ours) - set(converted))
    if unmatched or missing:
        raise UserError(f"{len(unmatched)} source tensors match nothing ({first_few(unmatched)}) "
                        f"and {len(missing)} of our parameters get nothing "
                        f"({first_few(missing)})", path,
                        f"give a {source} checkpoint of {network}; nothing was written")
    if wrong_shape:
        raise UserError(f"{len(wrong_shape)} tensors have other shapes than ours (first: "
                        f"{wrong_shape[0]})", path,
                        f"give a {source} checkpoint of {network} (another width?); nothing was "
                        "written")
    fixup = spec.get("fixups", {}).get(family)
    if fixup:
        fixup(converted, net)
    meta.update({"dataset": "imagenet", "image_size": 224, "input_norm": spec["input_norm"]})
    return converted, meta


def write_converted(params: dict, meta: dict, output: str) -> None:
    """Write the converted parameters and metadata as a MindSpore checkpoint, atomically."""
    writable_folder(os.path.dirname(os.path.abspath(output)), "--output")
    save_atomically([{"name": n, "data": ms.Tensor(v)} for n, v in params.items()], output, meta)


def convert_command(argv) -> str:
    """convert_weights.py: parse ``argv``, convert, write; returns the output path."""
    parser = ArgumentParser(prog="convert_weights.py", allow_abbrev=False, description=(
        "Convert a PyTorch checkpoint to a MindSpore checkpoint of one of our networks. The "
        "output records the network, its layout and the input normalisation its weights expect, "
        "so eval.py, infer.py, export.py and --pretrained use it as it is."))
    parser.add_argument("--source", required=True, choices=sorted(SOURCES),
                        help="who published the checkpoint")
    parser.add_argument("--network", required=True, choices=list_networks(), metavar="NETWORK",
                        help="our name of the network it holds, e.g. shufflenet_v2_x1_0")
    parser.add_argument("checkpoint", help="the PyTorch .pth / .pth.tar file")
    parser.add_argument("output", help="the MindSpore .ckpt to write")
    args = parser.parse_args(argv)
    if not args.output.endswith(".ckpt"):
        raise UserError("the output name does not end in .ckpt", args.output,
                        "give a name like shufflenet_v2_x1_0_tv.ckpt: MindSpore reads only "
                        ".ckpt files (nothing was written)")
    params, meta = convert(read_torch_state(args.checkpoint), args.source, args.network,
                           args.checkpoint)
    write_converted(params, meta, args.output)
    print(f"converted: {args.checkpoint} ({args.source}) -> {args.output}: {args.network}, "
          f"{meta['num_classes']} classes, {len(params)} tensors, input_norm "
          f"{meta['input_norm']}", flush=True)
    return args.output
