"""A checkpoint is data, never code: crafted checkpoints run nothing they name.

Every file is read with ``torch.load(weights_only=True)``, so no pickle runs; what remains is the
model spec, which names the builder. A zoo name is rebuilt from tp-vgg's registry with every
argument checked (types, ranges, the size it would allocate); a user factory
(``package.module:callable`` or ``file.py:callable``) is code and is built only with consent
(``--trust-model-code`` / ``trust_model_code=True``, or ``--model`` naming the user's own copy),
and only as it was when the checkpoint was written (a file's SHA-256, a package's version).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from test_audit import assert_nothing_partial, assert_user_error

import tp_vgg
from tp_vgg import UserError
from tp_vgg.cli import main as cli_main
from tp_vgg.models.zoo import MODELS, ModelSpec, build_model

FAKE = ["--data", "fake", "--data-kwargs", '{"train_size": 32, "test_size": 16}']
QUIET = ["--progress", "none", "--threads", "1"]
EVIL_FILE = '''
open({canary!r}, "w").write("ran on import")
import torch.nn as nn


def make(**kwargs):
    open({canary!r}, "w").write("ran on call")
    return nn.Linear(2, 2)
'''
USER_FILE = '''
import torch.nn as nn


def make(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, num_classes))


def other(num_classes=10):
    return make(num_classes)
'''


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Real files to craft from: a pruned zoo checkpoint and a last.pt with training state."""
    d = tmp_path_factory.mktemp("base")
    assert cli_main(["prune", "--model", "cifar_vgg11", "--width", "0.125", "--ratio", "0.5",
                     "--out", str(d / "p")]) == 0
    assert cli_main(["train", "--model", "cifar_vgg11", "--width", "0.125", *FAKE, *QUIET,
                     "--epochs", "1", "--out", str(d / "t")]) == 0
    return {"pruned": d / "p" / "pruned.pt", "last": d / "t" / "last.pt"}


def craft(src: Path, dst: Path, spec: dict) -> Path:
    """``src`` with its model spec replaced by ``spec`` (and no code record)."""
    raw = torch.load(src, weights_only=True)
    raw["model_spec"] = spec
    raw.pop("model_code", None)
    torch.save(raw, dst)
    return dst


# name -> (spec, phrases of the one-line error). {canary}, {victim}, {evil} are filled per test.
CODE = {
    "subprocess:getoutput": ({"name": "subprocess:getoutput", "kwargs": {"cmd": "touch {canary}"}},
                             ["would import module 'subprocess' and call getoutput(cmd='touch "]),
    "os:system": ({"name": "os:system", "kwargs": {"command": "touch {canary}"}},
                  ["would import module 'os' and call system(command='touch "]),
    "builtins:exec": ({"name": "builtins:exec", "kwargs": {"source": "open('{canary}', 'w')"}},
                      ["would import module 'builtins' and call exec(source="]),
    "shutil:rmtree": ({"name": "shutil:rmtree", "kwargs": {"path": "{victim}"}},
                      ["would import module 'shutil' and call rmtree(path='"]),
    "file.py that writes on import": ({"name": "{evil}:make", "num_classes": 10},
                                      ["would import file '{evil}' and call make(num_classes=10)"]),
}
ZOO = {
    "zoo name with an extra kwarg": (
        {"name": "cifar_vgg11", "width": 0.125, "kwargs": {"hidden": 16, "cmd": "touch {canary}"}},
        ["bad --model-kwargs for cifar_vgg11: 'cmd' is not accepted; accepted: hidden (an integer"]),
    "torchvision name with an extra kwarg": (
        {"name": "vgg11", "kwargs": {"features": "x"}},
        ["bad --model-kwargs for vgg11: 'features' is not accepted; accepted: dropout"]),
    "absurd width": ({"name": "cifar_vgg11", "width": 1e6},
                     ["cifar_vgg11 with --width 1000000.0 would have", "more than tp-vgg builds"]),
    "absurd class count": ({"name": "vgg11", "num_classes": 10**10},
                           ["vgg11 with --num-classes 10000000000 would have", "parameters"]),
    "absurd hidden layer": ({"name": "cifar_vgg11", "width": 0.125, "kwargs": {"hidden": 10**9}},
                            ["hidden must be an integer in [1, 1048576], got 1000000000"]),
    "absurd input size": ({"name": "cifar_vgg11", "width": 0.125, "input_size": 10**6},
                          ["would compute", "values per image", "a smaller --input-size"]),
    "a width that is not a number": ({"name": "cifar_vgg11", "width": "wide"},
                                     ["--width must be > 0, got 'wide'"]),
    "weights that are not torchvision's": ({"name": "vgg11", "weights": "../../evil"},
                                           ["--weights '../../evil' is not a weight of vgg11"]),
    "a name that is not a string": ({"name": ["subprocess", "getoutput"]},
                                    ["the model name must be a non-empty string"]),
    "a timm name that is not a VGG": ({"name": "timm:resnet50"},
                                      ["'timm:resnet50' is not one of timm's VGGs",
                                       "accepted: timm:vgg11, timm:vgg11_bn"]),
    "a timm VGG asking for timm's download": (
        {"name": "timm:vgg11", "kwargs": {"pretrained": True}},
        ["bad --model-kwargs for timm:vgg11: 'pretrained' is not accepted; accepted: mlp_ratio"]),
}
CASES = {**CODE, **ZOO}


