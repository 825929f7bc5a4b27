"""src/tools/launch.py on its own: the rank-table plan and its refusals, and the checks the launch
scripts make before any worker starts."""
import json
import re

import pytest

from src.errors import UserError
from src.tools import launch
from src.tools.launch import check_train_args, read_rank_table
from tests.helpers import write_image_folder


def table(path, devices, ranks=None, servers=1):
    ranks = ranks or list(range(len(devices)))
    per = len(devices) // servers
    server_list = [{"server_id": f"10.0.0.{s}", "device": [
        {"device_id": str(d), "device_ip": f"192.98.92.{100 + d}", "rank_id": str(r)}
        for d, r in list(zip(devices, ranks, strict=True))[s * per:(s + 1) * per]]}
        for s in range(servers)]
    path.write_text(json.dumps({"version": "1.0", "server_list": server_list}))
    return str(path)


def test_the_plan_is_rank_and_device_in_rank_order(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK_SIZE", raising=False)
    path = table(tmp_path / "t.json", [4, 5, 6, 7], ranks=[2, 0, 3, 1])
    assert read_rank_table(path) == ([(0, 5), (1, 7), (2, 4), (3, 6)], 4, 0)


def test_a_server_of_a_multi_server_table_runs_its_own_devices(tmp_path, monkeypatch):
    """Two servers of devices 0-7: each plans its own global ranks with the table's RANK_SIZE;
    the server is SERVER_ID's (an index or a server_id) or the one named by this host's address."""
    monkeypatch.setenv("RANK_SIZE", "16")
    path = table(tmp_path / "two.json", list(range(8)) * 2, servers=2)
    first = ([(r, r) for r in range(8)], 16, 0)
    second = ([(r, r - 8) for r in range(8, 16)], 16, 1)
    assert read_rank_table(path, "0") == first and read_rank_table(path, "1") == second
    assert read_rank_table(path, "10.0.0.1") == second
    monkeypatch.setattr(launch, "host_addresses", lambda: {"myhost", "10.0.0.1"})
    assert read_rank_table(path) == second
    monkeypatch.setattr(launch, "host_addresses", lambda: {"myhost", "10.9.9.9"})
    with pytest.raises(UserError, match=r"this host is none of the table's 2 servers "
                                        r"\(10.0.0.0, 10.0.0.1\)"):
        read_rank_table(path)


def multi_server(path, servers, count=None):
    """A table of ``servers``: [(server_id, [(rank_id, device_id)])]."""
    table_ = {"version": "1.0", "server_list": [
        {"server_id": server_id, "device": [
            {"device_id": str(d), "device_ip": f"192.98.92.{100 + d}", "rank_id": str(r)}
            for r, d in devices]} for server_id, devices in servers]}
    if count is not None:
        table_["server_count"] = str(count)
    path.write_text(json.dumps(table_))
    return str(path)


def eight(first_rank, server_id="10.0.0.1"):
    return server_id, [(first_rank + d, d) for d in range(8)]


MULTI_SERVER = {  # id: (servers, server_count, SERVER_ID, what the line says)
    "rank ids repeated across servers": ([eight(0, "a"), eight(0, "b")], None, "0",
                                         "rank ids [0, 1, 2, 3, 4, 5, 6, 7] appear twice"),
    "device counts differ": ([eight(0, "a"), ("b", [(8, 0), (9, 1)])], None, "0",
                             "the servers list different numbers of devices (a: 8, b: 2)"),
    "server_count disagrees": ([eight(0, "a"), eight(8, "b")], 3, "0",
                               "server_count is 3 but server_list holds 2 servers"),
    "server listed twice": ([eight(0, "a"), eight(8, "a")], None, "0",
                            "server_id a is listed twice"),
    "device twice on a server": ([eight(0, "a"), ("b", [(8 + i, 0) for i in range(8)])], None,
                                 "0", "a device id appears twice on server b"),
    "SERVER_ID not in the table": ([eight(0, "a"), eight(8, "b")], None, "2",
                                   "SERVER_ID 2 is none of the table's servers"),
    "rank gap across servers": ([eight(0, "a"), eight(9, "b")], None, "0", "are not 0..15"),
}


@pytest.mark.parametrize("case", MULTI_SERVER)
def test_bad_multi_server_tables_are_refused(tmp_path, monkeypatch, case):
    monkeypatch.delenv("RANK_SIZE", raising=False)
    servers, count, server, message = MULTI_SERVER[case]
    path = multi_server(tmp_path / "t.json", servers, count)
    with pytest.raises(UserError, match=re.escape(message)):
        read_rank_table(path, server)


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
    with pytest.raises(UserError, match=re.escape(message)):
        read_rank_table(str(path))


def test_the_scripts_check_config_and_data_layout_first(tmp_path):
    images = write_image_folder(str(tmp_path / "imgs"), per_class=1, classes=2)
    with pytest.raises(UserError, match="give --dataset imagenet"):
        check_train_args(["--dataset_path", images])
    with pytest.raises(UserError, match="epoch_size = 0 is out of range"):
        check_train_args(["--dataset", "imagenet", "--dataset_path", images, "--epoch_size", "0"])
    check_train_args(["--dataset", "imagenet", "--dataset_path", images])  # passes


def test_msrun_is_patched_only_on_a_node_that_shares_the_masters_address(cli, monkeypatch):
    """Another host's address: plain msrun. This host's (nodes simulated on one machine): the
    one-scheduler launch through msrun's private address check, and one line if a MindSpore
    release no longer has it."""
    monkeypatch.setattr(launch, "host_addresses", lambda: {"myhost", "10.1.2.3"})
    assert launch.msrun_for("10.9.9.9") == "msrun"
    assert launch.msrun_for("127.0.0.1") == "one-scheduler"
    assert launch.msrun_for("10.1.2.3") == "one-scheduler"
    assert launch.msrun_for("no-such-host.invalid") == "msrun"
    monkeypatch.setattr(launch, "MSRUN_LOCAL_CHECK", (launch.MSRUN_LOCAL_CHECK[0], "_renamed"))
    result = cli("src.tools.launch", "msrun-for", "127.0.0.1")
    assert result.returncode == 2 and result.error_lines() == [
        "error: this node has node 0's address 127.0.0.1, and this MindSpore's msrun has no "
        "mindspore.parallel.cluster.process_entity._api._renamed to keep a second scheduler off "
        "it (MASTER_ADDR): run each node on a host of its own, with MASTER_ADDR node 0's address"]
