"""What the launch scripts ask before they start workers.

- ``python -m src.tools.launch ranks RANK_TABLE_FILE`` (scripts/run_distribute_train.sh) prints one
  line per device of this server of an Ascend rank table, ``RANK_ID DEVICE_ID RANK_SIZE
  SERVER_INDEX``, sorted by rank, or one ``error:`` line and exit code 2 when the table is
  malformed, its servers disagree, this host is none of them, or it disagrees with ``RANK_SIZE``
  (when set). The server: ``SERVER_ID`` (an index from 0, or a server_id), else the one whose
  server_id is one of this host's addresses (as the model_zoo's multi-server scripts match them).
- ``python -m src.tools.launch check TRAIN_ARGS...`` makes the checks train.py makes before it
  starts anything (the config and its values, the data folder's layout), so a bad argument stops a
  multi-process job with one line before any worker starts.
- ``python -m src.tools.launch msrun-for MASTER_ADDR`` (scripts/run_distribute_train_gpu.sh, on
  nodes other than 0) prints ``msrun`` where MASTER_ADDR is another host, and ``one-scheduler``
  where it is this one (several nodes on one machine): there msrun would start a second scheduler,
  so the script keeps it off through msrun's private ``_is_local_ip``; if a MindSpore release
  has renamed that, one error line.
"""
import json
import os
import subprocess
import sys

from src.cli import ArgumentParser, run_main
from src.errors import UserError


def host_addresses() -> set:
    """This host's names and IP addresses (a rank table names a server by its address)."""
    import socket
    found = {socket.gethostname()}
    try:
        found |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    try:
        found |= set(subprocess.run(["hostname", "-I"], capture_output=True, text=True,
                                    timeout=5).stdout.split())
    except (OSError, subprocess.SubprocessError):
        pass
    return found


def _load_table(path: str) -> list:
    """[(server_id, [(rank_id, device_id)])] of a rank table, as the file lists them."""
    if not os.path.isfile(path):
        raise UserError("rank table not found", path, "give the rank table JSON of this job")
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
        servers = [(str(server.get("server_id", i)),
                    [(int(d["rank_id"]), int(d["device_id"])) for d in server["device"]])
                   for i, server in enumerate(table["server_list"])]
        count = table.get("server_count")
        count = None if count is None else int(count)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"rank table is malformed ({type(err).__name__}: {err})", path,
                        'give a JSON with "server_list": [{"server_id", "device": [{"device_id", '
                        '"device_ip", "rank_id"}, ...]}, ...]') from None
    if count is not None and count != len(servers):
        raise UserError(f"server_count is {count} but server_list holds {len(servers)} servers",
                        path, "make server_count the number of servers listed")
    return servers


def _check_table(servers: list, path: str) -> None:
    """The whole table agrees with itself: ranks 0..N-1 once each across every server, each
    server's devices its own, every server the same number of devices."""
    plan = sorted(pair for _, devices in servers for pair in devices)
    if not plan:
        raise UserError("rank table lists no device", path, "list the devices of the job")
    ranks = [r for r, _ in plan]
    if ranks != list(range(len(plan))):
        twice = sorted({r for r in ranks if ranks.count(r) > 1})
        what = f"rank ids {twice} appear twice" if twice else \
            f"rank ids {ranks} are not 0..{len(plan) - 1}"
        raise UserError(what, path, "number the ranks of all servers from 0 without gaps or "
                        "repeats")
    ids = [server_id for server_id, _ in servers]
    if len(set(ids)) != len(ids):
        raise UserError(f"server_id {sorted({i for i in ids if ids.count(i) > 1})[0]} is listed "
                        "twice", path, "give each server its own entry")
    for server_id, devices in servers:
        if len({d for _, d in devices}) != len(devices):
            raise UserError(f"a device id appears twice on server {server_id}", path,
                            "give each rank its own device")
    counts = {len(devices) for _, devices in servers}
    if len(counts) > 1:
        raise UserError(f"the servers list different numbers of devices "
                        f"({', '.join(f'{i}: {len(d)}' for i, d in servers)})", path,
                        "give every server the same number of devices")


