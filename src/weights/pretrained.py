"""Pretrained weights by name: ``--pretrained TAG`` (mindcv, torchvision, timm, megvii) downloads
the file a source publishes of a network, verifies it, converts it and caches it.

- The cache: ``$ZOO_HOME/weights`` (default ``~/.cache/mobile_cnn_zoo/weights``). It holds each
  source's file under its own name (a file placed there by hand is used when its hash matches),
  and ``{network}-{tag}.ckpt``: the weights as our checkpoint, with the record of the network
  and of the pixels they expect. A second call reads that file and needs no network.
- A download goes to ``<file>.partial``, continues a partial one (HTTP Range), and is renamed
  to the file's name only once it is whole and its SHA-256 starts with the digits its name
  carries (MindCV's, torchvision's). A file whose hash does not match is deleted.
- ``ZOO_MIRROR=https://host[/prefix]`` replaces the scheme and host of every URL, for a mirror
  behind a firewall or closer to you.
- ``python -m src.weights.pretrained`` lists every network's published weights: tag, source,
  published top-1/top-5, file size, cached or not. ``--markdown`` prints them as
  docs/PRETRAINED.md's table, ``--results`` as the README's, ``NETWORK TAG`` fetches one into
  the cache.
"""
import hashlib
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from types import SimpleNamespace

import mindspore as ms

from src.cli import ArgumentParser, run_main
from src.errors import UserError
from src.models import list_networks, published_weights
from src.progress import Progress

CHUNK = 1 << 16


def cache_dir() -> str:
    home = os.environ.get("ZOO_HOME") or os.path.join(os.path.expanduser("~"), ".cache",
                                                      "mobile_cnn_zoo")
    return os.path.join(home, "weights")


def is_tag(value: str) -> bool:
    """A --pretrained value names published weights (a tag), not a checkpoint file."""
    return bool(value) and os.sep not in value and not value.endswith((".ckpt", ".pth", ".tar",
                                                                       ".safetensors"))


def find(network: str, tag: str):
    """The record of ``network``'s weights published as ``tag``; UserError naming the tags
    there are."""
    records = published_weights(network)
    for record in records:
        if record.tag == tag:
            return record
    known = ", ".join(r.tag for r in records) or "none"
    raise UserError(f"no weights published as {tag!r} for {network}", "--pretrained",
                    f"give one of: {known} (python -m src.weights.pretrained lists them), or a "
                    "checkpoint file")


def mirrored(url: str) -> str:
    """``url`` with the scheme and host of ZOO_MIRROR (and its path as a prefix), if set."""
    mirror = os.environ.get("ZOO_MIRROR", "")
    if not mirror:
        return url
    parts, base = urllib.parse.urlsplit(url), urllib.parse.urlsplit(mirror)
    return urllib.parse.urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + parts.path,
                                    parts.query, ""))


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, path: str, sha256_prefix: str) -> None:
    """``url`` into ``path``, whole and (when the name carries digits) with a matching hash, or
    a UserError and no ``path``. A partial download is continued where it stopped."""
    partial = path + ".partial"
    start = os.path.getsize(partial) if os.path.exists(partial) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    where = os.path.dirname(path)
    todo = f"check the connection or set ZOO_MIRROR, or place {os.path.basename(path)} in " \
           f"{where} by hand"
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if start and response.status != 206:  # the server sends all of it again
                start = 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length else 0
            progress = Progress(f"download: {os.path.basename(path)}", total, start, unit="MB",
                                scale=2**20, digits=1)
            done = start
            with open(partial, "ab" if start else "wb") as f:
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    done += len(block)
                    progress.update(done)
            progress.update(done, final=True)
    except urllib.error.HTTPError as err:
        raise UserError(f"cannot download {url} (HTTP {err.code} {err.reason})", where,
                        todo) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        kept = "; the part received is kept and continued next time" \
            if os.path.exists(partial) and os.path.getsize(partial) else ""
        raise UserError(f"cannot download {url} ({getattr(err, 'reason', err)}){kept}", where,
                        todo) from None
    if total and done != total:
        raise UserError(f"download of {url} cut off at {done} of {total} bytes; the part "
                        "received is kept and continued next time", where, todo)
    if sha256_prefix and not sha256_of(partial).startswith(sha256_prefix):
        os.remove(partial)
        raise UserError(f"downloaded {os.path.basename(path)} does not have the SHA-256 its "
                        f"name gives ({sha256_prefix}...); deleted", url,
                        "try again, or check ZOO_MIRROR serves the source's file")
    os.replace(partial, path)