def _fill(obj, **values):
    if isinstance(obj, str):
        return obj.format(**values)
    if isinstance(obj, dict):
        return {k: _fill(v, **values) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fill(v, **values) for v in obj)
    return obj


@pytest.fixture
def evil(tmp_path):
    """Where the crafted checkpoints aim: a canary file that must never appear, a folder that
    must survive, and a model file that writes the canary when imported."""
    canary, victim, evil_py = tmp_path / "canary", tmp_path / "victim", tmp_path / "evil_model.py"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    evil_py.write_text(EVIL_FILE.format(canary=str(canary)))
    values = {"canary": str(canary), "victim": str(victim), "evil": str(evil_py)}
    yield values
    assert not canary.exists(), canary.read_text()  # nothing ran
    assert (victim / "keep.txt").read_text() == "mine"


COMMANDS = {
    "profile": lambda ck, t, base: ["profile", "--checkpoint", ck],
    "eval": lambda ck, t, base: ["eval", "--checkpoint", ck, *FAKE],
    "prune": lambda ck, t, base: ["prune", "--checkpoint", ck, "--ratio", "0.5", "--out", t / "o"],
    "export": lambda ck, t, base: ["export", "--checkpoint", ck, "--pt2", t / "o" / "m.pt2"],
    "sensitivity": lambda ck, t, base: ["sensitivity", "--checkpoint", ck, *FAKE, "--out", t / "o"],
    "finetune": lambda ck, t, base: ["finetune", "--checkpoint", ck, *FAKE, *QUIET, "--epochs", "1",
                                     "--out", t / "o"],
    "finetune --teacher": lambda ck, t, base: [
        "finetune", "--checkpoint", base["pruned"], "--distill", "--teacher", ck, *FAKE, *QUIET,
        "--epochs", "1", "--out", t / "o"],
    "train --resume": lambda ck, t, base: ["train", "--resume", ck, "--progress", "none"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(CASES))
def test_a_crafted_checkpoint_runs_nothing(run_cli, tmp_path, base, evil, case, command):
    spec, phrases = _fill(CASES[case], **evil)
    src = base["last"] if command == "train --resume" else base["pruned"]
    ck = craft(src, tmp_path / "crafted.pt", spec)
    (tmp_path / "o").mkdir()
    r = run_cli(*COMMANDS[command](ck, tmp_path, base))
    line = assert_user_error(r, tmp_path / "o", f"checkpoint '{ck}'", *phrases)
    if case in CODE:
        assert "names its model by code" in line and "pass --trust-model-code" in line
    assert_nothing_partial(tmp_path / "o")


@pytest.mark.parametrize("case", list(CASES))
def test_a_crafted_checkpoint_runs_nothing_in_python(tmp_path, base, evil, case):
    spec, phrases = _fill(CASES[case], **evil)
    ck = craft(base["pruned"], tmp_path / "crafted.pt", spec)
    with pytest.raises(UserError) as err:
        tp_vgg.load(str(ck))
    message = str(err.value)
    assert "\n" not in message and all(p in message for p in phrases), message
    if case in CODE:  # reading it is safe (data only); building it is what needs consent
        read = tp_vgg.load_checkpoint(str(ck))
        assert read.spec.name == spec["name"] and not read.trust_model_code
        with pytest.raises(UserError, match="trust_model_code=True"):
            read.build()
        with pytest.raises(UserError, match="trust_model_code=True"):
            read.build_unpruned()


def test_absurd_sizes_are_refused_for_a_model_named_on_the_command_line(run_cli, tmp_path):
    r = run_cli("prune", "--model", "cifar_vgg19_bn", "--width", "64", "--ratio", "0.5",
                "--out", tmp_path / "o")
    assert_user_error(r, tmp_path / "o", "cifar_vgg19_bn with --width 64.0", "would have 8.31e+10 parameters",
                      "more than tp-vgg builds", "accepted: a smaller --width, --num-classes or "
                      "--model-kwargs hidden")
    with pytest.raises(UserError, match="values per image"):
        build_model(ModelSpec("vgg16", input_size=8192))


SIZE_ARGS = {"cifar_": {"width": 0.375, "in_channels": 2, "kwargs": {"hidden": 24}},
             "timm:": {"in_channels": 2, "kwargs": {"mlp_ratio": 0.25, "drop_rate": 0.1}},
             "": {"kwargs": {"dropout": 0.1}}}


@pytest.mark.parametrize("name", MODELS.names())
def test_the_size_check_counts_what_the_builder_builds(name):
    """The size a spec is checked against is the real parameter count (built on the meta device:
    no memory), so the limit refuses exactly what is too big."""
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    spec = ModelSpec(name, num_classes=37, input_size=64,
                     **next(a for p, a in SIZE_ARGS.items() if name.startswith(p))).resolved()
    with torch.device("meta"):
        model = MODELS.get(name).build(spec)
    params, values = MODELS.get(name).size(spec)
    assert params == sum(p.numel() for p in model.parameters())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert values > sum(m.out_channels for m in convs) * 2 * 2  # every conv output counted


def test_a_zoo_checkpoint_imports_nothing_and_downloads_no_weights(tmp_path, monkeypatch):
    """Rebuilt from the registry: no user-factory loading, and torchvision is asked for no
    weights (the checkpoint's own weights replace them)."""
    import tp_vgg.models.zoo as models

    def no_factory(*a, **k):
        raise AssertionError("a zoo checkpoint loaded a factory")

    monkeypatch.setattr(models, "_load_factory", no_factory)
    path = tmp_path / "z.pt"
    spec = ModelSpec("cifar_vgg11_bn", width=0.125).resolved()
    model = build_model(spec)
    tp_vgg.save(str(path), model, spec, history=tp_vgg.prune(model, spec, tp_vgg.PruneConfig(
        ratio=0.5)).history)
    loaded = tp_vgg.load(str(path))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 model.state_dict().values()))
    seen = []
    monkeypatch.setattr(models.torchvision.models, "get_model",
                        lambda name, weights=None, **kw: seen.append(weights) or nn.Linear(2, 2))
    craft(path, tmp_path / "tv.pt", {"name": "vgg11", "weights": "DEFAULT"})
    assert isinstance(tp_vgg.load_checkpoint(str(tmp_path / "tv.pt")).build_unpruned(), nn.Linear)
    assert seen == [None]


