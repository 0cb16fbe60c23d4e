"""The inputs users bring: their own state_dict files (--weights PATH), torchvision weights with
their preprocessing, model files that import their neighbours, non-square inputs (--input-size
HxW), and a finished run continued for more epochs (--resume --epochs N)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import randomize
from methods_util import assert_one_line_error

import tp_vgg
from tp_vgg import UserError
from tp_vgg.checkpoint import store as checkpoint
from tp_vgg.checkpoint.source import ModelSource, load_source
from tp_vgg.data.datasets import DataConfig, load_data
from tp_vgg.models.weights import is_weights_file
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.pruning.graph import out_channels
from tp_vgg.train.loop import ResumePoint, TrainConfig, fit, resume, seed_everything

USER_MODELS = Path(__file__).parent / "user_models"
VGGISH = f"{USER_MODELS / 'vggish.py'}:make"

# (model, spec options): a CIFAR-form zoo model, a torchvision one at a small input, user files
SOURCES = {
    "cifar_vgg11_bn": {"width": 0.125},
    "vgg11_bn": {"input_size": 32, "num_classes": 10},
    "user_vggish": {"name": VGGISH, "in_channels": 1, "input_size": [96, 64]},
    "user_gray28": {"name": f"{USER_MODELS / 'vgg_gray28.py'}:make", "in_channels": 1,
                    "input_size": 28},
}


def _spec(which: str) -> ModelSpec:
    opts = dict(SOURCES[which])
    return ModelSpec(opts.pop("name", which), **opts).resolved()


def _trained(which: str) -> torch.nn.Module:
    torch.manual_seed(1)
    return randomize(build_model(_spec(which)))


# ---------------------------------------------------------------------------------------------
# --weights PATH

WRAPPINGS = {
    "plain": lambda sd: sd,
    "ddp": lambda sd: {"module." + k: v for k, v in sd.items()},
    "compiled_in_ddp": lambda sd: {"module._orig_mod." + k: v for k, v in sd.items()},
    "nested": lambda sd: {"epoch": 90, "optimizer": {"lr": 0.1}, "state_dict": sd},
    "nested_model_ddp": lambda sd: {"model": {"module." + k: v for k, v in sd.items()},
                                    "best_acc": 93.1},
    "net": lambda sd: {"net": sd, "acc": 0.9},
}


@pytest.mark.parametrize("which", list(SOURCES))
@pytest.mark.parametrize("wrap", list(WRAPPINGS))
def test_weights_file_loads_bit_exact_through_any_wrapping(tmp_path, which, wrap):
    trained = _trained(which)
    path = tmp_path / "model.pth"
    torch.save(WRAPPINGS[wrap](trained.state_dict()), path)
    loaded = load_source(ModelSource(spec=_spec(which), weights_file=str(path)))
    want, got = trained.state_dict(), loaded.model.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    info = loaded.meta["weights"]
    assert info["file"] == str(path) and info["loaded"] == len(want) and info["strict"]
    assert len(info["sha256"]) == 64
    assert info["stripped_prefixes"] == {"plain": [], "ddp": ["module."], "net": [],
                                         "compiled_in_ddp": ["module.", "_orig_mod."],
                                         "nested": [], "nested_model_ddp": ["module."]}[wrap]


def test_weights_safetensors(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    trained = _trained("cifar_vgg11_bn")
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()},
              str(tmp_path / "m.safetensors"))
    loaded = load_source(ModelSource(spec=_spec("cifar_vgg11_bn"),
                                     weights_file=str(tmp_path / "m.safetensors")))
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in trained.state_dict().items())
    assert loaded.meta["weights"]["format"] == "safetensors"


def test_weights_mismatch_names_the_first_keys_and_both_shapes(tmp_path):
    other = build_model(ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=100))
    sd = other.state_dict()
    sd["extra.weight"] = torch.zeros(3)
    del sd["features.0.bias"]
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(UserError) as e:
        load_source(ModelSource(spec=_spec("cifar_vgg11_bn"), weights_file=str(tmp_path / "w.pt")))
    msg = str(e.value)
    assert "\n" not in msg
    assert "1 missing (features.0.bias)" in msg and "1 unexpected (extra.weight)" in msg
    assert "classifier.2.weight: file 100x64, model 10x64" in msg
    assert "--no-strict-weights" in msg
    # not strict: what fits is loaded, the rest stays as built
    loaded = load_source(ModelSource(spec=_spec("cifar_vgg11_bn"),
                                     weights_file=str(tmp_path / "w.pt"), strict_weights=False))
    info = loaded.meta["weights"]
    assert (info["missing"], info["unexpected"], info["wrong_shape"]) == (1, 1, 2)
    assert torch.equal(loaded.model.features[4].weight, other.features[4].weight)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    ("code", "holds pickled Python objects"),
    ("text", "is corrupt, truncated or not a PyTorch file"),
    ("empty", "holds no state_dict (a dict"),
    ("list", "holds no state_dict (a list"),
])
def test_weights_file_mistakes_exit_2(run_cli, tmp_path, content, message):
    path = tmp_path / "w.pth"
    if content == "code":
        torch.save({"state_dict": Evil()}, path)
    elif content == "text":
        path.write_text("not a checkpoint")
    elif content == "empty":
        torch.save({"epoch": 3}, path)
    elif content == "list":
        torch.save([torch.zeros(2)], path)
    r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--weights", path,
                "--ratio", "0.3", "--out", tmp_path / "o")
    assert_one_line_error(r, message, tmp_path / "o")


def test_weights_path_or_torchvision_name():
    assert not is_weights_file("DEFAULT") and not is_weights_file("VGG16_Weights.IMAGENET1K_V1")
    assert is_weights_file("model.pth") and is_weights_file("runs/x") and is_weights_file("w.safetensors")


def test_weights_with_checkpoint_is_refused(run_cli, tmp_path):
    torch.save(build_model(_spec("cifar_vgg11_bn")).state_dict(), tmp_path / "w.pt")
    tp_vgg.save(str(tmp_path / "c.pt"), build_model(_spec("cifar_vgg11_bn")),
                           _spec("cifar_vgg11_bn"))
    r = run_cli("profile", "--checkpoint", tmp_path / "c.pt", "--weights", tmp_path / "w.pt")
    assert_one_line_error(r, "--weights cannot be combined with --checkpoint", tmp_path / "none")


def test_prune_with_user_weights_records_their_origin_and_keeps_them(run_cli, tmp_path,
                                                                     monkeypatch):
    """The issue's command: a VGGish file importing a sibling, the user's weights (DDP-wrapped),
    a 96x64 single-channel input, no PYTHONPATH."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    trained = _trained("user_vggish")
    torch.save({"model": {"module." + k: v for k, v in trained.state_dict().items()}},
               tmp_path / "my_vgg.pth")
    r = run_cli("prune", "--model", VGGISH, "--weights", tmp_path / "my_vgg.pth",
                "--input-size", "96x64", "--in-channels", "1", "--ratio", "0.5",
                "--out", tmp_path / "d")
    assert r.code == 0, r.err
    ck = checkpoint.load_checkpoint(str(tmp_path / "d" / "pruned.pt"), trust_model_code=True)
    assert ck.spec.input_size == [96, 64] and ck.preprocessing.input_size == [96, 64]
    assert ck.meta["weights"]["file"] == str(tmp_path / "my_vgg.pth")
    assert ck.meta["weights"]["nested_under"] == ["model"]
    # the pruned model is the user's weights with channels removed: the kept filters are theirs
    pruned = ck.build()
    assert out_channels(pruned)["features.0.0"] == 4
    kept = pruned.features[0][0].weight
    full = trained.features[0][0].weight
    assert all(any(torch.equal(k, f) for f in full) for k in kept)