def source_file(record) -> str:
    """The source's own file in the cache: placed by hand (used when its hash matches) or
    downloaded."""
    folder = cache_dir()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, record.file_name)
    if os.path.exists(path):
        if not record.sha256_prefix or sha256_of(path).startswith(record.sha256_prefix):
            return path
        os.remove(path)
        print(f"pretrained: {path} does not have the SHA-256 its name gives; deleted, "
              "downloading it again", flush=True)
    download(mirrored(record.url), path, record.sha256_prefix)
    return path


def fetch(network: str, tag: str) -> str:
    """The path of ``network``'s ``tag`` weights as our checkpoint, from the cache or fetched,
    verified and converted into it."""
    record = find(network, tag)
    ready = os.path.join(cache_dir(), f"{network}-{tag}.ckpt")
    if os.path.exists(ready):
        return ready
    if not record.url:
        raise UserError(f"{tag} publishes {network}'s weights only at {record.page}", tag,
                        f"download the file by hand and convert it: python convert_weights.py "
                        f"--source {tag} --network {network} FILE {ready}")
    source = source_file(record)
    params, meta = read_source(source, record, network)
    from src.checkpoint import save_atomically
    save_atomically([{"name": n, "data": ms.Tensor(v)} for n, v in params.items()], ready, meta)
    print(f"pretrained: {network} {tag} weights cached in {ready}", flush=True)
    return ready


def read_source(path: str, record, network: str) -> tuple:
    """(parameters as numpy arrays, our checkpoint metadata with the pixels) of a source file:
    MindCV's checkpoint read as it is, the others through our converter."""
    pixels = {"dataset": "imagenet", "image_size": 224, "input_norm": record.input_norm,
              "eval_resize": record.eval_resize}
    if record.tag == "mindcv":
        from src.checkpoint import merge_split_groups, read_checkpoint
        params, meta = read_checkpoint(path)
        if meta.get("network") != network:
            raise UserError(f"the file holds {meta.get('network', 'no network of ours')}, not "
                            f"{network}", path, "delete it; the next call downloads it again")
        params = merge_split_groups(params)
        return {n: p.asnumpy() for n, p in params.items()}, {**meta, **pixels}
    from src.weights.convert import convert, read_torch_state
    params, meta = convert(read_torch_state(path), record.tag, network, path)
    return params, {**meta, **pixels}


def checkpoint_for(value: str, network: str) -> str:
    """A --pretrained value as a checkpoint path: a tag is fetched, a path is a path."""
    return fetch(network, value) if is_tag(value) else value


def checkpoint_of(config) -> str:
    """The checkpoint eval, export and infer use: --checkpoint_path, or the weights --pretrained
    names (a tag of ``config.network``'s published weights, or a file)."""
    if config.checkpoint_path and config.pretrained:
        raise UserError("both --checkpoint_path and --pretrained given", "command line",
                        "give one of them")
    if config.pretrained:
        return checkpoint_for(config.pretrained, config.network)
    return config.checkpoint_path


def create_network(name: str, num_classes: int = None, pretrained: str = "", **kwargs):
    """The network ``name``: with ``pretrained`` (a tag of published weights: mindcv,
    torchvision, timm, megvii; or a checkpoint) its weights, downloaded, verified and cached,
    in the layout they need and with their classes unless ``num_classes`` says otherwise;
    without, random weights (src.models' builder). ``kwargs``: the family's options."""
    if pretrained:
        return _with_published_weights(name, pretrained, num_classes, **kwargs)
    from src.models import create_network as build
    return build(name, num_classes, **kwargs)


