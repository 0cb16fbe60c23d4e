"""The scripts in examples/: each has a docstring, a ``--smoke`` flag and an ``--out`` folder,
uses the library only (no ``tp_vgg.cli``, no ``tp-vgg`` subprocess), and runs on its own with
``--smoke --out DIR`` from another folder, writing the files it promises under DIR."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# imported by an example, not run: no --smoke of their own
HELPERS = {"my_vgg.py"}
# the files each example promises under --out (a new example adds its line here)
PROMISED = {
    "api.py": ["pruned.pt"],
    "own_vgg.py": ["my_vgg_weights.pt", "my_vgg_pruned.pt"],
    "sweep_plot.py": ["sweep.csv", "sweep.png"],
    "latency_budget.py": ["run/pruned.pt", "run/report.json"],
    "own_training_loop.py": ["finetuned.pt"],
    "four_views.py": ["four_views.json", "four_views.png"],
}
TIMEOUT_S = 120
# smoke runs of a minute or more (on a loaded 2-core machine): run by `make test-slow`, with this
# timeout; the others are kept to well under 30 s each
SLOW: dict = {}


def scripts() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("*.py") if p.name not in HELPERS)


def runs() -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in scripts()]


def _flags(tree: ast.AST) -> set[str]:
    """The option strings of every ``add_argument(...)`` call."""
    return {a.value for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
            for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_the_examples_are_there():
    assert {"api.py", "own_vgg.py", "sweep_plot.py", "latency_budget.py",
            "own_training_loop.py"} <= set(scripts())
    assert all((EXAMPLES / h).is_file() for h in HELPERS)


@pytest.mark.parametrize("name", scripts())
def test_an_example_says_what_it_shows_takes_smoke_and_out_and_uses_the_library_only(name):
    source = (EXAMPLES / name).read_text()
    tree = ast.parse(source)
    doc = ast.get_docstring(tree)
    assert doc and "python examples/" in doc, f"{name}: a docstring with how to run it"
    missing = {"--smoke", "--out"} - _flags(tree)
    assert not missing, f"{name} has no {', '.join(sorted(missing))} option"
    imported = _imports(tree)
    assert not {n for n in imported if n == "tp_vgg.cli" or n.startswith("tp_vgg.cli.")}, name
    assert "subprocess" not in imported and "os.system" not in source, name
    assert name in PROMISED, f"add the files {name} writes under --out to PROMISED"


@pytest.mark.parametrize("name", runs())
def test_an_example_runs_with_smoke_and_writes_what_it_promises(name, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(EXAMPLES / name), "--smoke", "--out", str(out)],
                       cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=SLOW.get(name, TIMEOUT_S))
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, f"{name} failed after {seconds:.0f} s:\n{r.stdout}\n{r.stderr}"
    assert r.stdout.strip(), f"{name} printed nothing"
    for rel in PROMISED.get(name, []):
        assert (out / rel).is_file(), f"{name} did not write {rel}:\n{r.stdout}"
    for pt in out.rglob("*.pt"):  # every file written loads without unpickling code
        assert isinstance(torch.load(pt, map_location="cpu", weights_only=True), dict), pt
    for png in out.rglob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert all(out in p.parents for p in written), \
        f"{name} wrote outside --out: {sorted(str(p) for p in written if out not in p.parents)}"