# ---------------------------------------------------------------------------------------------
# torchvision weights carry their preprocessing and categories

@pytest.fixture(scope="module")
def torchvision_cache(tmp_path_factory):
    """vgg11's DEFAULT weights placed under torchvision's cache name: the loader only reads the
    cached file (no network)."""
    import torchvision

    home = tmp_path_factory.mktemp("torch_home")
    w = torchvision.models.get_model_weights("vgg11").DEFAULT
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg11().state_dict(), folder / os.path.basename(w.url))
    return home


def test_torchvision_weights_record_imagenet_preprocessing(run_cli, tmp_path, monkeypatch,
                                                           torchvision_cache):
    monkeypatch.setenv("TORCH_HOME", str(torchvision_cache))
    r = run_cli("prune", "--model", "vgg11", "--weights", "DEFAULT", "--input-size", "64",
                "--ratio", "0.2", "--out", tmp_path / "d")
    assert r.code == 0, r.err
    ck = checkpoint.load_checkpoint(str(tmp_path / "d" / "pruned.pt"))
    pre = ck.preprocessing
    assert pre.mean == pytest.approx([0.485, 0.456, 0.406])
    assert pre.std == pytest.approx([0.229, 0.224, 0.225])
    assert len(pre.class_names) == 1000 and pre.class_names[0] == "tench"
    assert pre.extra["resize_size"] == 256 and ck.meta["weights"] == {
        "torchvision": "VGG11_Weights.IMAGENET1K_V1"}
    # eval normalizes with the recorded ImageNet statistics, not the data's
    r = run_cli("eval", "--checkpoint", tmp_path / "d" / "pruned.pt", "--data", "fake",
                "--data-kwargs", '{"num_classes": 1000, "test_size": 8, "train_size": 8}',
                "--json")
    assert r.code == 0, r.err
    cfg = json.loads(r.out[r.out.index("{"):])
    assert cfg["images"] == 8


