"""The catalogue of printed remedies (issue 19 item 5): every message in ``tp_vgg/`` that suggests
a flag or a rewrite is found here by its text, and every such message has a case that prints it
and the same case with the remedy applied, which must then succeed.

* :func:`suggestions` reads every string literal of ``tp_vgg/`` (f-strings with their fields as
  ``{}``), leaving out docstrings and argparse ``help=`` texts, and keeps those that suggest a
  flag (``use/pass/give/add/try/set/with/or … --flag``) or a rewrite (``torch.flatten``).
* A :class:`Remedy` names its message by a fragment of that literal (fixed text, no fields), the
  failing command line and the remedied one. ``tests/test_remedies*.py`` run them; the meta-test
  in ``tests/test_remedies.py`` fails on a suggesting literal that no remedy names.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import tp_vgg

PACKAGE = Path(tp_vgg.__file__).parent
USER_MODELS = Path(__file__).parent / "user_models"

# A flag or a rewrite, after a word that offers it (up to 60 characters before it, within a clause).
SUGGESTION = re.compile(
    r"\b(use|with|pass|add|give|set|try|or|rerun with|name it with|instead|rewrite|replace|"
    r"pick them with|lower|leave)\b[^.;]{0,60}?(`?--[a-z][a-z-]+|torch\.flatten|x\.flatten)"
    r"|\b(write (it|them|the \w+) (as|from)|make it an? |flatten with|rewrite)\b",
    re.I)

_DOC_KEYWORDS = ("help", "description", "epilog", "metavar")


def _literals(tree: ast.AST) -> List[Tuple[int, str]]:
    """(line, text) of every string literal that is not a docstring or argparse help text."""
    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant):
            skip.add(id(body[0].value))
        if isinstance(node, ast.keyword) and node.arg in _DOC_KEYWORDS:
            skip.update(id(sub) for sub in ast.walk(node.value))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in (
                "add_argument", "add_parser", "add_argument_group",
                "add_mutually_exclusive_group"):
            skip.update(id(sub) for sub in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and id(node) not in skip:
            found.append((node.lineno, "".join(
                v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)))
            skip.update(id(v) for v in node.values)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            found.append((node.lineno, node.value))
    return found


def literals() -> List[Tuple[str, int, str]]:
    """(file relative to the package's parent, line, literal) of every message literal."""
    return [(str(path.relative_to(PACKAGE.parent)), line, text)
            for path in sorted(PACKAGE.rglob("*.py"))
            for line, text in _literals(ast.parse(path.read_text()))]


def suggestions() -> List[Tuple[str, int, str]]:
    """The literals (as :func:`literals`) that suggest a flag or a rewrite."""
    return [hit for hit in literals() if SUGGESTION.search(hit[2])]


def squash(text: str) -> str:
    """Whitespace folded, so that a message wrapped by the terminal still matches its fragment."""
    return " ".join(text.split())


@dataclass
class Ctx:
    """What a remedy case may build: files under tmp_path, the tiny zoo model flags."""
    tmp: Path
    cache: Dict[str, object] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.tmp / name

    def write(self, name: str, text: str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p


Args = Callable[[Ctx], Sequence[object]]


@dataclass
class Remedy:
    """One printed remedy: ``message`` is a fixed fragment of the literal in ``tp_vgg/`` (and
    of what ``failing`` prints); ``remedied`` is ``failing`` with the remedy applied, which must
    exit 0. ``printed``: the message with its fields filled in, where the remedy lies in them (a
    flag's value). ``check`` may assert more about the remedied run (its output, its files)."""
    id: str
    message: str
    failing: Args
    remedied: Args
    printed: Optional[str] = None  # the message as printed, with its fields filled in
    code: int = 2
    stream: str = "err"
    setup: Optional[Callable[[Ctx], None]] = None
    check: Optional[Callable[[Ctx, object], None]] = None
    marks: Tuple = ()


def run_remedy(remedy: Remedy, run_cli, tmp_path: Path) -> None:
    ctx = Ctx(tmp_path)
    if remedy.setup:
        remedy.setup(ctx)
    r = run_cli(*[str(a) for a in remedy.failing(ctx)])
    printed = squash(getattr(r, remedy.stream))
    assert r.code == remedy.code, (r.code, r.err[-2000:])
    text = remedy.printed or remedy.message  # the literal's fixed text, or as printed
    assert squash(text) in printed, (text, r.err[-2000:], r.out[-2000:])
    assert "Traceback" not in r.err
    fixed = run_cli(*[str(a) for a in remedy.remedied(ctx)])
    assert fixed.code == 0, (fixed.code, fixed.err[-2000:])
    assert squash(text) not in squash(fixed.err), fixed.err[-2000:]
    if remedy.check:
        remedy.check(ctx, fixed)


# Remedies whose test lives elsewhere: message fragment -> "tests/file.py::test_name" (the
# test_remedies_* modules add their own as ``ELSEWHERE``).
TESTED_ELSEWHERE: Dict[str, str] = {
    "pass it as --checkpoint {}":
        "tests/test_student.py::test_a_checkpoint_as_weights_is_told_to_use_checkpoint",
    "continue that run with tp-vgg train --resume {} (a last.pt)":
        "tests/test_student.py::test_a_checkpoint_as_weights_is_told_to_use_checkpoint",
    "is an archive, not a folder; extract it first":
        "tests/test_student.py::test_an_archive_as_data_dir_says_how_to_extract_it",
    "to use fewer images of any dataset pass --train-images N and/or --test-images N":
        "tests/test_student.py::test_size_keys_of_data_kwargs_point_to_the_flags",
    "each step only re-ranks the same weights":
        "tests/test_learner.py::test_iterative_without_data_warns",
    "so there is nothing to recommend":
        "tests/test_learner.py::test_sensitivity_gives_no_advice_that_prunes_nothing",
    "is a file; give the folder tp-vgg prune --out wrote":
        "tests/test_compare.py::test_a_file_for_a_run_and_runs_without_accuracy_say_what_to_give",
    "holds no {}; give folders written by tp-vgg prune --out DIR":
        "tests/test_compare.py::test_compare_mistakes_exit_2_with_one_line",
    "No run recorded accuracy (prune with --data NAME to evaluate).":
        "tests/test_compare.py::test_a_file_for_a_run_and_runs_without_accuracy_say_what_to_give",
}