def _with_published_weights(name: str, pretrained: str, num_classes=None, **kwargs):
    """``name`` with the weights ``pretrained`` names (a tag or a checkpoint), in the layout they
    were trained with. ``num_classes``: None keeps the weights' classes; 1000 from MindCV's
    1001-class MobileNets drops the unused last row, as MindCV's loader does; any other number
    gets a new classifier (fine-tuning)."""
    from src.checkpoint import NetworkRecord, load_weights, read_checkpoint, require_network
    path = checkpoint_for(pretrained, name)
    params, meta = read_checkpoint(path)
    require_network(SimpleNamespace(network=name), meta, path, "load")
    classes = int(meta.get("num_classes", num_classes or 1000))
    wanted = classes if num_classes is None else int(num_classes)
    if (classes, wanted) == (1001, 1000):
        for key in ("classifier.weight", "classifier.bias"):
            params[key] = ms.Parameter(params[key].data[:1000], name=key)
        classes = 1000
    net = NetworkRecord.from_values({**meta, "network": name, "num_classes": wanted}).build(
        **kwargs)
    load_weights(net, params, path, skip=() if wanted == classes else ("classifier",))
    if kwargs.get("features_only"):
        mine = {p.name for p in net.get_parameters()}
        left = sorted({n.split(".")[0] for n in params if n not in mine and
                       n.startswith(net.HEAD_MODULES)})
        print(f"pretrained: the features-only {name} leaves the checkpoint's {', '.join(left)} "
              "out", flush=True)
    return net


def table(markdown: bool = False) -> list:
    """The lines that list every network's published weights (``markdown``: docs/PRETRAINED.md's
    table)."""
    rows = []
    for network in list_networks():
        for w in published_weights(network):
            cached = os.path.exists(os.path.join(cache_dir(), f"{network}-{w.tag}.ckpt"))
            size = f"{w.size_mb:.1f} MB" if w.size_mb else "-"
            where = w.url or w.page
            if markdown:
                rows.append(f"| {network} | {w.tag} | {w.top1:.2f} | {w.top5:.2f} | "
                            f"{w.num_classes} | {w.input_norm} | [file]({where}) |")
            else:
                rows.append(f"{network:22s} {w.tag:12s} top-1 {w.top1:6.2f} top-5 {w.top5:6.2f}"
                            f"  {size:>8s}  {'cached' if cached else '-':6s}  {where}")
    if markdown:
        rows = ["| network | tag (source) | top-1 % | top-5 % | classes | pixels | file |",
                "| --- | --- | ---: | ---: | ---: | --- | --- |"] + rows
    return rows


def results_table() -> list:
    """The README's results: per network, each source's published top-1 / top-5 next to what
    the ports this zoo replaces report for their own runs. The sources' figures, not ours."""
    from src.models import PORTS_REPORTED
    tags = ("mindcv", "torchvision", "timm", "megvii")
    rows = ["| network | " + " | ".join(tags) + " | the port's own run |",
            "| --- |" + " ---: |" * len(tags) + " --- |"]
    for network in list_networks():
        published = {w.tag: w for w in published_weights(network)}
        if not published and network not in PORTS_REPORTED:
            continue
        cells = [f"{published[t].top1:.2f} / {published[t].top5:.2f}" if t in published
                 else "" for t in tags]
        port = PORTS_REPORTED.get(network)
        own = f"{port[1]:.2f}" + (f" / {port[2]:.2f}" if port[2] else "") + f" ({port[0]})" \
            if port else ""
        rows.append(f"| {network} | " + " | ".join(cells) + f" | {own} |")
    return rows


def main(argv):
    parser = ArgumentParser(prog="python -m src.weights.pretrained", allow_abbrev=False,
                            description="List every network's published weights, or fetch one "
                            "into the cache.")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--markdown", action="store_true", help="docs/PRETRAINED.md's table")
    form.add_argument("--results", action="store_true", help="the README's results table")
    parser.add_argument("fetch", nargs="*", metavar="NETWORK TAG",
                        help="fetch the weights TAG of NETWORK into the cache")
    args = parser.parse_args(argv)
    if args.fetch and (len(args.fetch) != 2 or args.markdown or args.results):
        parser.error("give NETWORK TAG (two words) alone, --markdown, --results, or nothing")
    if args.markdown:
        print("\n".join(table(markdown=True)))
    elif args.results:
        print("\n".join(results_table()))
    elif args.fetch:
        print(fetch(*args.fetch))
    else:
        print("\n".join(table()))
        print(f"cache: {cache_dir()}  (published figures of each source, not measured here)")


if __name__ == "__main__":
    sys.exit(run_main(main))
