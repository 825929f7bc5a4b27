"""The import graph: src/ stands in floors, each importing only its own floor and those below
(the networks at the bottom, the command-line tools at the top), with no import circle; only
src/training/distributed.py talks to the other ranks. Read from the source (every import
statement, those inside functions too), so a late import cannot hide an arrow."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")


def module_name(path: str, root: str = ROOT) -> str:
    relative = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
    return relative[:-len(".__init__")] if relative.endswith(".__init__") else relative


def imported_modules(path: str, root: str = ROOT) -> set:
    """The src modules ``path`` imports, absolute names (``from . import x`` resolved)."""
    name = module_name(path, root)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            found.add(stem)
            found |= {f"{stem}.{alias.name}" for alias in node.names}  # from pkg import module
    return {m for m in found if m == "src" or m.startswith("src.")}


def python_files(folder: str) -> list:
    return sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names
                  if f.endswith(".py"))


def src_modules() -> set:
    return {module_name(p) for p in python_files(SRC)}


@pytest.mark.parametrize("path", python_files(os.path.join(SRC, "models")),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_the_networks_import_nothing_above_them(path):
    above = {m for m in imported_modules(path) & src_modules()
             if m != "src" and not m.startswith("src.models")}
    assert not above, f"{os.path.relpath(path, ROOT)} imports {sorted(above)}"


def test_the_checker_sees_an_arrow_up(tmp_path):
    """The check above would catch the arrow the registry had (a late import of the
    downloader), relative or absolute."""
    models = tmp_path / "src" / "models"
    models.mkdir(parents=True)
    planted = models / "registry.py"
    planted.write_text("def f():\n    from ..weights.pretrained import fetch\n"
                       "    import src.weights.convert\n")
    assert {"src.weights.pretrained", "src.weights.convert"} <= imported_modules(str(planted),
                                                                                 str(tmp_path))


def test_src_has_no_import_circle():
    modules = src_modules()
    def ancestors(name):  # a module's packages, initialised before it: no arrow of its own
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    # An arrow into a package is one into its __init__, held under the package's name.
    graph = {module_name(p): (imported_modules(p) & modules) - ancestors(module_name(p))
             for p in python_files(SRC)}
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):]
                                                                      + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


# The floors, bottom up: a module's floor is that of the longest prefix of its name listed here.
FLOORS = (
    ("src.models",),  # the networks
    ("src.errors", "src.progress", "src.CrossEntropySmooth", "src.lr_generator", "src.augment",
     "src.model_utils", "src.shards", "src.dataset", "src.device", "src.checkpoint",
     "src.cli"),  # shared
    ("src.weights",),  # other sources' weights
    ("src.deploy",),  # evaluation, prediction, export
    ("src.training",),  # the trainer and its callbacks, run state and ranks
    ("src.tools", "src"),  # the tools and the package's API
)


def floor_of(module: str) -> int:
    best, found = "", None
    for level, names in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, found = name, level
    assert found is not None, f"{module} is on no floor: add it to FLOORS"
    return found


def test_every_arrow_points_down_or_across():
    modules = src_modules()
    up = []
    for path in python_files(SRC):
        name = module_name(path)
        for target in sorted(imported_modules(path) & modules):
            if target != "src" and floor_of(target) > floor_of(name):
                up.append(f"{name} (floor {floor_of(name)}) imports {target} "
                          f"(floor {floor_of(target)})")
    assert not up, "\n".join(up)


# What the family records (src/models/family.py) stand for: the families' modules, their tables
# of published weights, and the registry behind the package's names.
FAMILY_INTERNALS = {"src.models.registry", "src.models.family", "src.models.weights",
                    "src.models.shufflenet_v1", "src.models.shufflenet_v2",
                    "src.models.mobilenet_v1"}


def named_modules(path: str) -> set:
    """The src modules ``path`` imports, and those it names in a string (importlib's reads)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    strings = {node.value for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return imported_modules(path) | {s for s in strings if s.startswith("src.")}


def test_outside_the_networks_a_family_is_read_through_its_record():
    """src/ outside src/models reads the families through src.models' names (family_record,
    published_weights, checkpoint_sources...), never a family module or its tables."""
    found = {}
    for path in python_files(SRC):
        if not module_name(path).startswith("src.models"):
            inside = {m for m in named_modules(path)
                      if any(m == i or m.startswith(i + ".") for i in FAMILY_INTERNALS)}
            if inside:
                found[os.path.relpath(path, ROOT)] = sorted(inside)
    assert not found


def test_the_checker_sees_a_family_module_read(tmp_path):
    planted = tmp_path / "convert.py"
    planted.write_text("import importlib\nfrom src.models.shufflenet_v1 import PRETRAINED\n"
                       "LAYOUTS = importlib.import_module('src.models.shufflenet_v2').LAYOUTS\n")
    assert {"src.models.shufflenet_v1.PRETRAINED", "src.models.shufflenet_v2"} <= \
        named_modules(str(planted))


# MindSpore's collective operators: a rank that calls one waits for every other rank.
COMMUNICATION_OPS = {"AllReduce", "AllGather", "Broadcast", "ReduceScatter", "AlltoAll",
                     "Send", "Receive", "Barrier", "all_reduce", "all_gather_into_tensor",
                     "broadcast", "barrier", "reduce_scatter_tensor"}
DISTRIBUTED = os.path.join(SRC, "training", "distributed.py")


def communication_calls(path: str) -> list:
    """Where ``path`` imports mindspore.communication or names a collective operator."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(n.startswith("mindspore.communication") for n in names):
            found.append(f"line {node.lineno}: imports {names[0]}")
        if isinstance(node, ast.Attribute) and node.attr in COMMUNICATION_OPS:
            found.append(f"line {node.lineno}: {node.attr}")
    return found


def test_only_the_distributed_module_talks_to_other_ranks():
    found = {os.path.relpath(p, ROOT): communication_calls(p)
             for p in python_files(SRC) if p != DISTRIBUTED}
    assert not {p: c for p, c in found.items() if c}
    assert communication_calls(DISTRIBUTED)  # it does, so the check reads the right names


def test_the_checker_sees_a_collective_call(tmp_path):
    planted = tmp_path / "trainer.py"
    planted.write_text("from mindspore import ops\n"
                       "def f(x):\n    from mindspore.communication import init\n"
                       "    return ops.AllReduce()(x)\n")
    assert communication_calls(str(planted)) == ["line 3: imports mindspore.communication",
                                                 "line 4: AllReduce"]


# Documents of the team's own, which a user who clones this repository does not have, and the
# team's issues by title ("the training issue").
OUTSIDE = re.compile(r"\bANCHORS\b|\bSPEC\.md\b|\bseeds/|\b[\w-]+ issue\b")
TEXT = (".py", ".md", ".yaml", ".sh", ".cc", ".h", ".txt", ".ini", ".toml", ".cfg")


# A measured time or rate: "447 ms", "281 images/s", "3x faster".
TIMING = re.compile(r"\b\d[\d,.]*\s?(ms|µs)\b|\b\d[\d,.]*\s?images/s\b|\b[\d.]+x (faster|slower)\b")


def test_measured_timings_live_in_the_docs_not_the_code():
    """The code gives the reason in a clause; the figures are in docs/PERFORMANCE.md and
    docs/DEPLOY.md, where they are measured again, not in comments that go stale."""
    found = []
    for path in python_files(SRC) + [
            os.path.join(ROOT, name) for name in os.listdir(ROOT) if name.endswith(".py")]:
        with open(path, encoding="utf-8") as f:
            found += [f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}"
                      for number, line in enumerate(f, 1) if TIMING.search(line)]
    assert not found, "\n".join(found)
    assert TIMING.search("took 447 ms a step") and TIMING.search("281 images/s split")


def test_no_file_points_to_documents_outside_the_repository():
    """Code, comments, configs and docs speak of this repository only."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("output",
                                                                          "__pycache__")]
        for name in files:
            path = os.path.join(folder, name)
            if not name.endswith(TEXT) or path == os.path.abspath(__file__):
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                found += [f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}"
                          for number, line in enumerate(f, 1) if OUTSIDE.search(line)]
    assert not found, "\n".join(found)
