"""The package's layering: the library never imports the command line, and no two library
modules import each other (directly or around a circle), counting imports inside functions."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tp_vgg"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> Set[str]:
    """Every tp_vgg module ``path`` imports, at the top or inside a function."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tp_vgg"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tp_vgg"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # from tp_vgg import x
    return found


def library_graph() -> Dict[str, Set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        if name.startswith("tp_vgg.cli") or name in ("tp_vgg", "tp_vgg.__main__"):
            continue
        graph[name] = {m for m in imports(path) if m in modules and m != "tp_vgg"} - {name}
    return graph


def test_nothing_outside_the_cli_imports_it():
    offenders = []
    for path in list(PACKAGE.rglob("*.py")) + list((ROOT / "benchmarks").glob("*.py")):
        name = module_name(path)
        if name.startswith("tp_vgg.cli") or name == "tp_vgg.__main__":
            continue
        if any(m.startswith("tp_vgg.cli") for m in imports(path)):
            offenders.append(str(path.relative_to(ROOT)))
        assert "argparse" not in path.read_text(encoding="utf-8") or \
            not name.startswith("tp_vgg"), f"{name} uses argparse"
    assert offenders == []


def test_library_modules_form_no_import_circle():
    graph = library_graph()
    assert {"tp_vgg.pruning", "tp_vgg.criteria", "tp_vgg.job"} <= set(graph)
    assert "tp_vgg.criteria" in graph["tp_vgg.pruning"]
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
