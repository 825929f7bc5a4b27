"""The README and the docs stay true: the README is short, each of its shell blocks either runs
here as written or says why it cannot (a download, data this machine lacks), and the tables that
commands generate are what those commands print."""
import os
import re
import subprocess
import sys

import pytest

from src.model_utils.config import markdown_table
from src.weights.pretrained import results_table, table
from tests.helpers import ROOT, saved_checkpoint

README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
BLOCK = re.compile(r"<!-- readme-test: (run|skip) ?(.*?) -->\n```bash\n(.*?)```", re.S)


def test_the_readme_is_short_and_every_shell_block_says_whether_it_runs():
    assert len(README.encode()) <= 10 * 1024
    assert README.count("```bash") == len(BLOCK.findall(README))  # none left unmarked
    for kind, reason, _ in BLOCK.findall(README):
        assert kind == "run" or re.fullmatch(r"\(.+\)", reason), (kind, reason)


def test_generated_tables_are_what_their_commands_print():
    assert "\n".join(results_table()) in README
    with open(os.path.join(ROOT, "docs", "CONFIG.md"), encoding="utf-8") as f:
        assert f.read() == markdown_table(), \
            "run: python -m src.model_utils.config > docs/CONFIG.md"
    with open(os.path.join(ROOT, "docs", "PRETRAINED.md"), encoding="utf-8") as f:
        assert "\n".join(table(markdown=True)) in f.read()


@pytest.mark.slow
def test_the_runnable_blocks_run_as_written(tmp_path):
    """In a copy of the repository's entry points and sources, with the quick start's last
    checkpoint where the quick start writes it (saved here rather than trained for)."""
    for name in os.listdir(ROOT):
        if name not in (".git", ".venv", "output", "data") and not name.startswith("."):
            os.symlink(os.path.join(ROOT, name), tmp_path / name)
    folder = tmp_path / "output" / "quick_start" / "ckpt_0"
    folder.mkdir(parents=True)
    saved_checkpoint(folder / "shufflenet_v2_x0_5-30_44.ckpt", "shufflenet_v2_x0_5",
                     num_classes=10, epoch=30, steps=44)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    blocks = [code for kind, _, code in BLOCK.findall(README) if kind == "run"]
    assert blocks
    for code in blocks:
        proc = subprocess.run(["bash", "-e", "-c", code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, code + proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "Traceback" not in proc.stdout + proc.stderr
    # What the block promises: the exported file, and the photographs' top-5 digits.
    assert (tmp_path / "digits.mindir").exists()
    assert re.search(r"china\.jpg: \d \d\.\d{4}, ", proc.stdout), proc.stdout