# ---------------------------------------------------------------------------------------------
# model files import their siblings

def _model_file(folder: Path, width: int) -> str:
    folder.mkdir()
    (folder / "layers.py").write_text(
        "import torch.nn as nn\n"
        f"WIDTH = {width}\n"
        "def block(c_in):\n"
        "    return nn.Sequential(nn.Conv2d(c_in, WIDTH, 3, padding=1), nn.BatchNorm2d(WIDTH),\n"
        "                         nn.ReLU(), nn.MaxPool2d(2))\n")
    (folder / "net.py").write_text(
        "import torch.nn as nn\n"
        "from layers import WIDTH, block\n"
        "def make(num_classes=10):\n"
        "    return nn.Sequential(block(3), block(WIDTH), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(WIDTH, num_classes))\n")
    return f"{folder / 'net.py'}:make"


def test_model_files_import_their_own_siblings(tmp_path):
    a, b = _model_file(tmp_path / "a", 8), _model_file(tmp_path / "b", 12)
    before = set(sys.modules)
    ma, mb = build_model(ModelSpec(a)), build_model(ModelSpec(b))
    assert ma[0][0].out_channels == 8 and mb[0][0].out_channels == 12  # no collision
    assert "layers" not in sys.modules and str(tmp_path / "a") not in sys.path
    assert not [m for m in set(sys.modules) - before if not m.startswith("tp_vgg_user_")]
    # and at load time, from a pruned checkpoint, with consent
    model = build_model(ModelSpec(b))
    result = tp_vgg.prune(model, ModelSpec(b).resolved(), tp_vgg.PruneConfig(ratio=0.5))
    path = tmp_path / "p.pt"
    tp_vgg.save(str(path), model, ModelSpec(b).resolved(), result.history)
    loaded = tp_vgg.load(str(path), trust_model_code=True)
    assert out_channels(loaded)["0.0"] == 6


def test_a_module_of_the_same_name_elsewhere_does_not_shadow_the_sibling(tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "layers.py").write_text("WIDTH = 99\n")
    monkeypatch.syspath_prepend(str(other))
    import layers  # a different "layers", already imported
    assert layers.WIDTH == 99
    try:
        model = build_model(ModelSpec(_model_file(tmp_path / "a", 8)))
        assert model[0][0].out_channels == 8
        assert sys.modules["layers"].WIDTH == 99  # put back
    finally:
        sys.modules.pop("layers", None)


# ---------------------------------------------------------------------------------------------
# --input-size HxW

def _hand_macs_cifar_vgg11(width: float, h: int, w: int, c_in: int, classes: int) -> int:
    cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    macs = 0
    for v in cfg:
        if v == "M":
            h, w = h // 2, w // 2
            continue
        c = max(1, int(round(v * width)))
        macs += c_in * c * 9 * h * w
        c_in = c
    return macs + c_in * c_in + c_in * classes   # classifier: c -> c (hidden) -> classes


@pytest.mark.parametrize("size", [[96, 64], [40, 72]])
def test_non_square_input_counts_prunes_and_round_trips(tmp_path, size):
    spec = ModelSpec("cifar_vgg11", width=0.125, in_channels=1, input_size=size).resolved()
    assert spec.example_input(2).shape == (2, 1, *size)
    model = randomize(build_model(spec))
    assert tp_vgg.count(model, spec).macs == _hand_macs_cifar_vgg11(0.125, *size, 1, 10)
    result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))
    assert tp_vgg.count(model, spec).macs == _hand_macs_cifar_vgg11(0.0625, *size, 1, 10)
    path = tmp_path / "p.pt"
    tp_vgg.save(str(path), model, spec, result.history)
    ck = checkpoint.load_checkpoint(str(path))
    assert ck.spec.input_size == size
    again = ck.build()
    x = spec.example_input(3)
    model.eval(), again.eval()
    assert torch.equal(model(x), again(x))


