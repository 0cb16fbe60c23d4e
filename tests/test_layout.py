"""The package's layering, read from the code itself (imports at the top or inside a function):

* the library never imports the command line, and only ``tp_vgg.cli`` uses argparse;
* every library module sits in one layer of :data:`LAYERS`, and no module imports one of a
  higher layer (so no two subpackages import each other);
* every subpackage's ``__init__`` docstring says what it may import and what imports it, and
  both lines are true;
* no library modules import each other around a circle.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tp_vgg"

# Lowest first. A module may import its own layer and the layers below it.
LAYERS: List[List[str]] = [
    ["errors", "registry", "files", "device"],  # the foundation: plain helpers
    ["data"],
    ["models"],
    ["report"],
    ["pruning"],
    ["checkpoint"],
    ["train"],
    ["export"],
    ["latency"],
    ["search"],
    ["jobs"],  # the jobs: prune, resume, unstructured, sweep, sensitivity
]
SUBPACKAGES = ["data", "models", "report", "pruning", "checkpoint", "train", "export", "latency",
               "search", "jobs"]
LAYER_OF = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, typing_only: bool = True) -> Set[str]:
    """Every tp_vgg module ``path`` imports, at the top or inside a function (and, with
    ``typing_only``, under ``if TYPE_CHECKING:``, which never runs)."""
    found: Set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if not typing_only:
        tree.body = [n for n in tree.body if not (isinstance(n, ast.If) and isinstance(
            n.test, ast.Name) and n.test.id == "TYPE_CHECKING")]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tp_vgg"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tp_vgg"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # from tp_vgg.x import y
    return found


def library_modules() -> Dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")
            if not module_name(p).startswith("tp_vgg.cli")
            and module_name(p) not in ("tp_vgg", "tp_vgg.__main__")}


def library_graph(typing_only: bool = True) -> Dict[str, Set[str]]:
    modules = library_modules()
    every = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path, typing_only) if m in every and m != "tp_vgg"} - {name}
            for name, path in modules.items()}


def part(module: str) -> str:
    """``tp_vgg.pruning.graph`` -> ``pruning``; ``tp_vgg.errors`` -> ``errors``."""
    return module.split(".")[1]


def test_nothing_outside_the_cli_imports_it():
    offenders = []
    for path in list(PACKAGE.rglob("*.py")) + list((ROOT / "benchmarks").glob("*.py")):
        name = module_name(path)
        if name.startswith("tp_vgg.cli") or name == "tp_vgg.__main__":
            continue
        if any(m.startswith("tp_vgg.cli") for m in imports(path)):
            offenders.append(str(path.relative_to(ROOT)))
        if name.startswith("tp_vgg"):
            assert "argparse" not in path.read_text(encoding="utf-8"), f"{name} uses argparse"
    assert offenders == []


def test_every_library_module_is_in_a_layer():
    parts = {part(m) for m in library_modules()}
    assert parts == set(LAYER_OF), (
        f"not in LAYERS: {sorted(parts - set(LAYER_OF))}; gone: {sorted(set(LAYER_OF) - parts)}")
    for name in SUBPACKAGES:
        assert (PACKAGE / name / "__init__.py").is_file(), f"tp_vgg/{name} is not a package"


def test_no_module_imports_a_higher_layer():
    wrong = [f"{a} (layer {part(a)}) imports {b} (layer {part(b)})"
             for a, deps in sorted(library_graph().items()) for b in sorted(deps)
             if LAYER_OF[part(b)] > LAYER_OF[part(a)]]
    assert wrong == []


def _declared(doc: str, label: str) -> Set[str]:
    m = re.search(rf"^{label}:(.*?)\.?$(?=\n[A-Z][\w ]*:|\n\n|\Z)", doc, re.M | re.S)
    assert m, f"no '{label}:' line"
    return {w.strip() for w in m.group(1).split(",") if w.strip()}


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackage_docstring_says_its_place(name):
    doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text(encoding="utf-8")))
    assert doc and len(doc.splitlines()) >= 3, f"tp_vgg/{name}/__init__.py: say what it holds"
    for module in (PACKAGE / name).glob("*.py"):
        if module.stem != "__init__":
            assert f"``{module.stem}``" in doc, f"tp_vgg/{name}: docstring does not name {module.stem}"
    may, by = _declared(doc, "May import"), _declared(doc, "Imported by")
    graph = library_graph()
    actual = {part(b) for a, deps in graph.items() if part(a) == name for b in deps} - {name}
    assert actual <= may, f"tp_vgg/{name} imports {sorted(actual - may)}, not declared"
    assert all(LAYER_OF[p] < LAYER_OF[name] for p in may), f"tp_vgg/{name} may import a higher layer"
    users = {part(a) for a, deps in graph.items() for b in deps if part(b) == name} - {name}
    cli = {"cli"} if any(part(m) == name for p in (PACKAGE / "cli").glob("*.py")
                         for m in imports(p) if m.count(".") >= 1) else set()
    assert by == users | cli, f"tp_vgg/{name} is imported by {sorted(users | cli)}"


def test_no_two_modules_read_as_the_same_word():
    stems = [p.stem for p in PACKAGE.rglob("*.py") if p.stem != "__init__"]
    norm = {}
    for s in stems:
        key = s.rstrip("s").replace("_", "")
        norm.setdefault(key, set()).add(s)
    assert [v for v in norm.values() if len(v) > 1] == []


def test_library_modules_form_no_import_circle():
    """At run time: a type named under ``if TYPE_CHECKING:`` (the jobs' stages name PruneJob)
    is no import."""
    graph = library_graph(typing_only=False)
    assert {"tp_vgg.pruning.graph", "tp_vgg.pruning.criteria", "tp_vgg.jobs.prune"} <= set(graph)
    assert "tp_vgg.pruning.criteria" in graph["tp_vgg.pruning.graph"]
    state: Dict[str, int] = {}
    path: List[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_package_file_is_git_ignored():
    """A fresh clone has every module: none of the package's files matches .gitignore (a
    ``data/`` rule once hid ``tp_vgg/data/__init__.py``)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")]
    r = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.stdout.split() == []
