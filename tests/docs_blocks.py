"""The fenced code blocks of README.md and docs/*.md, and the checks tests/test_docs.py runs on
them.

How a block is marked (the fence's info string, after the language):

* ```` ```sh run ````, ```` ```bash run ````, ```` ```python run ````: run as written, in a fresh
  temporary folder, with ``tp-vgg`` and ``python`` from this environment and torch on one
  thread; it must exit 0 within :data:`RUN_TIMEOUT_S`. Only what finishes in seconds.
* ```` ```sh parse ````: ``bash -n`` checks the block's syntax, and every ``tp-vgg ...`` command
  in it (also ``python -m tp_vgg ...`` and ``torchrun ... $(which tp-vgg) ...``), with its
  backslash continuations joined, the block's ``VAR=value`` lines expanded into ``$VAR`` and the
  placeholders of :data:`PLACEHOLDERS` filled in, is parsed by the command line's own parser
  (:func:`tp_vgg.cli.build_parser`) without running; a ``...`` argument means "and your flags"
  and is dropped; a ``for VAR in A B; do ... done`` body is parsed once per value.
  ``python -c "..."`` code in it is compiled, a ``python FILE.py ...`` script must exist in the
  repository and compile, and ``make TARGET`` must name a target of the Makefile. An unknown
  flag, a bad choice or a bad value fails, naming the file and line of the command.
* ```` ```python parse ````: compiled, not run (it needs your data or your loop).
* ```` ```sh no-check: REASON ```` (any language): not checked; the reason is required.
* A ```` ```python ```` block right after ``<!-- readme-example: NAME -->`` is run by
  tests/test_job.py (which finds it by that marker), not here.

Any other block whose language is a shell or Python (``sh``, ``bash``, ``shell``, ``console``,
``python``, ...), or that has no language but starts with a ``tp-vgg`` command, is unmarked:
:func:`unmarked` lists it, and the test fails.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 300

SHELL_LANGS = {"sh", "bash", "shell", "zsh", "console"}
PYTHON_LANGS = {"python", "py", "python3", "pycon"}
CHECKED_LANGS = SHELL_LANGS | PYTHON_LANGS
MODES = ("run", "parse", "no-check")

# Words a parse block may use for "your file/folder", filled in before parsing.
PLACEHOLDERS = {
    "CK": "runs/base/last.pt", "CKPT": "runs/base/last.pt", "CHECKPOINT": "runs/base/last.pt",
    "DIR": "runs/dir", "RUN": "runs/run", "RUN_DIR": "runs/run", "OUT": "runs/out",
    "FILE": "file.pt", "DATA_DIR": "data/cifar10-jpeg",
}

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_EXAMPLE = re.compile(r"<!--\s*readme-example:\s*(?P<name>[\w-]+)\s*-->")


class DocCheckError(AssertionError):
    """A block that does not do what the docs say; the message starts with ``file:line``."""


@dataclass
class Block:
    path: str            # relative to the repository root, e.g. "docs/pruning.md"
    line: int            # line of the opening fence (1-based)
    lang: str            # "sh", "python", ... ("" for none)
    mode: Optional[str]  # "run", "parse", "no-check" or None (unmarked)
    reason: str          # for no-check
    text: str            # the block's content
    example: Optional[str] = None  # NAME of a preceding <!-- readme-example: NAME -->

    @property
    def first_line(self) -> int:
        return self.line + 1

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}-{self.lang or 'text'}-{self.mode or 'unmarked'}"

    @property
    def is_shell(self) -> bool:
        return self.lang in SHELL_LANGS

    @property
    def is_python(self) -> bool:
        return self.lang in PYTHON_LANGS


def parse_info(info: str) -> Tuple[str, Optional[str], str]:
    """```` ```sh parse ```` -> ("sh", "parse", ""); ```` ```sh no-check: why ```` -> ("sh",
    "no-check", "why")."""
    info = info.strip()
    lang, _, rest = info.partition(" ")
    lang = lang.strip().lower()
    rest = rest.strip()
    m = re.match(r"^(run|parse|no-check)\b[:\s]*(.*)$", rest)
    if not m:
        return lang, None, ""
    return lang, m.group(1), m.group(2).strip()


def blocks_of(text: str, path: str) -> List[Block]:
    """Every fenced block of a Markdown text, with the line of its opening fence."""
    out: List[Block] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or (m.group("fence")[0] == "`" and "`" in m.group("info")):
            i += 1
            continue
        fence, start = m.group("fence"), i
        lang, mode, reason = parse_info(m.group("info"))
        body: List[str] = []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            if (close and close.group("fence")[0] == fence[0]
                    and len(close.group("fence")) >= len(fence) and not close.group("info").strip()):
                break
            body.append(lines[i])
            i += 1
        example = None
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0:
            e = _EXAMPLE.search(lines[j])
            example = e.group("name") if e else None
        out.append(Block(path, start + 1, lang, mode, reason, "\n".join(body), example))
        i += 1
    return out


def doc_files() -> List[Path]:
    """README.md and every docs/*.md (whoever wrote it), in a stable order."""
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def all_blocks() -> List[Block]:
    blocks: List[Block] = []
    for f in doc_files():
        blocks += blocks_of(f.read_text(encoding="utf-8"), f.relative_to(ROOT).as_posix())
    return blocks


def _starts_with_command(text: str) -> bool:
    for line in text.split("\n"):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        s = s[2:] if s.startswith("$ ") else s
        return bool(re.match(r"^(tp-vgg|python3? -m tp_vgg|torchrun)\b", s))
    return False


def unmarked(blocks: List[Block]) -> List[str]:
    """Blocks that should carry run / parse / no-check but do not (or no-check without a reason)."""
    bad = []
    for b in blocks:
        if b.example is not None:
            continue  # run by tests/test_job.py, checked by test_readme_examples_are_run
        if b.mode == "no-check" and not b.reason:
            bad.append(f"{b.where}: ```{b.lang} no-check needs a reason: ```{b.lang} no-check: WHY")
        elif b.mode is None and (b.lang in CHECKED_LANGS or _starts_with_command(b.text)):
            bad.append(f"{b.where}: ```{b.lang} block is not marked run, parse or no-check: REASON")
        elif b.mode is not None and b.lang not in CHECKED_LANGS:
            bad.append(f"{b.where}: ```{b.lang} {b.mode}: only sh/bash/console/python blocks "
                       "are checked; give the block its language")
    return bad


# -- shell blocks -> tp-vgg commands ----------------------------------------------------------

def logical_lines(block: Block) -> Iterator[Tuple[int, str]]:
    """(line, command) of each shell command: backslash continuations joined, a quote left open
    continued on the next line; a console block's prompts (``$ ``) stripped, its output skipped."""
    buf, start = "", None
    for k, line in enumerate(block.text.split("\n")):
        n = block.first_line + k
        if block.lang == "console" and not buf:
            if not line.lstrip().startswith("$ "):
                continue
            line = line.lstrip()[2:]
        if start is None:
            if not line.strip():
                continue
            start = n
        if line.rstrip().endswith("\\") and not line.lstrip().startswith("#"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        try:
            shlex.split(buf, comments=True)
        except ValueError:  # an open quote: the command goes on
            buf += "\n"
            continue
        yield start, buf
        buf, start = "", None
    if buf.strip():
        yield start, buf


_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_OPERATORS = {"&&", "||", ";", "|", "&"}


def _expand(cmd: str, env: Dict[str, str]) -> str:
    cmd = re.sub(r"\$\(\s*which\s+tp-vgg\s*\)", "tp-vgg", cmd)
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2),
                                      PLACEHOLDERS.get(m.group(1) or m.group(2), "placeholder")),
                    cmd)


@dataclass
class Command:
    line: int
    kind: str          # "tp-vgg" (args: its arguments), "python-c" (args[0]: the code),
    #                    "python-file" (args[0]: the script), "make" (args: the targets)
    args: List[str]
    text: str          # as written (joined)


_FOR = re.compile(r"^\s*for\s+(\w+)\s+in\s+(.*?)\s*(;\s*do)?\s*$")


def commands(block: Block) -> List[Command]:
    """The tp-vgg commands (and ``python -c`` snippets, ``python FILE.py`` scripts and ``make``
    targets) of a shell block; the body of a ``for VAR in A B C; do ... done`` loop once per
    value."""
    out: List[Command] = []
    _commands(list(logical_lines(block)), {}, block, out)
    return out


def _commands(lines: List[Tuple[int, str]], env: Dict[str, str], block: Block,
              out: List[Command]) -> None:
    k = 0
    while k < len(lines):
        line, raw = lines[k]
        loop = _FOR.match(raw.split("#")[0]) if raw.lstrip().startswith("for ") else None
        if loop:
            body, depth, k = [], 1, k + 1
            if not loop.group(3) and k < len(lines) and lines[k][1].strip() == "do":
                k += 1
            while k < len(lines):
                first = lines[k][1].split()[:1]
                depth += first == ["for"]
                depth -= first in (["done"], ["done;"])
                if depth == 0:
                    break
                body.append(lines[k])
                k += 1
            values = shlex.split(_expand(loop.group(2), env), comments=True)
            for v in values or ["placeholder"]:
                _commands(body, dict(env, **{loop.group(1): v}), block, out)
            k += 1
            continue
        k += 1
        try:
            tokens = shlex.split(_expand(raw, env), comments=True)
        except ValueError as e:
            raise DocCheckError(f"{block.path}:{line}: cannot split {raw.strip()!r}: {e}")
        if tokens and all(re.match(r"^[A-Za-z_]\w*=", t) for t in tokens):
            for t in tokens:  # VAR=value lines: expanded (and word-split) in later commands
                key, _, v = t.partition("=")
                env[key] = v
            continue
        segment: List[str] = []
        for t in tokens + [";"]:
            if t in _OPERATORS or (t.endswith(";") and t != ";"):
                if t.endswith(";") and t != ";":
                    segment.append(t[:-1])
                cmd = _command_of(segment, line, raw)
                if cmd is not None:
                    out.append(cmd)
                segment = []
            else:
                segment.append(t)


def _command_of(tokens: List[str], line: int, raw: str) -> Optional[Command]:
    if tokens and tokens[0] == "make":
        return Command(line, "make", [t for t in tokens[1:] if not t.startswith("-")], raw.strip())
    for i, t in enumerate(tokens):
        rest = None
        if os.path.basename(t) == "tp-vgg":
            rest = tokens[i + 1:]
        elif (re.match(r"^(.*/)?python3?$", t) and tokens[i + 1:i + 3] == ["-m", "tp_vgg"]):
            rest = tokens[i + 3:]
        elif re.match(r"^(.*/)?python3?$", t) and tokens[i + 1:i + 2] == ["-c"] and len(tokens) > i + 2:
            return Command(line, "python-c", [tokens[i + 2]], raw.strip())
        elif re.match(r"^(.*/)?python3?$", t) and tokens[i + 1:i + 2] and tokens[i + 1].endswith(".py"):
            return Command(line, "python-file", [tokens[i + 1]], raw.strip())
        if rest is not None:
            args, skip = [], False
            for a in rest:
                if skip:
                    skip = False
                elif re.match(r"^\d*>>?$|^\d*<$", a):  # a redirection and its file
                    skip = True
                elif re.match(r"^\d*>>?\S+$|^\d*>&\d$", a):
                    continue
                elif a != "...":
                    args.append(PLACEHOLDERS.get(a, a))
            return Command(line, "tp-vgg", args, raw.strip())
    return None


