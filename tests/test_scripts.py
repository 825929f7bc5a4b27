"""The launch scripts, run for real on CPU: msrun data parallel, rank-table planning, failures."""
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from src.training.run_state import RunState
from tests.helpers import ROOT, write_cifar_folder, write_image_folder

pytestmark = pytest.mark.slow
SMALL = ["--network", "mobilenet_v1_025", "--num_classes", "4", "--epoch_size", "2",
         "--batch_size", "8", "--log_interval", "1", "--output_path", "output"]


def rank_table(path, devices):
    table = {"version": "1.0", "server_count": "1", "status": "completed", "server_list": [
        {"server_id": "10.0.0.1", "host_nic_ip": "reserve", "device": [
            {"device_id": str(d), "device_ip": f"192.98.92.{100 + d}", "rank_id": str(r)}
            for r, d in enumerate(devices)]}]}
    path.write_text(json.dumps(table))
    return str(path)


def run_script(name, *args, cwd, env=None, timeout=600):
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", name), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def run_processes(marker):
    """The processes whose command line holds ``marker`` (the test's own folder)."""
    return subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()


def assert_none_left(marker, seconds, what):
    """No process whose command line holds ``marker`` after at most ``seconds`` (any left are
    killed, so that a failure leaves none behind either)."""
    deadline = time.time() + seconds
    while run_processes(marker) and time.time() < deadline:
        time.sleep(0.5)
    left = run_processes(marker)
    subprocess.run(["pkill", "-9", "-f", marker])
    assert not left, f"{len(left)} processes of {what} are still there"


