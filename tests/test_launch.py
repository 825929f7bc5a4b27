"""src/launch.py on its own: the rank-table plan and its refusals, and the checks the launch
scripts make before any worker starts."""
import json

import pytest

from src.errors import UserError
from src.launch import check_train_args, read_rank_table
from tests.helpers import write_image_folder


def table(path, devices, ranks=None, servers=1):
    ranks = ranks or list(range(len(devices)))
    per = len(devices) // servers
    server_list = [{"server_id": f"10.0.0.{s}", "device": [
        {"device_id": str(d), "device_ip": f"192.98.92.{100 + d}", "rank_id": str(r)}
        for d, r in list(zip(devices, ranks))[s * per:(s + 1) * per]]} for s in range(servers)]
    path.write_text(json.dumps({"version": "1.0", "server_list": server_list}))
    return str(path)


def test_the_plan_is_rank_and_device_in_rank_order(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK_SIZE", raising=False)
    path = table(tmp_path / "t.json", [4, 5, 6, 7], ranks=[2, 0, 3, 1])
    assert read_rank_table(path) == [(0, 5), (1, 7), (2, 4), (3, 6)]
    # Two servers' devices together, and RANK_SIZE agreeing.
    monkeypatch.setenv("RANK_SIZE", "4")
    assert read_rank_table(table(tmp_path / "two.json", [0, 1, 2, 3], servers=2)) == \
        [(0, 0), (1, 1), (2, 2), (3, 3)]


@pytest.mark.parametrize("case, message", [
    ("missing", "rank table not found"),
    ("not json", "rank table is malformed (JSONDecodeError"),
    ("no server_list", "rank table is malformed (KeyError"),
    ("no devices", "rank table lists no device"),
    ("rank gap", "rank ids [0, 2] are not 0..1"),
    ("device twice", "a device id appears twice"),
    ("rank size", "rank table lists 2 devices but RANK_SIZE is 8"),
])
def test_bad_tables_are_refused(tmp_path, monkeypatch, case, message):
    monkeypatch.delenv("RANK_SIZE", raising=False)
    path = tmp_path / "t.json"
    if case == "not json":
        path.write_text("{server_list: oops")
    elif case == "no server_list":
        path.write_text("{}")
    elif case == "no devices":
        table(path, [])
    elif case == "rank gap":
        table(path, [0, 1], ranks=[0, 2])
    elif case == "device twice":
        table(path, [3, 3])
    elif case == "rank size":
        table(path, [0, 1])
        monkeypatch.setenv("RANK_SIZE", "8")
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        read_rank_table(str(path))


def test_the_scripts_check_config_and_data_layout_first(tmp_path):
    images = write_image_folder(str(tmp_path / "imgs"), per_class=1, classes=2)
    with pytest.raises(UserError, match="give --dataset imagenet"):
        check_train_args(["--dataset_path", images])
    with pytest.raises(UserError, match="epoch_size = 0 is out of range"):
        check_train_args(["--dataset", "imagenet", "--dataset_path", images, "--epoch_size", "0"])
    check_train_args(["--dataset", "imagenet", "--dataset_path", images])  # passes
