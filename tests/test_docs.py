"""README.md and docs/*.md say what the code does: every shell and Python block is marked and
checked (run at a tiny size, or parsed by the command line's own parser), README stays the front
door (at most 250 lines), no section of the old 756-line README was lost in the move to docs/,
and every relative link lands on a file and heading that exist.

The marking convention is in tests/docs_blocks.py (and README's "The docs are tested")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import docs_blocks as db
from docs_blocks import Block, DocCheckError

ROOT = db.ROOT
README_MAX_LINES = 250

BLOCKS = db.all_blocks()
CHECKED = [b for b in BLOCKS if b.mode in ("run", "parse") and b.example is None]

# The `##`/`###` headings of README.md before it was split into docs/ (`git show
# 97d0e7a:README.md | grep '^##'`): each must still be a heading in README.md or docs/*.md.
OLD_README_HEADINGS = [
    "Two commands",
    "Quick start",
    "Models",
    "The VGG inside your network: detectors, segmenters, heads, GANs",
    "Your weights, input sizes and data",
    "Pruning options (`tp-vgg prune`)",
    "The checkpoint format",
    "Loading checkpoints safely",
    "Sharing a pruned model",
    "Training, fine-tuning and recovering accuracy",
    "Pruning methods",
    "Which method at my budget (measured)",
    "Speed, export and reports",
    "Prune to a latency budget",
    "Library",
    "How the code is organized",
    "Errors",
    "Troubleshooting",
    "Your input",
    "Checkpoints",
    "Data, memory, disk, Ctrl-C",
    "Your own VGG: what torch-pruning can and cannot follow",
]

# Pages linked before they are written (remove a name once its page lands; from then on the link
# is checked like any other).
PENDING_PAGES = {"docs/tutorial.md"}


@pytest.mark.parametrize("block", CHECKED, ids=[b.id for b in CHECKED])
def test_block(block: Block, tmp_path):
    """Each ``run`` block runs as written; each ``parse`` block parses (see docs_blocks)."""
    if block.mode == "run":
        db.check_run(block, tmp_path)
    else:
        assert db.check_parse(block) > 0 or block.is_python, (
            f"{block.where}: a parse block with no tp-vgg command in it; mark it no-check: WHY")


def test_every_block_is_marked():
    """No shell or Python block (and no bare block of tp-vgg commands) is left unchecked."""
    assert BLOCKS, "no fenced blocks found in README.md and docs/"
    bad = db.unmarked(BLOCKS)
    assert not bad, "unmarked blocks:\n" + "\n".join(bad)


def test_readme_examples_are_run_by_test_job():
    """A ``<!-- readme-example: NAME -->`` block is the one tests/test_job.py runs: that test
    names it and reads the file it is in."""
    test_job = (ROOT / "tests" / "test_job.py").read_text(encoding="utf-8")
    examples = [b for b in BLOCKS if b.example is not None]
    assert examples, "README.md lost its readme-example blocks (tests/test_job.py runs them)"
    for b in examples:
        assert b.lang == "python", f"{b.where}: a readme-example block must be ```python"
        assert f"readme-example: {b.example}" in test_job, (
            f"{b.where}: tests/test_job.py does not run readme-example {b.example!r}")
        assert Path(b.path).name in test_job, (
            f"{b.where}: tests/test_job.py does not read {b.path}")


def test_readme_is_the_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, more than {README_MAX_LINES}: move reference to docs/")


def test_no_old_readme_section_was_lost():
    found = set()
    for f in db.doc_files():
        found |= {h for _, h in db.headings(f.read_text(encoding="utf-8"))}
    missing = [h for h in OLD_README_HEADINGS if h not in found]
    assert not missing, f"headings of the old README found in no page: {missing}"


def test_relative_links_resolve():
    """Every relative link of README.md and docs/*.md names a file that exists and, with
    ``#anchor``, a heading of that file (GitHub's anchors)."""
    bad = []
    for f in db.doc_files():
        rel = f.relative_to(ROOT).as_posix()
        for line, target in db.links(f.read_text(encoding="utf-8")):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (f.parent / path).resolve() if path else f
            dest_rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
            if not dest.exists():
                if dest_rel not in PENDING_PAGES:
                    bad.append(f"{rel}:{line}: {target}: no file {dest_rel}")
                continue
            if anchor and dest.suffix == ".md" and anchor not in db.anchors(
                    dest.read_text(encoding="utf-8")):
                bad.append(f"{rel}:{line}: {target}: no heading with anchor #{anchor} in {dest_rel}")
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {t.partition("#")[0] for _, t in db.links(readme)}
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set(), f"docs pages README.md does not link: {sorted(pages - linked)}"


# -- the checks themselves --------------------------------------------------------------------

def synthetic(text: str, info: str = "sh parse", path: str = "synthetic.md", line: int = 10) -> Block:
    lang, mode, reason = db.parse_info(info)
    return Block(path, line, lang, mode, reason, text)


def test_a_wrong_flag_fails_the_parse_check():
    """A renamed or mistyped flag breaks the test, naming the file and line of the command."""
    with pytest.raises(DocCheckError, match=r"^synthetic\.md:11: .*does not parse"):
        db.check_parse(synthetic("tp-vgg prune --no-such-flag 1"))
    with pytest.raises(DocCheckError, match=r"unrecognized arguments: --no-such-flag"):
        db.check_parse(synthetic("tp-vgg prune --model vgg11 --out runs/x --no-such-flag 1"))
    with pytest.raises(DocCheckError, match=r"invalid choice: 'l7'"):
        db.check_parse(synthetic("tp-vgg prune --checkpoint CK --importance l7 --out DIR"))
    with pytest.raises(DocCheckError, match=r"invalid choice: 'no-such-command'"):
        db.check_parse(synthetic("tp-vgg no-such-command"))


def test_the_parse_check_reads_commands_as_the_shell_does():
    """Continuations, variables, placeholders, ``...``, torchrun and ``python -m tp_vgg``; the
    line reported is the command's first."""
    block = synthetic("\n".join([
        "# a comment with an apostrophe's worth",
        'CK=runs/base/last.pt',
        'DATA="--data digits --finetune-epochs 1"',
        "tp-vgg prune --checkpoint $CK --ratio 0.5 \\",
        "    $DATA --out DIR              # 4x fewer MACs",
        "torchrun --nproc_per_node=2 $(which tp-vgg) train --model cifar_vgg11 --out runs/t ...",
        "mkdir -p data && python -m tp_vgg profile --model cifar_vgg11_bn --width 0.25 | tail -3",
        "python -c \"import tp_vgg; print(tp_vgg.__version__)\"",
        "tp-vgg prune --model tests/li2017_vgg16.py:vgg16 --ratio 0 --out runs/li --layer-ratios \\",
        "  '{\"features.conv1\": 0.5,",
        "    \"features.conv8\": 0.5}'",
    ]))
    cmds = db.commands(block)
    assert [(c.line, c.kind) for c in cmds] == [
        (14, "tp-vgg"), (16, "tp-vgg"), (17, "tp-vgg"), (18, "python-c"), (19, "tp-vgg")]
    assert cmds[0].args == ["prune", "--checkpoint", "runs/base/last.pt", "--ratio", "0.5",
                            "--data", "digits", "--finetune-epochs", "1", "--out", "runs/dir"]
    assert cmds[1].args[-2:] == ["--out", "runs/t"]  # "..." dropped
    assert cmds[2].args[:1] == ["profile"] and "tail" not in cmds[2].args
    assert db.check_parse(block) == 5
    bad = synthetic("x=1\ntp-vgg prune --model vgg11 \\\n   --ratio 1.5 --out o")
    with pytest.raises(DocCheckError, match=r"^synthetic\.md:12: .*--ratio"):
        db.check_parse(bad)


def test_loops_scripts_and_make_targets_are_checked():
    loop = synthetic("\n".join([
        'D="--data digits"',
        "for c in l1 l2 random; do",
        "  tp-vgg prune --model vgg11 --importance $c $D \\",
        "    --out runs/$c",
        "done",
    ]))
    cmds = db.commands(loop)
    assert [(c.line, c.args[4], c.args[-1]) for c in cmds] == [
        (13, "l1", "runs/l1"), (13, "l2", "runs/l2"), (13, "random", "runs/random")]
    with pytest.raises(DocCheckError, match=r"^synthetic\.md:13: .*invalid choice: 'l9'"):
        db.check_parse(synthetic("for c in l1 l9\ndo\n  tp-vgg prune --model vgg11 --importance $c --out o\ndone"))
    assert db.check_parse(synthetic("python tests/docs_blocks.py --flag\nmake demo test")) == 2
    with pytest.raises(DocCheckError, match=r"no file examples/no_such\.py"):
        db.check_parse(synthetic("python examples/no_such.py --smoke"))
    with pytest.raises(DocCheckError, match=r"no target no-such-target in the Makefile"):
        db.check_parse(synthetic("make no-such-target"))


def test_the_run_check_fails_a_failing_block(tmp_path):
    with pytest.raises(DocCheckError, match=r"^synthetic\.md:10: exited 2"):
        db.check_run(synthetic("tp-vgg prune --model vgg99 --out o", "sh run"), tmp_path)
    with pytest.raises(DocCheckError, match=r"exited 1"):
        db.check_run(synthetic("raise SystemExit(1)", "python run"), tmp_path)


def test_unmarked_blocks_are_found():
    text = "\n".join(["```sh", "tp-vgg models", "```", "```", "tp-vgg models", "```",
                      "```text", "output", "```", "```sh no-check", "x", "```",
                      "```sh no-check: needs a GPU", "x", "```"])
    bad = db.unmarked(db.blocks_of(text, "t.md"))
    assert [b.split(":")[1] for b in bad] == ["1", "4", "10"]