# -- the checks ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def cli_parser():
    """tp-vgg's own argument parser (built once: it imports the command modules)."""
    from tp_vgg.cli import build_parser

    return build_parser()


def parse_command(args: List[str], where: str) -> None:
    """Parse ``tp-vgg ARGS`` with the command line's parser, running nothing; a
    :class:`DocCheckError` naming ``where`` when argparse refuses it."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli_parser().parse_args(list(args))
    except SystemExit as e:
        if e.code not in (0, None):
            msg = err.getvalue().strip() or f"exit {e.code}"
            raise DocCheckError(f"{where}: `tp-vgg {shlex.join(args)}` does not parse: {msg}")
        return
    if not args:
        raise DocCheckError(f"{where}: `tp-vgg` with no command")


@functools.lru_cache(maxsize=1)
def make_targets() -> frozenset:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return frozenset(m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


def check_parse(block: Block) -> int:
    """A ``parse`` block: compiled (Python), or bash -n and every tp-vgg command parsed (shell).
    Returns how many commands it checked."""
    if block.is_python:
        try:
            compile(block.text, block.where, "exec")
        except SyntaxError as e:
            raise DocCheckError(f"{block.path}:{block.line + (e.lineno or 0)}: {e.msg}")
        return 1
    if block.lang != "console":
        r = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
        if r.returncode != 0:
            raise DocCheckError(f"{block.where}: bash -n: {r.stderr.strip()}")
    n = 0
    for cmd in commands(block):
        where = f"{block.path}:{cmd.line}"
        if cmd.kind == "make":
            missing = [t for t in cmd.args if "=" not in t and t not in make_targets()]
            if missing:
                raise DocCheckError(f"{where}: `{cmd.text}`: no target {', '.join(missing)} in "
                                    f"the Makefile (targets: {', '.join(sorted(make_targets()))})")
        elif cmd.kind == "python-file":
            script = ROOT / cmd.args[0]
            if not script.is_file():
                raise DocCheckError(f"{where}: `{cmd.text}`: no file {cmd.args[0]} in the repository")
            try:
                compile(script.read_text(encoding="utf-8"), str(script), "exec")
            except SyntaxError as e:
                raise DocCheckError(f"{where}: {cmd.args[0]}:{e.lineno}: {e.msg}")
        elif cmd.kind == "python-c":
            try:
                compile(cmd.args[0], where, "exec")
            except SyntaxError as e:
                raise DocCheckError(f"{where}: python -c: {e.msg}")
        else:
            parse_command(cmd.args, where)
        n += 1
    return n


def run_env(tmp: Path) -> Dict[str, str]:
    """This environment's tp-vgg and python first on PATH, torch on one thread, caches and
    plots kept inside ``tmp``."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env.update(PATH=bindir + os.pathsep + env.get("PATH", ""), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", TP_VGG_CACHE=str(tmp / ".cache"), MPLBACKEND="Agg",
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    return env