@pytest.mark.parametrize("text,want", [("32", 32), ("96x64", [96, 64]), ("96,64", [96, 64]),
                                       ("64X64", 64)])
def test_input_size_forms(text, want):
    from tp_vgg.cli.common import input_size
    assert input_size(text) == want


@pytest.mark.parametrize("text", ["96y64", "0x5", "1x2x3", "-3", "x"])
def test_bad_input_size_exits_2(run_cli, tmp_path, text):
    r = run_cli("profile", "--model", "cifar_vgg11", "--input-size", text)
    assert_one_line_error(r, f"'{text}' is not an input size; accepted: S, or HxW",
                          tmp_path / "none")


def test_non_square_train_prune_export_eval(run_cli, tmp_path):
    pytest.importorskip("onnxruntime")
    data = ["--data", "fake", "--data-kwargs",
            '{"channels": 1, "image_size": [48, 32], "train_size": 64, "test_size": 32}']
    r = run_cli("train", "--model", "cifar_vgg11_bn", "--width", "0.125", "--in-channels", "1",
                "--input-size", "48x32", *data, "--epochs", "1", "--progress", "none",
                "--out", tmp_path / "t")
    assert r.code == 0, r.err
    r = run_cli("prune", "--checkpoint", tmp_path / "t" / "last.pt", "--ratio", "0.5", *data,
                "--bn-recalibrate", "2", "--out", tmp_path / "p", "--latency", "--threads", "1")
    assert r.code == 0, r.err
    r = run_cli("export", "--checkpoint", tmp_path / "p" / "pruned.pt", "--onnx",
                tmp_path / "m.onnx")
    assert r.code == 0, r.err
    want = run_cli("eval", "--checkpoint", tmp_path / "p" / "pruned.pt", *data, "--json",
                   "--device", "cpu")
    got = run_cli("eval", "--model", tmp_path / "m.onnx", *data, "--json")
    a, b = (json.loads(x.out[x.out.index("{"):]) for x in (want, got))
    assert a["top1"] == b["top1"] and a["images"] == b["images"] == 32


# ---------------------------------------------------------------------------------------------
# --resume --epochs N: continue a finished run

SPEC = ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=10).resolved()
DATA = DataConfig("fake", kwargs={"train_size": 96, "test_size": 32})


def _records(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_with_more_epochs_replans_the_schedule(tmp_path):
    data = load_data(DATA)
    cfg = TrainConfig(epochs=2, batch_size=32, schedule="cosine", warmup_epochs=1,
                      progress="none")
    seed_everything(0)
    fit(build_model(SPEC), SPEC, data, cfg, str(tmp_path / "run"), data_cfg=DATA)
    lines = []
    resume(ResumePoint.read(str(tmp_path / "run" / "last.pt")), data, epochs=4, log=lines.append)
    recs = _records(tmp_path / "run")
    assert [r["epoch"] for r in recs] == [1, 2, 3, 4]
    assert [r["planned_epochs"] for r in recs] == [2, 2, 4, 4]
    # epochs 3-4 run at the LR a 4-epoch run has there
    seed_everything(0)
    fit(build_model(SPEC), SPEC, data, TrainConfig(**{**cfg.__dict__, "epochs": 4}),
        str(tmp_path / "planned"), data_cfg=DATA)
    planned = _records(tmp_path / "planned")
    assert [r["lr"] for r in recs[2:]] == pytest.approx([r["lr"] for r in planned[2:]], rel=1e-12)
    ck = checkpoint.load_checkpoint(str(tmp_path / "run" / "last.pt"))
    assert ck.train_state["config"]["epochs"] == 4 and ck.train_state["epoch"] == 4


def test_cli_resume_epochs(run_cli, tmp_path):
    base = ["--model", "cifar_vgg11_bn", "--width", "0.125", "--data", "fake", "--data-kwargs",
            '{"train_size": 64, "test_size": 32}', "--progress", "plain"]
    assert run_cli("train", *base, "--epochs", "1", "--out", tmp_path / "r").code == 0
    r = run_cli("train", "--resume", tmp_path / "r" / "last.pt", "--epochs", "2")
    assert r.code == 0, r.err
    assert "continuing to 2 epochs: the LR schedule is re-planned for 2 epochs from epoch 1" in r.out
    assert "epoch 2/2" in r.out
    r = run_cli("train", "--resume", tmp_path / "r" / "last.pt", "--epochs", "1")
    assert_one_line_error(r, "--epochs 1 with --resume must be more than the 2 epochs the run "
                             "has done", tmp_path / "none")
    r = run_cli("train", "--resume", tmp_path / "r" / "last.pt", "--lr", "0.1")
    assert_one_line_error(r, "--lr cannot be given with --resume", tmp_path / "none")


# ---------------------------------------------------------------------------------------------
# found by trying it as a new user

@pytest.mark.parametrize("command", ["prune", "train", "finetune", "eval", "sweep", "sensitivity",
                                     "profile", "export", "models"])
def test_every_command_has_help(run_cli, command):
    r = run_cli(command, "--help")
    assert r.code == 0 and "usage: tp-vgg" in r.out, r.err


def test_a_user_model_checkpoint_names_its_file_absolutely(run_cli, tmp_path, monkeypatch):
    """Made with a relative --model path, read from another folder."""
    (tmp_path / "mdl").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "mdl" / "net.py").write_text((USER_MODELS / "vgg_gray28.py").read_text())
    monkeypatch.chdir(tmp_path / "work")
    r = run_cli("prune", "--model", "../mdl/net.py:make", "--in-channels", "1", "--input-size",
                "28", "--ratio", "0.5", "--out", "d")
    assert r.code == 0, r.err
    monkeypatch.chdir(tmp_path)
    ck = checkpoint.load_checkpoint("work/d/pruned.pt", trust_model_code=True)
    assert ck.spec.name == f"{tmp_path / 'mdl' / 'net.py'}:make"
    assert out_channels(ck.build())["features.0"] == 4


