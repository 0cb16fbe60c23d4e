"""The bad-input audit: one test per mistake a user makes, through the command line.

Every case: exit code 2 (130 for Ctrl-C), exactly one line on stderr naming the bad value and
what is accepted, no traceback (``--debug`` shows it), and nothing half-written in ``--out``.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import tp_vgg
from tp_vgg.checkpoint import store as checkpoint
from tp_vgg.models.zoo import ModelSpec, build_model

TINY = ["--model", "cifar_vgg11", "--width", "0.125"]
FAKE = ["--data", "fake", "--data-kwargs", '{"train_size": 32, "test_size": 16}']
QUIET = ["--progress", "none", "--threads", "1"]



FACTORIES = '''
import torch.nn as nn
def make(num_classes=10, width=8):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))
def broken(**kw):
    raise ValueError("no such depth")
def not_a_model(**kw):
    return "a string"
'''


def assert_user_error(r, out: Path | None, *phrases: str, code: int = 2) -> str:
    """Exit ``code``, exactly one stderr line holding every phrase, no traceback, and nothing
    half-written: ``out`` is absent or empty (or holds only complete files, see below)."""
    assert r.code == code, (r.code, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert "Traceback" not in r.err
    for p in phrases:
        assert p in lines[0], (p, lines[0])
    if out is not None:
        assert_nothing_partial(out)
    return lines[0]


def assert_nothing_partial(out: Path, allowed=()) -> None:
    if not out.exists():
        return
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert not [f for f in left if f.endswith(".tmp") or "/." in "/" + f], left  # no temp files
    assert [f for f in left if f not in allowed] == [], left


@pytest.fixture
def factory_file(tmp_path) -> Path:
    path = tmp_path / "my_vgg.py"
    path.write_text(FACTORIES)
    return path


@pytest.fixture(scope="module")
def pruned_ckpt(tmp_path_factory) -> Path:
    """A small pruned tp-vgg checkpoint (cifar_vgg11 at width 1/8, ratio 0.5, 10 classes)."""
    spec = ModelSpec("cifar_vgg11", width=0.125, num_classes=10).resolved()
    model = build_model(spec)
    result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))
    path = tmp_path_factory.mktemp("ckpt") / "pruned.pt"
    tp_vgg.save(str(path), model, spec, history=result.history)
    return path


def prune(run_cli, out, *args):
    return run_cli("prune", *args, "--out", out)


# --- the model ------------------------------------------------------------------------------

def test_unknown_model(run_cli, tmp_path):
    r = prune(run_cli, tmp_path / "o", "--model", "vgg99", "--ratio", "0.5")
    assert_user_error(r, tmp_path / "o", "unknown model 'vgg99'; accepted: vgg11, vgg11_bn",
                      "cifar_vgg19_bn")


def test_unknown_model_file(run_cli, tmp_path):
    r = prune(run_cli, tmp_path / "o", "--model", f"{tmp_path}/nope.py:make", "--ratio", "0.5")
    assert_user_error(r, tmp_path / "o", "model file", "nope.py", "does not exist")


def test_factory_that_raises(run_cli, tmp_path, factory_file):
    r = prune(run_cli, tmp_path / "o", "--model", f"{factory_file}:broken", "--ratio", "0.5")
    assert_user_error(r, tmp_path / "o", f"factory '{factory_file}:broken' raised ValueError: no such depth")


def test_factory_that_returns_something_else(run_cli, tmp_path, factory_file):
    r = prune(run_cli, tmp_path / "o", "--model", f"{factory_file}:not_a_model", "--ratio", "0.5")
    assert_user_error(r, tmp_path / "o", "returned str, not a torch.nn.Module")


def test_factory_file_that_does_not_import(run_cli, tmp_path):
    bad = tmp_path / "bad_syntax.py"
    bad.write_text("def make(:\n")
    r = prune(run_cli, tmp_path / "o", "--model", f"{bad}:make", "--ratio", "0.5")
    assert_user_error(r, tmp_path / "o", "importing", "bad_syntax.py", "failed: SyntaxError")


def test_factory_missing_in_module(run_cli, tmp_path, factory_file):
    r = prune(run_cli, tmp_path / "o", "--model", f"{factory_file}:nope", "--ratio", "0.5")
    assert_user_error(r, tmp_path / "o", "has no callable 'nope'")


def test_model_kwargs_the_factory_does_not_take(run_cli, tmp_path, factory_file):
    r = prune(run_cli, tmp_path / "o", "--model", f"{factory_file}:make", "--ratio", "0.5",
              "--model-kwargs", '{"depth": 3}')
    assert_user_error(r, tmp_path / "o", "raised TypeError", "'depth'")


# --- JSON and ratios ------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--model-kwargs", "--layer-ratios"])
def test_malformed_json(run_cli, tmp_path, flag):
    r = prune(run_cli, tmp_path / "o", *TINY, "--ratio", "0.5", flag, "{features.0: 0.5")
    assert_user_error(r, tmp_path / "o", f"argument {flag}: malformed JSON '{{features.0: 0.5'",
                      "accepted: a JSON object")


@pytest.mark.parametrize("flag", ["--model-kwargs", "--layer-ratios"])
def test_json_that_is_not_an_object(run_cli, tmp_path, flag):
    r = prune(run_cli, tmp_path / "o", *TINY, "--ratio", "0.5", flag, "[0.5]")
    assert_user_error(r, tmp_path / "o", "is JSON but not an object")


@pytest.mark.parametrize("value,phrase", [
    ("1.5", "'1.5' is outside [0, 1)"), ("1", "'1' is outside [0, 1)"),
    ("-0.1", "'-0.1' is outside [0, 1)"), ("nan", "'nan' is outside [0, 1)"),
    ("half", "'half' is not a number"),
])
def test_ratio_out_of_range(run_cli, tmp_path, value, phrase):
    r = prune(run_cli, tmp_path / "o", *TINY, "--ratio", value)
    assert_user_error(r, tmp_path / "o", f"argument --ratio: {phrase}; accepted: a number in [0, 1)")


def test_max_layer_ratio_out_of_range(run_cli, tmp_path):
    r = prune(run_cli, tmp_path / "o", *TINY, "--ratio", "0.5", "--global", "--max-layer-ratio", "2")
    assert_user_error(r, tmp_path / "o", "--max-layer-ratio: '2' is outside [0, 1)")


@pytest.mark.parametrize("value,phrase", [
    ('{"features.0": 1.5}', "--layer-ratios['features.0'] must be a number in [0, 1), got 1.5"),
    ('{"features.0": "half"}', "--layer-ratios['features.0'] must be a number in [0, 1), got 'half'"),
])
def test_layer_ratio_out_of_range(run_cli, tmp_path, value, phrase):
    r = prune(run_cli, tmp_path / "o", *TINY, "--ratio", "0.5", "--layer-ratios", value)
    assert_user_error(r, tmp_path / "o", phrase)


def test_layer_ratio_for_a_missing_layer(run_cli, tmp_path):
    r = prune(run_cli, tmp_path / "o", *TINY, "--ratio", "0.5", "--layer-ratios", '{"features.99": 0.5}')
    assert_user_error(r, tmp_path / "o", "--layer-ratios names 'features.99', which is not a module",
                      "prunable layers: features.0")


def test_ratio_that_would_empty_a_layer(run_cli, tmp_path):
    r = prune(run_cli, tmp_path / "o", *TINY, "--ratio", "0.95")
    assert_user_error(r, tmp_path / "o", "ratio 0.95 would leave layer 'features.0' with 0 of its 8 channels",
                      "give it at most 0.875 with --layer-ratios '{\"features.0\": 0.875}'")


# --- checkpoints ----------------------------------------------------------------------------

def _bad_file(tmp_path: Path, kind: str, good: Path) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "junk":
        path.write_bytes(os.urandom(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "state_dict":
        torch.save(nn.Linear(2, 2).state_dict(), path)
    elif kind == "other_tool":
        torch.save({"epoch": 3, "model_state_dict": nn.Linear(2, 2).state_dict(), "acc": 0.9}, path)
    elif kind == "pickled_module":
        torch.save(nn.Sequential(nn.Linear(2, 2)), path)
    elif kind == "plain_pickle":  # pickle.dump, protocol 4: torch warns before failing
        with open(path, "wb") as f:
            pickle.dump({"weights": [0.5, 0.25]}, f, protocol=4)
    elif kind == "newer_format":
        raw = torch.load(good, weights_only=True)
        raw["format_version"] = 99
        torch.save(raw, path)
    return path


CHECKPOINTS = {
    "missing": "does not exist",
    "truncated": "is corrupt, truncated or not a PyTorch file",
    "junk": "is corrupt, truncated or not a PyTorch file",
    "empty": "is corrupt, truncated or not a PyTorch file",
    "state_dict": "is not a tp-vgg checkpoint (it holds a plain state_dict)",
    "other_tool": "is not a tp-vgg checkpoint (it holds a dict)",
    "pickled_module": "holds pickled Python objects",
    "plain_pickle": "is corrupt, truncated or not a PyTorch file",
    "newer_format": "has format version 99, newer than this tp-vgg reads (1); upgrade tp-vgg",
}


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
@pytest.mark.parametrize("command", ["prune", "profile"])
def test_bad_checkpoint(run_cli, tmp_path, pruned_ckpt, kind, command):
    path = _bad_file(tmp_path, kind, pruned_ckpt)
    args = ["--checkpoint", path] + (["--ratio", "0.5", "--out", tmp_path / "o"] if command == "prune" else [])
    line = assert_user_error(run_cli(command, *args), tmp_path / "o", f"checkpoint '{path}'",
                             CHECKPOINTS[kind])
    if kind == "pickled_module":
        assert "never unpickles them, since unpickling runs arbitrary code" in line


# A changed model file is refused by its SHA-256 (tests/test_untrusted.py); with
# --allow-changed-model-code the build goes on, and these are what catches a real change then.
CHANGED = ["--trust-model-code", "--allow-changed-model-code"]


def test_checkpoint_of_a_different_architecture(run_cli, tmp_path, factory_file):
    """The model file changed since the checkpoint was written (width 8 -> 12)."""
    assert prune(run_cli, tmp_path / "a", "--model", f"{factory_file}:make", "--ratio", "0.5").code == 0
    factory_file.write_text(FACTORIES.replace("width=8", "width=12"))
    r = prune(run_cli, tmp_path / "b", "--checkpoint", tmp_path / "a" / "pruned.pt", *CHANGED,
              "--ratio", "0.5")
    assert_user_error(r, tmp_path / "b", "does not match its model's architecture")


def test_checkpoint_whose_history_no_longer_fits(run_cli, tmp_path, factory_file):
    """The model file changed so much that the pruned layer no longer exists."""
    assert prune(run_cli, tmp_path / "a", "--model", f"{factory_file}:make", "--ratio", "0.5").code == 0
    factory_file.write_text(FACTORIES.replace("nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), ", ""
                                              ).replace("nn.Linear(width,", "nn.Linear(3,"))
    r = prune(run_cli, tmp_path / "b", "--checkpoint", tmp_path / "a" / "pruned.pt", *CHANGED,
              "--ratio", "0.5")
    assert_user_error(r, tmp_path / "b", f"checkpoint '{tmp_path / 'a' / 'pruned.pt'}'",
                      "does not fit the model", "changed since the checkpoint was written")


def test_checkpoint_with_another_class_count_than_the_data(run_cli, tmp_path, pruned_ckpt):
    r = run_cli("eval", "--checkpoint", pruned_ckpt, "--data", "fake", "--data-kwargs",
                '{"train_size": 16, "test_size": 16, "num_classes": 5}')
    assert_user_error(r, None, "10 outputs", "5 classes")
    r = run_cli("finetune", "--checkpoint", pruned_ckpt, "--data", "fake", "--data-kwargs",
                '{"train_size": 16, "test_size": 16, "num_classes": 5}', *QUIET,
                "--out", tmp_path / "ft")
    assert_user_error(r, tmp_path / "ft", "10 outputs", "5 classes")


def test_model_flags_with_a_checkpoint(run_cli, tmp_path, pruned_ckpt):
    r = prune(run_cli, tmp_path / "o", "--checkpoint", pruned_ckpt, "--num-classes", "5", "--ratio", "0.5")
    assert_user_error(r, tmp_path / "o", "--num-classes cannot be combined with --checkpoint")


# --- data -----------------------------------------------------------------------------------

def _imagefolder(root: Path, layout: str) -> Path:
    from torchvision.io import write_png

    img = (torch.rand(3, 8, 8) * 255).to(torch.uint8)
    if layout == "empty":
        root.mkdir(parents=True)
    elif layout == "flat":  # images directly in train/ and val/, no class folders
        for split in ("train", "val"):
            (root / split).mkdir(parents=True)
            write_png(img, str(root / split / "a.png"))
    elif layout in ("undecodable", "ok"):
        for split in ("train", "val"):
            for c in ("cat", "dog"):
                (root / split / c).mkdir(parents=True)
                write_png(img, str(root / split / c / "1.png"))
        if layout == "undecodable":
            (root / "train" / "dog" / "2.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


@pytest.mark.parametrize("layout,phrase", [
    ("missing", "--data-dir '{root}' does not exist or is not a folder"),
    ("empty", "--data-dir '{root}' has no train/ folder; expected {root}/train/<class>/"),
    ("flat", "'{root}/train' holds no class folders; expected {root}/train/<class>/<image>"),
    ("undecodable", "cannot decode image '{root}/train/dog/2.jpg'"),
])
@pytest.mark.parametrize("command", ["eval", "finetune"])
def test_bad_data_directory(run_cli, tmp_path, pruned_ckpt, layout, phrase, command):
    root = tmp_path / "data"
    if layout != "missing":
        _imagefolder(root, layout)
    extra = [*QUIET, "--out", tmp_path / "ft"] if command == "finetune" else []
    r = run_cli(command, "--checkpoint", pruned_ckpt, "--data", "imagefolder", "--data-dir", root, *extra)
    assert_user_error(r, tmp_path / "ft", phrase.format(root=root))


def test_cifar_not_downloaded(run_cli, tmp_path, pruned_ckpt):
    r = run_cli("eval", "--checkpoint", pruned_ckpt, "--data", "cifar10", "--data-dir", tmp_path)
    assert_user_error(r, None, "cifar10 is not in --data-dir", "pass --download")


# --- resources: memory, the output folder ----------------------------------------------------

def test_out_of_memory_names_the_batch_size_and_suggests_one(run_cli, tmp_path, pruned_ckpt, monkeypatch):
    import tp_vgg.train.loop

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tp_vgg.train.loop, "train_one_epoch", oom)
    out = tmp_path / "ft"
    r = run_cli("finetune", "--checkpoint", pruned_ckpt, *FAKE, *QUIET, "--batch-size", "64", "--out", out)
    assert_user_error(r, None, "out of memory at --batch-size 64", "try --batch-size 32",
                      "Tried to allocate 2.00 GiB")
    assert_nothing_partial(out, allowed=("config.json",))  # written whole before training


def test_cpu_out_of_memory_during_eval(run_cli, tmp_path, pruned_ckpt, monkeypatch):
    import tp_vgg.train.evaluation

    def oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 8589934592 bytes.")

    monkeypatch.setattr(tp_vgg.train.evaluation, "evaluate", oom)
    r = run_cli("eval", "--checkpoint", pruned_ckpt, *FAKE, "--batch-size", "512")
    assert_user_error(r, None, "out of memory at --batch-size 512", "try --batch-size 256")


def test_out_is_a_file(run_cli, tmp_path):
    f = tmp_path / "taken"
    f.write_text("mine")
    r = prune(run_cli, f, *TINY, "--ratio", "0.5")
    assert_user_error(r, None, f"--out '{f}' is a file; give a folder")
    assert f.read_text() == "mine"


def test_out_under_a_file(run_cli, tmp_path):
    f = tmp_path / "taken"
    f.write_text("mine")
    r = prune(run_cli, f / "sub", *TINY, "--ratio", "0.5")
    assert_user_error(r, None, f"cannot create output folder '{f / 'sub'}'", "Not a directory")


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def test_read_only_out(run_cli, tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    if _is_root() or os.access(out, os.W_OK):  # root writes anyway: make the write itself fail
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    try:
        r = prune(run_cli, out, *TINY, "--ratio", "0.5")
        assert_user_error(r, out, f"cannot write '{out / 'pruned.pt'}'",
                          os.strerror(errno.EROFS) if _is_root() else "Permission denied")
    finally:
        out.chmod(0o755)


def test_disk_full_while_writing_the_checkpoint(run_cli, tmp_path, monkeypatch):
    """torch.save on a full disk writes part of the file, then raises a RuntimeError (what
    torch 2.x does on /dev/full): the temp file goes, nothing is renamed, one line says why."""
    real_save = torch.save

    def save_on_full_disk(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", save_on_full_disk)
    out = tmp_path / "full"
    r = prune(run_cli, out, *TINY, "--ratio", "0.5")
    monkeypatch.setattr(torch, "save", real_save)
    assert_user_error(r, out, f"cannot write '{out / 'pruned.pt'}'", "torch.save failed",
                      "is the disk full?")


def test_disk_full_while_writing_the_report(run_cli, tmp_path, monkeypatch):
    """ENOSPC surfacing at fsync of report.json: neither file is left (pruned.pt, written first,
    is only renamed into place after the report), nor any temp file."""
    real_fsync = os.fsync

    def fsync(fd):
        if "report.json" in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "full"
    r = prune(run_cli, out, *TINY, "--ratio", "0.5")
    assert_user_error(r, out, f"cannot write '{out / 'report.json'}'", "No space left on device")


def test_debug_shows_the_traceback(run_cli, tmp_path):
    r = prune(run_cli, tmp_path / "o", "--model", "vgg99", "--ratio", "0.5", "--debug")
    assert r.code == 2 and "Traceback" in r.err and r.err.strip().splitlines()[-1].startswith("tp-vgg: error:")


CHILD = r"""
import contextlib, io, json, sys
from tp_vgg.cli import main
out = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    out[name] = [code, err.getvalue()]
print(json.dumps(out))
"""


def test_no_warning_reaches_the_terminal(tmp_path, pruned_ckpt):
    """In a plain process (no pytest warning capture), a bad input still prints one line: torch's
    and torch-pruning's warnings do not leak to stderr."""
    users = Path(__file__).parent / "user_models"
    cases = {kind: ["profile", "--checkpoint", str(_bad_file(tmp_path, kind, pruned_ckpt))]
             for kind in ("plain_pickle", "pickled_module", "junk", "truncated", "state_dict")}
    cases.update({
        name: ["prune", "--model", f"{users / name}.py:make", "--ratio", "0.3", "--out",
               str(tmp_path / name)]
        for name in ("unsupported_view_width", "unsupported_bare_param", "unsupported_channel_mean",
                     "unsupported_no_modules", "unsupported_no_grad")})
    cases["no data"] = ["eval", "--checkpoint", str(pruned_ckpt), "--data", "imagefolder",
                        "--data-dir", str(tmp_path / "none")]
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], env=_env(), cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    for name, (code, err) in json.loads(p.stdout).items():
        assert code == 2 and len(err.strip().splitlines()) == 1, (name, err)
        assert err.startswith("tp-vgg: error: "), (name, err)