# --- consent for a user model's checkpoint ---------------------------------------------------

@pytest.fixture
def user_ckpt(run_cli, tmp_path):
    f = tmp_path / "my_vgg.py"
    f.write_text(USER_FILE)
    assert run_cli("prune", "--model", f"{f}:make", "--ratio", "0.5", "--out", tmp_path / "a").code == 0
    return f, tmp_path / "a" / "pruned.pt"


def test_a_user_model_checkpoint_needs_consent(run_cli, tmp_path, user_ckpt):
    f, ck = user_ckpt
    r = run_cli("profile", "--checkpoint", ck)
    assert_user_error(r, None, f"checkpoint '{ck}' names its model by code",
                      f"would import file '{f}' and call make()",
                      "pass --trust-model-code", "name your own copy of the factory with --model")
    r = run_cli("profile", "--checkpoint", ck, "--trust-model-code", "--json")
    assert r.code == 0, r.err
    model = tp_vgg.load(str(ck), trust_model_code=True)
    assert model[0].out_channels == 4
    raw = torch.load(ck, weights_only=True)
    assert raw["model_code"]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()


def test_naming_your_own_copy_with_model_is_consent(run_cli, tmp_path, user_ckpt):
    f, ck = user_ckpt
    copy = tmp_path / "elsewhere" / "copy_of_my_vgg.py"
    copy.parent.mkdir()
    shutil.copy(f, copy)
    f.unlink()  # the recorded path is gone: the user's copy is what runs
    r = run_cli("profile", "--checkpoint", ck, "--model", f"{copy}:make")
    assert r.code == 0, r.err
    model = tp_vgg.load(str(ck), factory=f"{copy}:make")
    assert model[0].out_channels == 4
    r = run_cli("profile", "--checkpoint", ck, "--model", f"{copy}:other")
    assert_user_error(r, None, f"--model '{copy}:other' does not name the factory of checkpoint",
                      "accepted: your copy of its file, path/to/file.py:make")
    r = run_cli("profile", "--checkpoint", ck, "--model", "subprocess:make")
    assert_user_error(r, None, "does not name the factory of checkpoint")


