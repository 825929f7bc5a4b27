"""PyTorch checkpoints of megvii, torchvision and timm to MindSpore checkpoints of our networks.

What each source's checkpoints of a family look like is that family's record (its ``sources``:
the options our network needs to compute what its code computes, the pixels its weights expect,
its module names -> ours, a fix-up such as megvii ShuffleNetV1's shuffle permutation). Here is
what every source shares: leaf names map the same for all (weight/bias of a BatchNorm ->
gamma/beta, running_mean/var -> moving_mean/variance; num_batches_tracked dropped); every
source tensor must land on one of our parameters with its shape and every parameter must be
filled, or nothing is written. The pixels (megvii BGR 0-255, timm mean = std = 0.5) are
recorded as ``input_norm`` in the checkpoint, and eval/infer/--pretrained apply them.
torch is needed by this tool only (``pip install torch==2.13.0``).
"""
import json
import os
import warnings

import mindspore as ms
import numpy as np

from src.checkpoint import NetworkRecord, save_atomically
from src.cli import ArgumentParser
from src.errors import UserError, writable_folder
from src.models import checkpoint_sources, family_record, list_networks

BN_LEAVES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
             "running_var": "moving_variance"}


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
    family = family_record(network)
    layout = family.sources.get(source)
    if layout is None:
        raise UserError(f"{source} publishes no {family.name} weights", "--network",
                        f"give a network of {', '.join(checkpoint_sources()[source])}")
    head = [k for k in state if k.endswith("weight") and state[k].ndim == 2]
    if len(head) != 1:
        raise UserError("cannot find the classifier (one 2-D weight)", path,
                        f"give a {source} checkpoint of {network}")
    meta = {"network": network, "num_classes": int(state[head[0]].shape[0]), **layout.options}
    net = NetworkRecord.from_values(meta).build(conv_impl="mindspore")
    ours = {p.name: tuple(p.shape) for p in net.get_parameters()}
    bn_modules = {n.rsplit(".", 1)[0] for n in ours if n.endswith(".gamma")}
    converted, unmatched, wrong_shape = {}, [], []
    for name, value in state.items():
        module, leaf = name.rsplit(".", 1)
        module = layout.module_name(module)
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
    if layout.fixup:
        layout.fixup(converted, net)
    meta.update({"dataset": "imagenet", "image_size": 224, "input_norm": layout.input_norm})
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
    parser.add_argument("--source", required=True, choices=sorted(checkpoint_sources()),
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