def this_server(servers: list, path: str, chosen: str = None) -> int:
    """The index of this host's server: ``chosen`` (SERVER_ID: an index from 0 or a
    server_id), else the one whose server_id is one of this host's addresses, else the only
    one."""
    ids = [server_id for server_id, _ in servers]
    if chosen:
        if chosen in ids:
            return ids.index(chosen)
        if chosen.isdigit() and int(chosen) < len(servers):
            return int(chosen)
        raise UserError(f"SERVER_ID {chosen} is none of the table's servers (index 0.."
                        f"{len(servers) - 1} or a server_id: {', '.join(ids)})", path,
                        "set SERVER_ID to this server's index or server_id")
    if len(servers) == 1:
        return 0
    mine = [i for i, server_id in enumerate(ids) if server_id in host_addresses()]
    if len(mine) != 1:
        raise UserError(f"this host is none of the table's {len(servers)} servers "
                        f"({', '.join(ids)})", path,
                        "set SERVER_ID to this server's index (0.."
                        f"{len(servers) - 1}) or server_id")
    return mine[0]


def read_rank_table(path: str, server: str = None) -> tuple:
    """(plan, rank size, server index) of an Ascend rank table: plan is [(rank_id, device_id)]
    of this server's devices (``this_server``), sorted by rank; rank size is the whole table's
    device count, which RANK_SIZE must equal when it is set."""
    servers = _load_table(path)
    _check_table(servers, path)
    total = sum(len(devices) for _, devices in servers)
    expected = os.environ.get("RANK_SIZE")
    if expected and int(expected) != total:
        raise UserError(f"rank table lists {total} devices but RANK_SIZE is {expected}",
                        path, "make RANK_SIZE and the table agree, or unset RANK_SIZE")
    index = this_server(servers, path, server)
    return sorted(servers[index][1]), total, index


def is_this_host(address: str) -> bool:
    """Whether ``address`` (a name or an IP) is this host: a loopback address or one of its own."""
    import ipaddress
    import socket
    try:
        resolved = socket.gethostbyname(address)
    except OSError:
        return False
    mine = host_addresses()
    return ipaddress.ip_address(resolved).is_loopback or resolved in mine or address in mine


# msrun's own check of whether this node runs the scheduler (MindSpore 2.10).
MSRUN_LOCAL_CHECK = ("mindspore.parallel.cluster.process_entity._api", "_is_local_ip")


def msrun_for(address: str) -> str:
    """``msrun`` for a node whose master is another host; ``one-scheduler`` where this host
    is the master's too (msrun would start a scheduler on each node that has its address)."""
    if not is_this_host(address):
        return "msrun"
    import importlib
    module, name = MSRUN_LOCAL_CHECK
    try:
        found = hasattr(importlib.import_module(module), name)
    except ImportError:
        found = False
    if not found:
        raise UserError(f"this node has node 0's address {address}, and this MindSpore's msrun "
                        f"has no {module}.{name} to keep a second scheduler off it",
                        "MASTER_ADDR", "run each node on a host of its own, with MASTER_ADDR "
                        "node 0's address")
    return "one-scheduler"


def check_train_args(argv) -> None:
    """train.py's checks that need no device: the config, then the data folder's layout."""
    from src.dataset import check_layout
    from src.model_utils.config import get_config
    from src.training.trainer import check_recipe
    config = get_config(argv)
    check_recipe(config)
    check_layout(config.dataset, config.dataset_path)


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m src.tools.launch", allow_abbrev=False,
                       description=__doc__.splitlines()[0])
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ranks = commands.add_parser("ranks", help="this server's ranks of an Ascend rank table")
    ranks.add_argument("rank_table", metavar="RANK_TABLE_FILE")
    commands.add_parser("check", help="train.py's checks of TRAIN_ARGS (any config flags)")
    msrun = commands.add_parser("msrun-for", help="msrun, or one-scheduler where MASTER_ADDR "
                                "is this host")
    msrun.add_argument("master_addr", metavar="MASTER_ADDR")
    return p


def main(argv):
    p = parser()
    args, train_args = p.parse_known_args(argv)
    if args.command == "check":
        check_train_args(train_args)
        return
    if train_args:
        p.error(f"unrecognized arguments: {' '.join(train_args)}")
    if args.command == "msrun-for":
        print(msrun_for(args.master_addr))
        return
    plan, total, server = read_rank_table(args.rank_table, os.environ.get("SERVER_ID"))
    for rank, device in plan:
        print(rank, device, total, server)


if __name__ == "__main__":
    sys.exit(run_main(main))