def test_a_zoo_checkpoint_takes_only_its_own_name_with_model(run_cli, base):
    r = run_cli("profile", "--checkpoint", base["pruned"], "--model", "cifar_vgg11")
    assert r.code == 0, r.err
    r = run_cli("profile", "--checkpoint", base["pruned"], "--model", "my.py:make")
    assert_user_error(r, None, "--model 'my.py:make' is not the model of checkpoint",
                      "(cifar_vgg11); leave --model out")


def test_trust_flags_apply_to_checkpoints_only(run_cli, tmp_path):
    r = run_cli("profile", "--model", "cifar_vgg11", "--width", "0.125", "--trust-model-code")
    assert_user_error(r, None, "--trust-model-code applies to --checkpoint")


# --- the model file is pinned ----------------------------------------------------------------

def test_a_changed_model_file_is_refused_unless_allowed(run_cli, tmp_path, user_ckpt):
    f, ck = user_ckpt
    f.write_text(USER_FILE + "\nprint('a line added after the checkpoint was written')\n")
    for argv in (["--trust-model-code"], ["--model", f"{f}:make"]):
        r = run_cli("profile", "--checkpoint", ck, *argv)
        assert_user_error(r, None, f"checkpoint '{ck}': model file '{f}' has changed since the "
                          "checkpoint was written (SHA-256 ",
                          "pass --allow-changed-model-code")
    with pytest.raises(UserError, match="allow_changed_model_code=True"):
        tp_vgg.load(str(ck), trust_model_code=True)
    r = run_cli("profile", "--checkpoint", ck, "--trust-model-code", "--allow-changed-model-code")
    assert r.code == 0, r.err  # the architecture still fits: it builds
    assert "a line added" in r.out
    loaded = tp_vgg.load(str(ck), trust_model_code=True, allow_changed_model_code=True)
    assert loaded[0].out_channels == 4


def test_a_package_factory_records_and_checks_its_version(tmp_path):
    spec = ModelSpec("torch.nn:Identity").resolved()
    path = tmp_path / "pkg.pt"
    tp_vgg.save(str(path), build_model(spec), spec)
    raw = torch.load(path, weights_only=True)
    assert raw["model_code"] == {"factory": "torch.nn:Identity", "sha256": None,
                                 "distribution": "torch",
                                 "version": importlib.metadata.version("torch")}
    assert isinstance(tp_vgg.load(str(path), trust_model_code=True), nn.Identity)
    raw["model_code"]["version"] = "0.0.1"
    torch.save(raw, path)
    with pytest.raises(UserError, match=r"package 'torch' of module 'torch.nn' is version .* now, "
                                        r"version 0.0.1 when the checkpoint was written"):
        tp_vgg.load(str(path), trust_model_code=True)
    assert isinstance(tp_vgg.load(str(path), trust_model_code=True,
                                  allow_changed_model_code=True), nn.Identity)