# --- Ctrl-C during fine-tuning ---------------------------------------------------------------

def _env():
    root = os.path.dirname(os.path.dirname(os.path.abspath(tp_vgg.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    return env


def test_ctrl_c_during_finetuning_keeps_a_resumable_checkpoint(run_cli, tmp_path, pruned_ckpt):
    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "tp_vgg", "finetune", "--checkpoint", str(pruned_ckpt),
           "--data", "fake", "--data-kwargs", '{"train_size": 2048, "test_size": 16}',
           "--epochs", "4", "--batch-size", "16", "--progress", "plain", "--threads", "1",
           "--device", "cpu", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("epoch 1/4"):  # printed after last.pt of epoch 1 is written
                time.sleep(0.3)
                proc.send_signal(signal.SIGINT)
                break
        rest, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    if "final test" in rest:  # the signal came after the run had ended: a very loaded machine
        pytest.skip("SIGINT arrived after the last epoch; the machine is too loaded")
    assert proc.returncode == 130, (proc.returncode, err, rest)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    last = out / "last.pt"
    assert re.fullmatch(  # it stops at the next step: last.pt holds that step
        rf"tp-vgg: interrupted; {re.escape(str(last))} \(stopped at epoch \d/4, step \d+/128\) is "
        rf"kept: continue with tp-vgg finetune --resume {re.escape(str(last))}", lines[0]), lines[0]
    assert_nothing_partial(out, allowed=("config.json", "last.pt", "best.pt", "metrics.jsonl"))
    done = checkpoint.load_checkpoint(str(last)).train_state["epoch"]
    assert 1 <= done < 4
    r = run_cli("finetune", "--resume", last, "--progress", "plain", "--threads", "1")
    assert r.code == 0, r.err
    assert f"resuming {last} after epoch {done}/4" in r.out
    assert checkpoint.load_checkpoint(str(last)).train_state["epoch"] == 4
