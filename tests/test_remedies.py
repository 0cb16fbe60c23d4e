"""Every remedy printed is tested (issue 19 item 5): the meta-test.

``tests/remedies_util.suggestions()`` greps ``tp_vgg/`` for every message that suggests a flag
or a rewrite; each must be named by a :class:`~remedies_util.Remedy` of a
``tests/test_remedies_*.py`` module (which prints it, applies the remedy and succeeds) or by an
entry of a module's ``ELSEWHERE`` that names an existing test (or, for a literal the scan
matches that suggests nothing, by ``NOT_SUGGESTIONS`` with the reason). A reworded message, a new one, or a
remedy whose message is gone fails here."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from remedies_util import SUGGESTION, TESTED_ELSEWHERE, literals, squash, suggestions

TESTS = Path(__file__).parent


def _modules():
    return [importlib.import_module(p.stem) for p in sorted(TESTS.glob("test_remedies_*.py"))]


def _remedies():
    return [r for mod in _modules() for r in mod.REMEDIES]


def _elsewhere():
    """Message fragment -> "tests/file.py::test_name", for remedies tested in other files."""
    found = dict(TESTED_ELSEWHERE)
    for mod in _modules():
        found.update(getattr(mod, "ELSEWHERE", {}))
    return found


def _not_suggestions():
    """Literals the scan matches that suggest nothing (a description, a list of what is
    accepted): fragment -> why."""
    found = {}
    for mod in _modules():
        found.update(getattr(mod, "NOT_SUGGESTIONS", {}))
    return found


def _fragments():
    return [r.message for r in _remedies()] + list(_elsewhere()) + list(_not_suggestions())


def test_the_scan_finds_suggestions():
    hits = suggestions()
    assert len(hits) >= 40, len(hits)  # the scan itself works: it sees the package's messages
    assert SUGGESTION.search("pass --no-strict-weights to load only the tensors that fit")
    assert not SUGGESTION.search("unknown model 'vgg99'; accepted: vgg11, vgg13")


def test_every_suggestion_has_a_remedy_test():
    fragments = [squash(f) for f in _fragments()]
    untested = [f"{file}:{line}: {text[:120]!r}" for file, line, text in suggestions()
                if not any(f in squash(text) for f in fragments)]
    assert not untested, "suggesting messages without a remedy test:\n" + "\n".join(untested)


def test_every_remedy_names_a_message_that_exists():
    texts = [squash(text) for _, _, text in literals()]
    gone = [f for f in _fragments() if not any(squash(f) in t for t in texts)]
    assert not gone, gone
    ids = [r.id for r in _remedies()]
    assert len(ids) == len(set(ids)), ids


def test_tests_named_elsewhere_exist():
    for fragment, where in _elsewhere().items():
        file, name = where.split("::")
        tree = ast.parse((TESTS.parent / file).read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in names, (fragment, where)
