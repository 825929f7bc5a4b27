"""What the launch scripts ask before they start workers.

- ``python -m src.launch RANK_TABLE_FILE`` (scripts/run_distribute_train.sh) prints one line per
  device of an Ascend rank table, ``RANK_ID DEVICE_ID``, sorted by rank, or one ``error:`` line
  and exit code 2 when the table is malformed or disagrees with ``RANK_SIZE`` (when that is set).
- ``python -m src.launch check TRAIN_ARGS...`` makes the checks train.py makes before it starts
  anything (the config and its values, the data folder's layout), so a bad argument stops a
  multi-process job with one line before any worker starts.
"""
import json
import os
import sys

from src.errors import UserError, run_main


def read_rank_table(path: str) -> list:
    """[(rank_id, device_id)] of the devices of this server's rank table, sorted by rank."""
    if not os.path.isfile(path):
        raise UserError("rank table not found", path, "give the rank table JSON of this job")
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
        devices = [d for server in table["server_list"] for d in server["device"]]
        plan = sorted((int(d["rank_id"]), int(d["device_id"])) for d in devices)
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"rank table is malformed ({type(err).__name__}: {err})", path,
                        'give a JSON with "server_list": [{"device": [{"device_id", '
                        '"device_ip", "rank_id"}, ...]}]') from None
    if not plan:
        raise UserError("rank table lists no device", path, "list the devices of the job")
    ranks = [r for r, _ in plan]
    if ranks != list(range(len(plan))):
        raise UserError(f"rank ids {ranks} are not 0..{len(plan) - 1}", path,
                        "number the ranks from 0 without gaps or repeats")
    if len({d for _, d in plan}) != len(plan):
        raise UserError("a device id appears twice", path, "give each rank its own device")
    expected = os.environ.get("RANK_SIZE")
    if expected and int(expected) != len(plan):
        raise UserError(f"rank table lists {len(plan)} devices but RANK_SIZE is {expected}",
                        path, "make RANK_SIZE and the table agree, or unset RANK_SIZE")
    return plan


def check_train_args(argv) -> None:
    """train.py's checks that need no device: the config, then the data folder's layout."""
    from src.dataset import check_layout
    from src.model_utils.config import get_config
    config = get_config(argv)
    check_layout(config.dataset, config.dataset_path)


def main(argv):
    if argv[:1] == ["check"]:
        check_train_args(argv[1:])
        return
    if len(argv) != 1:
        raise UserError("usage: python -m src.launch RANK_TABLE_FILE", "command line",
                        "give the rank table path")
    for rank, device in read_rank_table(argv[0]):
        print(rank, device)


if __name__ == "__main__":
    sys.exit(run_main(main))