def check_run(block: Block, tmp: Path, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """A ``run`` block, run as written in ``tmp``; a :class:`DocCheckError` unless it exits 0."""
    if block.is_python:
        script = tmp / "block.py"
        script.write_text(block.text + "\n", encoding="utf-8")
        argv = [sys.executable, str(script)]
    else:
        script = tmp / "block.sh"
        script.write_text("set -euo pipefail\n" + block.text + "\n", encoding="utf-8")
        argv = ["bash", str(script)]
    try:
        r = subprocess.run(argv, cwd=tmp, env=run_env(tmp), capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DocCheckError(f"{block.where}: did not finish in {timeout:.0f} s; a run block must "
                            "take seconds (mark it parse)")
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().split("\n")[-15:])
        raise DocCheckError(f"{block.where}: exited {r.returncode}:\n{tail}")
    return r


# -- headings and links -----------------------------------------------------------------------

def headings(text: str) -> List[Tuple[int, str]]:
    """(level, text) of every ATX heading outside fenced blocks."""
    out = []
    for _, line in _outside_fences(text):
        h = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if h:
            out.append((len(h.group(1)), h.group(2)))
    return out


def _outside_fences(text: str) -> Iterator[Tuple[int, str]]:
    """(line number, line) of every line outside fenced blocks (and not a fence)."""
    fence = None
    for n, line in enumerate(text.split("\n"), 1):
        m = _FENCE.match(line)
        if m and fence is None:
            fence = m.group("fence")[0]
            continue
        if m and fence is not None and m.group("fence")[0] == fence and not m.group("info").strip():
            fence = None
            continue
        if fence is None:
            yield n, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    s = re.sub(r"[^\w\- ]", "", s.lower())
    return s.replace(" ", "-")


def anchors(text: str) -> List[str]:
    seen: Dict[str, int] = {}
    out = []
    for _, h in headings(text):
        a = slug(h)
        if a in seen:
            seen[a] += 1
            a = f"{a}-{seen[a]}"
        else:
            seen[a] = 0
        out.append(a)
    return out


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def links(text: str) -> List[Tuple[int, str]]:
    """(line, target) of every Markdown link outside fenced blocks and inline code."""
    out = []
    for n, line in _outside_fences(text):
        for t in _LINK.findall(re.sub(r"`[^`]*`", "", line)):
            out.append((n, t))
    return out