@pytest.mark.xdist_group("msrun")  # one msrun job at a time: ports, cores
def test_cpu_data_parallel_killed_launcher_and_distributed_resume(tmp_path):
    """msrun with 2 CPU workers through the real script. Killed (SIGKILL to the launcher's whole
    process group) after epoch 1: no process of the run is left (the workers die with msrun,
    finishing their step and saving first). Resumed with --resume auto through the script: both
    ranks start from rank 0's checkpoint at the same epoch (before: rank 1 searched its own
    empty folder and started at epoch 1, then waited forever) and end with the same weights."""
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=64, test_count=8)
    args = SMALL[:]
    # 200 epochs: on a fast machine 3 epochs (12 steps, 1-2 s) ended before the kill landed.
    args[args.index("--epoch_size") + 1] = "200"
    env = {**os.environ, "EXTRA_ARGS": " ".join(args)}
    script = ["bash", os.path.join(ROOT, "scripts", "run_distribute_train_cpu.sh"), "2", data]
    launcher = subprocess.Popen(script, cwd=tmp_path, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logs, folder = tmp_path / "train_parallel", tmp_path / "train_parallel" / "output" / "ckpt_0"
    deadline = time.time() + 300
    while time.time() < deadline and not (folder / "run_state.json").exists() or \
            not RunState.load(str(folder)).epochs:
        assert launcher.poll() is None, "the run ended before its first epoch"
        time.sleep(0.5)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=30)
    assert_none_left(str(tmp_path), 60, "the killed run")

    # Resumed to 2 epochs past the newest checkpoint's.
    last = RunState.load(str(folder)).checkpoints()[-1][0] // 4 + 2
    args[args.index("--epoch_size") + 1] = str(last)
    proc = run_script("run_distribute_train_cpu.sh", 2, data, cwd=tmp_path,
                      env={"EXTRA_ARGS": " ".join(args + ["--resume", "auto"])})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    texts = [(logs / f"worker_{r}.log").read_text() for r in range(2)]
    resumed = [re.search(r"^resume auto: (.*)$", t, re.M).group(1) for t in texts]
    assert resumed[0] == resumed[1] and resumed[0].startswith(str(folder))
    starts = [re.search(rf"4 steps/epoch, epochs (\d+)\.\.{last}, rank (\d)/2", t).groups()
              for t in texts]
    assert starts[0][0] == starts[1][0] and int(starts[0][0]) >= 2
    assert [r for _, r in starts] == ["0", "1"]
    # Only rank 0 writes checkpoints; both ranks end with the same weights.
    assert sorted(os.listdir(logs / "output")) == ["ckpt_0"]
    assert f"mobilenet_v1_025-{last}_4.ckpt" in os.listdir(folder)
    sums = [re.search(r"weights checksum (\S+)", t).group(1) for t in texts]
    assert sums[0] == sums[1]
    assert proc.stdout.splitlines()[-1].startswith("train: finished mobilenet_v1_025 epochs")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_node(folder, node, port, data, args, nodes=2):
    """run_distribute_train_cpu.sh as node ``node`` of ``nodes`` (one worker each) on 127.0.0.1,
    in ``folder`` (a node's own disk: nothing shared with the other)."""
    os.makedirs(folder, exist_ok=True)
    env = {**os.environ, "EXTRA_ARGS": " ".join(args), "NODE_NUM": str(nodes),
           "NODE_RANK": str(node), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return subprocess.Popen(["bash", os.path.join(ROOT, "scripts", "run_distribute_train_cpu.sh"),
                             "1", data], cwd=folder, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def checksum(log):
    return re.search(r"weights checksum (\S+)", log.read_text()).group(1)


@pytest.mark.xdist_group("msrun")
def test_two_nodes_on_one_machine(tmp_path):
    """Two msrun nodes simulated on 127.0.0.1 (NODE_NUM=2, NODE_RANK 0 and 1, one worker each,
    each in a folder of its own): they end with the weights of one node of two workers (same
    seed and data). A SIGTERM to node 0's whole process group (a terminal's Ctrl-C, a
    scheduler's kill of the job; it once ended the script at once and lost rank 0's save in 1
    run of 5) stops both nodes as a stop: rank 0 saves, each node says so in its stop line and
    exits 143 (node 1 once said "the job failed"). --resume auto on both continues at that
    step, the node without checkpoints (no shared storage) taking rank 0's; killing one node's
    launcher then stops the other with one line and leaves no process."""
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=64, test_count=8)
    args = SMALL + ["--seed", "3"]
    os.makedirs(tmp_path / "one")
    proc = run_script("run_distribute_train_cpu.sh", 2, data, cwd=tmp_path / "one",
                      env={"EXTRA_ARGS": " ".join(args)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one = [checksum(tmp_path / "one" / "train_parallel" / f"worker_{r}.log") for r in range(2)]

    nodes = [tmp_path / "node0", tmp_path / "node1"]
    logs = [nodes[r] / "train_parallel" / f"worker_{r}.log" for r in range(2)]
    port = free_port()
    runs = [launch_node(nodes[r], r, port, data, args) for r in range(2)]
    outs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outs
    assert all("epochs 1..2, rank " in logs[r].read_text() for r in range(2))
    assert checksum(logs[0]) == checksum(logs[1]) == one[0] == one[1]
    assert "train: finished mobilenet_v1_025 epochs 1..2" in outs[0][0]
    assert not (nodes[1] / "train_parallel" / "output").exists()  # only rank 0 writes

    long = [a if a != "2" else "200" for a in args] + ["--resume", "auto"]  # --epoch_size 200
    port = free_port()
    runs = [launch_node(nodes[r], r, port, data, long) for r in range(2)]
    wait_for_line(logs[1], "epoch: 4 ", runs=runs)
    os.killpg(runs[0].pid, signal.SIGTERM)
    outs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [143, 143], outs
    lines = [[line for line in err.splitlines() if line.strip()] for _, err in outs]
    assert lines[0][0].startswith("stopped: SIGTERM after epoch "), outs[0]
    saved = re.search(r"saved (\S+\.ckpt)", lines[0][0]).group(1)
    assert os.path.exists(saved)
    step = re.search(r"\(global step (\d+)\)", lines[0][0]).group(1)
    assert lines[1][0].startswith("stopped: SIGTERM after epoch ") and \
        f"(global step {step}) (rank 1; rank 0 saves the checkpoint)" in lines[1][0], outs[1]
    assert_none_left(str(tmp_path), 30, "the stopped nodes")

    port = free_port()
    runs = [launch_node(nodes[r], r, port, data, long) for r in range(2)]
    wait_for_line(logs[1], f"took rank 0's weights and train state at global step {step}",
                  runs=runs)
    assert f"resume auto: {saved}" in logs[0].read_text()
    os.killpg(runs[1].pid, signal.SIGKILL)
    killed = time.time()
    out, err = runs[0].communicate(timeout=120)
    # Node 1's worker dies with its launcher by a SIGTERM (PR_SET_PDEATHSIG): the ranks agree on
    # a stop, rank 0 saves, and node 0 reports that stop and where the run continues from.
    assert runs[0].returncode == 143 and time.time() - killed < 60, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("stopped: SIGTERM after epoch "), (out, err)
    assert os.path.exists(re.search(r"saved (\S+\.ckpt)", lines[0]).group(1))
    assert_none_left(str(tmp_path), 30, "the two nodes")


def test_rank_table_plan_in_dry_run(tmp_path):
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=8, test_count=8)
    table = rank_table(tmp_path / "rank_table_8p.json", [0, 1, 2, 3, 4, 5, 6, 7])
    proc = run_script("run_distribute_train.sh", table, data, cwd=tmp_path, env={"DRY_RUN": "1"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 8
    for rank, line in enumerate(lines):
        assert f"cd {tmp_path}/train_parallel{rank} &&" in line
        assert f"RANK_TABLE_FILE={table} RANK_SIZE=8 RANK_ID={rank} DEVICE_ID={rank} " in line
        assert "--device_target Ascend" in line and "--is_distributed True" in line
        assert line.endswith(f"> {tmp_path}/train_parallel{rank}/log.txt")
    assert not list(tmp_path.glob("train_parallel*"))  # a dry run starts nothing
    # Four devices, not a hard-coded 8.
    table4 = rank_table(tmp_path / "rank_table_4p.json", [4, 5, 6, 7])
    proc = run_script("run_distribute_train.sh", table4, data, cwd=tmp_path, env={"DRY_RUN": "1"})
    assert proc.returncode == 0 and len(proc.stdout.strip().splitlines()) == 4
    assert "RANK_SIZE=4 RANK_ID=0 DEVICE_ID=4" in proc.stdout


def test_two_server_rank_table_plans_each_servers_ranks(tmp_path):
    """Servers 0 and 1 of devices 0-7 each: SERVER_ID 0 plans ranks 0-7, SERVER_ID 1 ranks
    8-15, both on devices 0-7 with RANK_SIZE 16; without SERVER_ID, this host (in neither)
    is one line."""
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=8, test_count=8)
    table = tmp_path / "rank_table_16p.json"
    table.write_text(json.dumps({"version": "1.0", "server_count": "2", "server_list": [
        {"server_id": f"10.1.1.{s}", "device": [
            {"device_id": str(d), "device_ip": f"192.98.{s}.{100 + d}", "rank_id": str(8 * s + d)}
            for d in range(8)]} for s in range(2)]}))
    for server in (0, 1):
        proc = run_script("run_distribute_train.sh", table, data, cwd=tmp_path,
                          env={"DRY_RUN": "1", "SERVER_ID": str(server)})
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 8
        for device, line in enumerate(lines):
            rank = 8 * server + device
            assert line.startswith(f"server {server} rank {rank}: cd {tmp_path}/train_parallel"
                                   f"{rank} && ")
            assert f"RANK_SIZE=16 RANK_ID={rank} DEVICE_ID={device} " in line
    proc = run_script("run_distribute_train.sh", table, data, cwd=tmp_path, env={"DRY_RUN": "1"})
    assert proc.returncode == 2 and not proc.stdout
    assert proc.stderr.startswith("error: this host is none of the table's 2 servers") and \
        len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("case, expected", [
    ("missing", "rank table not found"),
    ("not_json", "rank table is malformed"),
    ("no_devices", "rank table lists no device"),
    ("rank_gap", "are not 0..1"),
    ("count", "lists 8 devices but RANK_SIZE is 4"),
])
def test_rank_table_validation(tmp_path, case, expected):
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=8, test_count=8)
    table = tmp_path / "table.json"
    env = {"DRY_RUN": "1"}
    if case == "not_json":
        table.write_text("{server_list: oops")
    elif case == "no_devices":
        rank_table(table, [])
    elif case == "rank_gap":
        rank_table(table, [0, 1])
        table.write_text(table.read_text().replace('"rank_id": "1"', '"rank_id": "2"'))
    elif case == "count":
        rank_table(table, list(range(8)))
        env["RANK_SIZE"] = "4"
    proc = run_script("run_distribute_train.sh", table, data, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr and not proc.stdout


def test_script_arguments_are_checked(tmp_path):
    proc = run_script("run_distribute_train_cpu.sh", "two", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "not a positive integer" in proc.stderr
    proc = run_script("run_standalone_train.sh", "CPU", tmp_path / "nope", cwd=tmp_path)
    assert proc.returncode == 2 and "data path not found" in proc.stderr
    proc = run_script("run_eval.sh", "CPU", str(tmp_path), tmp_path / "x.ckpt", cwd=tmp_path)
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr
    proc = run_script("run_eval.sh", "CPU", cwd=tmp_path)
    assert proc.returncode == 2 and "usage" in proc.stderr
    proc = run_script("run_export.sh", tmp_path / "x.ckpt", "MINDIR", cwd=tmp_path)
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr
    proc = run_script("run_infer.sh", tmp_path / "x.onnx", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "model not found" in proc.stderr


NODE_FAULTS = {  # id: (environment, what the one line says)
    "no MASTER_ADDR on node 1": ({"NODE_NUM": "2", "NODE_RANK": "1", "MASTER_PORT": "8118"},
                                 "no MASTER_ADDR for a job of 2 nodes (MASTER_ADDR)"),
    "no MASTER_ADDR on node 0": ({"NODE_NUM": "2", "NODE_RANK": "0", "MASTER_PORT": "8118"},
                                 "no MASTER_ADDR for a job of 2 nodes"),
    "no MASTER_PORT": ({"NODE_NUM": "2", "NODE_RANK": "1", "MASTER_ADDR": "127.0.0.1"},
                       "no MASTER_PORT for a job of 2 nodes"),
    "MASTER_PORT 70000": ({"MASTER_PORT": "70000"},
                          "MASTER_PORT '70000' is not a port number from 1024 to 65535"),
    "MASTER_PORT abc": ({"NODE_NUM": "2", "NODE_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                         "MASTER_PORT": "abc"}, "MASTER_PORT 'abc' is not a port number"),
    "NODE_RANK 2 of 2": ({"NODE_NUM": "2", "NODE_RANK": "2"}, "node rank 2 is not below"),
    "CLUSTER_TIME_OUT -1": ({"CLUSTER_TIME_OUT": "-1"}, "CLUSTER_TIME_OUT '-1' is not a "
                            "positive number of seconds"),
}


@pytest.mark.parametrize("case", list(NODE_FAULTS))
def test_node_launch_faults_are_one_line_before_anything_starts(tmp_path, case):
    """Before: no MASTER_ADDR on node 1 waited silently on 127.0.0.1, MASTER_PORT 70000 failed
    6 s later without naming the port, MASTER_PORT abc pointed to worker logs that did not
    exist."""
    env, expected = NODE_FAULTS[case]
    proc = run_script("run_distribute_train_cpu.sh", 1, tmp_path, cwd=tmp_path, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0] and not proc.stdout
    assert not (tmp_path / "train_parallel").exists()


@pytest.mark.xdist_group("msrun")
def test_a_node_whose_master_never_answers_fails_in_one_line(tmp_path):
    """Node 1 of 2 started alone (node 0 never comes): after CLUSTER_TIME_OUT seconds, one line
    naming the scheduler's address and port it could not reach, exit 2, no process left."""
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=16, test_count=8)
    port = free_port()
    started = time.time()
    proc = run_script("run_distribute_train_cpu.sh", 1, data, cwd=tmp_path, timeout=120,
                      env={"EXTRA_ARGS": " ".join(SMALL), "NODE_NUM": "2", "NODE_RANK": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                           "CLUSTER_TIME_OUT": "5"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
    assert lines[0].startswith("error: could not join the communication group of the "
                               f"scheduler at 127.0.0.1:{port} (MASTER_ADDR:MASTER_PORT)")
    assert time.time() - started < 90
    assert_none_left(str(tmp_path), 10, "the lone node")


def test_msrun_failing_before_any_worker_gives_its_own_reason(tmp_path):
    """msrun's own failure (here: node 0's address does not resolve) is its reason in one line,
    not "see worker_*.log" where no worker log exists."""
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=16, test_count=8)
    proc = run_script("run_distribute_train_cpu.sh", 1, data, cwd=tmp_path,
                      env={"EXTRA_ARGS": " ".join(SMALL), "NODE_NUM": "2", "NODE_RANK": "0",
                           "MASTER_ADDR": "no-such-host.invalid", "MASTER_PORT": "18555"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
    assert lines[0].startswith("error: msrun failed before any worker of this node started")
    assert "DNS resolution has failed" in lines[0]
    assert not list((tmp_path / "train_parallel").glob("worker_*.log"))


def test_an_image_folder_to_the_cifar_default_is_refused_before_any_worker(tmp_path):
    """Every script's default config is CIFAR-10's; an ImageNet-style folder is refused in one line
    naming the right dataset value, before msrun starts a worker."""
    images = write_image_folder(str(tmp_path / "imgs"), per_class=1, classes=2)
    started = time.time()
    proc = run_script("run_distribute_train_cpu.sh", 2, images, cwd=tmp_path,
                      env={"EXTRA_ARGS": "--epoch_size 1"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
    assert lines[0].startswith("error: ") and "give --dataset imagenet" in lines[0]
    assert not (tmp_path / "train_parallel").exists()
    assert time.time() - started < 60


def long_run(script, tmp_path, *args, extra=()):
    """A script training 200 epochs in the background, in a process group of its own (as a
    terminal's job): (the job, its data folder). ``extra``: more train.py flags."""
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=64, test_count=8)
    flags = SMALL[:] + list(extra)
    flags[flags.index("--epoch_size") + 1] = "200"
    job = subprocess.Popen(["bash", os.path.join(ROOT, "scripts", script), *args, data],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "EXTRA_ARGS": " ".join(flags)},
                           start_new_session=True)
    return job, data


def wait_for_line(log, text, seconds=240, runs=()):
    """Wait until ``log`` holds ``text`` (the run got that far), while each of ``runs`` (the
    jobs that write it) still runs."""
    deadline = time.time() + seconds
    while time.time() < deadline and text not in (log.read_text() if log.exists() else ""):
        assert all(run.poll() is None for run in runs), [run.communicate() for run in runs]
        time.sleep(0.5)
    assert text in log.read_text(), f"{log} never showed {text!r}"


@pytest.mark.xdist_group("msrun")  # one msrun job at a time: ports, cores
def test_killing_one_worker_fails_the_job_quickly(tmp_path):
    job, data = long_run("run_distribute_train_cpu.sh", tmp_path, "2")
    wait_for_line(tmp_path / "train_parallel" / "worker_1.log", "loss: ")
    pids = subprocess.run(["pgrep", "-f", f"train.py.*{data}"], capture_output=True,
                          text=True).stdout.split()
    worker = [p for p in pids
              if "RANK_ID=1" in open(f"/proc/{p}/environ").read().replace("\0", " ")]
    assert worker, pids
    os.kill(int(worker[0]), signal.SIGKILL)
    killed = time.time()
    try:
        _, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            subprocess.run(["pkill", "-9", "-f", f"train.py.*{data}"])
    assert job.returncode != 0
    assert time.time() - killed < 20  # msrun alone waited ~35 s for its scheduler
    assert "the job failed" in stderr


@pytest.mark.parametrize("script", ["run_standalone_train.sh", "run_distribute_train.sh"])
def test_sigterm_to_the_scripts_process_group_reaches_training(tmp_path, script):
    """A SIGTERM to the script's whole process group (what a terminal's Ctrl-C or a batch
    scheduler's kill sends) ends as one to the script alone: train.py finishes its step and
    saves, the script exits 143 with train.py's one line and no "Terminated". The rank-table
    script runs a one-device table on CPU here (--device_target CPU --is_distributed False: the
    script's own launch and signal handling, without Ascend)."""
    if script == "run_standalone_train.sh":
        job, _ = long_run(script, tmp_path, "CPU")
        log = tmp_path / "train_standalone" / "log.txt"
    else:
        table = rank_table(tmp_path / "rank_table_1p.json", [0])
        job, _ = long_run(script, tmp_path, table, extra=["--device_target", "CPU",
                                                          "--is_distributed", "False"])
        log = tmp_path / "train_parallel0" / "log.txt"
    wait_for_line(log, "epoch: 2 step", runs=[job])
    os.killpg(job.pid, signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 143, stderr
    assert stderr.startswith("stopped: SIGTERM after epoch ") and "--resume auto" in stderr
    saved = re.search(r"saved (\S+\.ckpt)", stderr).group(1)
    assert os.path.exists(saved) and not run_processes(str(tmp_path))


def test_standalone_train_then_eval_scripts(tmp_path):
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=32, test_count=8)
    config = tmp_path / "tiny.yaml"
    config.write_text("network: mobilenet_v1_025\nnum_classes: 4\nepoch_size: 1\n"
                      "batch_size: 8\noutput_path: output\nlog_interval: 1\n")
    proc = run_script("run_standalone_train.sh", "CPU", data, config, cwd=tmp_path,
                      env={"EXTRA_ARGS": "--seed 3"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"log: {tmp_path}/train_standalone/log.txt" in proc.stdout
    ckpt = tmp_path / "train_standalone" / "output" / "ckpt_0" / "mobilenet_v1_025-1_4.ckpt"
    # It ends saying where the checkpoints went.
    assert proc.stdout.splitlines()[-1].startswith(
        "train: finished mobilenet_v1_025 epochs 1..1") and str(ckpt) in proc.stdout
    assert ckpt.exists() and "loss: " in (tmp_path / "train_standalone" / "log.txt").read_text()
    proc = run_script("run_eval.sh", "CPU", data, ckpt, config, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("result: {'Loss': ")
    assert (tmp_path / "eval" / "eval_log.txt").exists()


@pytest.mark.xdist_group("msrun")  # one msrun job at a time: ports, cores
def test_a_stop_on_one_rank_is_agreed_within_log_interval(tmp_path):
    """msrun, 2 CPU workers, 4-step epochs, log_interval 3: the ranks agree on a stop only at
    their sync points (global steps 1, 3, 4, 5, 7, 8, ...), not every step. Rank 1 alone gets a
    SIGTERM after step 6 (ZOO_TEST_SIGNAL_AT_STEP=6@1): both ranks stop after step 7, the next
    sync point, within log_interval steps; rank 0 saves epoch 2 step 3; the script reports the
    stop (exit 143), and --resume auto continues both ranks from that checkpoint."""
    data = write_cifar_folder(str(tmp_path / "cifar"), train_count=64, test_count=8)
    args = SMALL[:] + ["--seed", "5"]
    args[args.index("--log_interval") + 1] = "3"
    args[args.index("--epoch_size") + 1] = "3"
    proc = run_script("run_distribute_train_cpu.sh", 2, data, cwd=tmp_path,
                      env={"EXTRA_ARGS": " ".join(args), "ZOO_TEST_SIGNAL_AT_STEP": "6@1"})
    assert proc.returncode == 143, proc.stdout + proc.stderr
    logs = tmp_path / "train_parallel"
    folder = logs / "output" / "ckpt_0"
    saved = folder / "mobilenet_v1_025-2_3.ckpt"
    texts = [(logs / f"worker_{r}.log").read_text() for r in range(2)]
    assert f"stopped: SIGTERM after epoch 2 step 3 (global step 7); saved {saved} in " \
        in texts[0]
    assert "stopped: SIGTERM after epoch 2 step 3 (global step 7) (rank 1; rank 0 saves the " \
        "checkpoint)" in texts[1]
    assert proc.stderr.startswith("stopped: SIGTERM after epoch 2 step 3")
    proc = run_script("run_distribute_train_cpu.sh", 2, data, cwd=tmp_path,
                      env={"EXTRA_ARGS": " ".join(args + ["--resume", "auto"])})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    texts = [(logs / f"worker_{r}.log").read_text() for r in range(2)]
    for text in texts:
        assert f"resume auto: {saved}" in text
        assert re.search(r"^epoch: 2 step: 4, ", text, re.M) and \
            not re.search(r"^epoch: 1 step", text, re.M)
    sums = [re.search(r"weights checksum (\S+)", t).group(1) for t in texts]
    assert sums[0] == sums[1]