def test_resume_refuses_model_flags(run_cli, tmp_path):
    base = ["--model", "cifar_vgg11_bn", "--width", "0.125", "--data", "fake", "--data-kwargs",
            '{"train_size": 32, "test_size": 16}', "--progress", "none"]
    assert run_cli("train", *base, "--epochs", "2", "--out", tmp_path / "r").code == 0
    r = run_cli("train", "--resume", tmp_path / "r" / "last.pt", "--weights", tmp_path / "w.pt")
    assert_one_line_error(r, "--weights cannot be given with --resume", tmp_path / "none")
    r = run_cli("train", "--resume", tmp_path / "r" / "last.pt", "--epochs", "1")
    assert_one_line_error(r, "--epochs 1 with --resume must be more than", tmp_path / "none")
    assert "resuming" not in r.out


def test_no_strict_weights_says_what_it_left_out(run_cli, tmp_path):
    # another head (100 classes): 58 of the 60 tensors fit (fewer than half is refused,
    # tests/test_user_checks.py)
    sd = build_model(ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=100)).state_dict()
    sd["extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "w100.pt")
    r = run_cli("profile", "--model", "cifar_vgg11_bn", "--width", "0.125", "--weights",
                tmp_path / "w100.pt", "--no-strict-weights")
    assert r.code == 0, r.err
    assert "--weights" in r.out and "left as built:" in r.out and "wrong shape" in r.out
    r = run_cli("profile", "--model", "cifar_vgg11_bn", "--no-strict-weights")
    assert_one_line_error(r, "--no-strict-weights applies to --weights PATH", tmp_path / "none")


def test_pickled_or_named_weights_get_clear_lines(run_cli, tmp_path):
    torch.save(build_model(ModelSpec("cifar_vgg11_bn", width=0.125)), tmp_path / "whole.pt")
    r = run_cli("profile", "--model", "cifar_vgg11_bn", "--width", "0.125", "--weights",
                tmp_path / "whole.pt")
    assert_one_line_error(r, "holds pickled Python objects", tmp_path / "none")
    assert "\x1b" not in r.err
    r = run_cli("profile", "--model", "cifar_vgg11_bn", "--weights", "DEFAULT")
    assert_one_line_error(r, "--weights 'DEFAULT' names torchvision weights, which cifar_vgg11_bn "
                             "does not take", tmp_path / "none")
    (tmp_path / "wdir").mkdir()
    r = run_cli("profile", "--model", "cifar_vgg11_bn", "--weights", tmp_path / "wdir")
    assert_one_line_error(r, "is a folder", tmp_path / "none")
