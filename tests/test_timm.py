"""timm's VGGs: ``--model timm:vgg11_bn`` (tp-vgg's own builder over timm.create_model, with
timm installed; a checkpoint naming it needs no trust) and a timm model as a user factory.

Small settings keep it fast: 32x32 input (timm's ConvMlp pools the 1x1 feature map up to 7x7
before its 7x7 conv), 10 classes and ``mlp_ratio`` 1/64 (64 channels out of the 7x7 conv).
"""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
import torch.nn as nn
from conftest import randomize
from masked_reference import zero_removed_channels
from test_audit import assert_user_error
from torchvision.models.vgg import cfgs as TORCHVISION_CFGS

import tp_vgg
from tp_vgg import UserError
from tp_vgg.checkpoint.source import ModelSource, load_source
from tp_vgg.data.preprocessing import input_hw
from tp_vgg.models.counting import count
from tp_vgg.models.zoo import MODELS, TIMM_VGGS, ModelSpec, build_model, list_models
from tp_vgg.pruning.graph import out_channels

SMALL = dict(num_classes=10, input_size=32, kwargs={"mlp_ratio": 1 / 64})
SMALL_ARGS = ["--num-classes", "10", "--input-size", "32", "--model-kwargs", '{"mlp_ratio": 0.015625}']
FAKE = ["--data", "fake", "--data-kwargs", '{"train_size": 32, "test_size": 16}']
QUIET = ["--progress", "none", "--threads", "1"]
USER_FILE = '''
import timm


def make(num_classes=10, **kwargs):
    return timm.create_model("vgg11_bn", pretrained=False, num_classes=num_classes, **kwargs)
'''


def hand_macs(keep: float, size: int = 32, mid: int = 64, classes: int = 10) -> int:
    """MACs of timm's VGG11 (config A) with ``keep`` of every conv's channels, written out:
    3x3 convs at each resolution, the 7x7 conv on the (pooled-up) 7x7 map -> 1x1, the 1x1 conv,
    the fc."""
    h, c_in, macs = size, 3, 0
    for v in TORCHVISION_CFGS["A"]:
        if v == "M":
            h //= 2
            continue
        c = int(v * keep)
        macs += c_in * c * 9 * h * h
        c_in = c
    mid, hidden = int(mid * keep), int(4096 * keep)
    return macs + c_in * mid * 49 + mid * hidden + hidden * classes


@pytest.fixture(scope="module")
def pruned():
    """timm:vgg11_bn (randomized BN and biases), pruned at ratio 0.5."""
    pytest.importorskip("timm")
    spec = ModelSpec("timm:vgg11_bn", **SMALL).resolved()
    torch.manual_seed(0)
    original = randomize(build_model(spec)).eval()
    model = copy.deepcopy(original)
    before = count(model, spec)
    result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))
    return spec, original, model, result, before, count(model, spec)


def test_the_names_are_timms_vggs():
    timm = pytest.importorskip("timm")
    assert [n.removeprefix("timm:") for n in TIMM_VGGS] == timm.list_models("vgg*")
    assert list(list_models())[-8:] == TIMM_VGGS
    assert not ModelSpec("timm:vgg16_bn").is_user_factory
    assert ModelSpec("timm.models:vgg16_bn").is_user_factory  # timm's module named as code


@pytest.mark.parametrize("name,spec,params", [
    ("timm:vgg16", {}, 138_357_544),  # = torchvision's VGG16: the same weights, as convs
    ("timm:vgg11_bn", dict(num_classes=37, in_channels=2, input_size=[64, 96],
                           kwargs={"mlp_ratio": 0.25, "drop_rate": 0.1}), None),
    ("timm:vgg19_bn", dict(input_size=[256, 300]), None),  # an 8x9 map: the 7x7 conv gives 2x3
])
def test_the_size_check_is_exact(name, spec, params):
    """Parameters and values per image (input + every conv output) from the configuration,
    against the model timm builds (on the meta device: no memory)."""
    pytest.importorskip("timm")
    spec = ModelSpec(name, **spec).resolved()
    with torch.device("meta"):
        model = build_model(spec).eval()
        outputs = []
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.register_forward_hook(lambda mod, args, out: outputs.append(out.numel()))
        x = torch.empty(1, spec.in_channels, *input_hw(spec.input_size))
        assert model(x).shape == (1, spec.num_classes or 1000)
    got = MODELS.get(name).size(spec)
    assert got == (sum(p.numel() for p in model.parameters()), x.numel() + sum(outputs))
    assert params is None or got[0] == params


def test_prune_keeps_exact_channels_and_the_logits(pruned):
    spec, original, model, result, _, _ = pruned
    assert result.output_layers == ["head.fc"]
    before = out_channels(original)
    assert list(before)[-3:] == ["pre_logits.fc1", "pre_logits.fc2", "head.fc"]
    assert result.channels_after == {n: c if n == "head.fc" else int(c * 0.5)
                                     for n, c in before.items()}
    assert result.channels_after["pre_logits.fc1"] == 32
    assert result.channels_after["pre_logits.fc2"] == 2048
    fc1 = model.pre_logits.fc1  # the 7x7 conv reads what the last feature conv now writes
    assert (fc1.in_channels, fc1.kernel_size) == (256, (7, 7))
    assert model.pre_logits.fc2.in_channels == 32 and model.head.fc.in_features == 2048
    assert model(spec.example_input(batch=2)).shape == (2, 10)


def test_macs_before_and_after_match_a_hand_count(pruned):
    spec, original, model, _, before, after = pruned
    assert before.macs == hand_macs(1.0) == 154_673_152
    assert after.macs == hand_macs(0.5) == 39_120_896
    assert before.params == MODELS.get(spec.name).size(spec)[0]
    assert after.params == sum(p.numel() for p in model.parameters())


def test_pruned_equals_original_with_removed_channels_zeroed(pruned):
    spec, original, model, result, _, _ = pruned
    zeroed = zero_removed_channels(copy.deepcopy(original), spec, result.history).eval()
    x = spec.example_input(batch=3)
    with torch.no_grad():
        want, got = zeroed(x), model(x)
        assert want.abs().max() > 1e-3
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
        assert not torch.allclose(original(x), want, rtol=1e-5, atol=1e-6)  # removal mattered


def test_a_checkpoint_round_trips_bit_exact_with_no_trust(pruned, tmp_path, monkeypatch):
    import tp_vgg.models.zoo as models

    spec, _, model, result, _, _ = pruned
    path = tmp_path / "t.pt"
    tp_vgg.save(str(path), model, spec, history=result.history)
    assert "model_code" not in torch.load(path, weights_only=True)

    def no_factory(*a, **k):
        raise AssertionError("a timm checkpoint loaded a user factory")

    monkeypatch.setattr(models, "_load_factory", no_factory)
    loaded = tp_vgg.load(str(path))  # no trust_model_code
    x = spec.example_input(batch=2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 model.state_dict().values()))


def test_weights_come_from_a_file(tmp_path):
    pytest.importorskip("timm")
    spec = ModelSpec("timm:vgg11", **SMALL).resolved()
    torch.manual_seed(3)
    mine = build_model(spec)
    torch.save(mine.state_dict(), tmp_path / "w.pt")
    loaded = load_source(ModelSource(spec=spec, seed=1, weights_file=str(tmp_path / "w.pt")))
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(),
                                                 mine.state_dict().values()))


def test_the_cli_prunes_profiles_evaluates_exports_and_trains(run_cli, tmp_path):
    pytest.importorskip("timm")
    r = run_cli("prune", "--model", "timm:vgg11_bn", *SMALL_ARGS, "--ratio", "0.5",
                "--out", tmp_path / "p")
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert (report["before"]["macs"], report["after"]["macs"]) == (hand_macs(1.0), hand_macs(0.5))
    ckpt = tmp_path / "p" / "pruned.pt"
    r = run_cli("profile", "--checkpoint", ckpt, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["macs"] == hand_macs(0.5)
    r = run_cli("eval", "--checkpoint", ckpt, *FAKE)
    assert r.code == 0 and "top-1" in r.out, r.err
    (tmp_path / "e").mkdir()
    assert run_cli("export", "--checkpoint", ckpt, "--pt2", tmp_path / "e" / "m.pt2").code == 0
    assert (tmp_path / "e" / "m.pt2").stat().st_size > 0
    r = run_cli("train", "--model", "timm:vgg11", "--input-size", "32", "--model-kwargs",
                '{"mlp_ratio": 0.015625}', *FAKE, *QUIET, "--epochs", "1", "--out", tmp_path / "t")
    assert r.code == 0, r.err
    last = tp_vgg.load_checkpoint(str(tmp_path / "t" / "last.pt"))
    assert last.spec.name == "timm:vgg11" and last.spec.num_classes == 10  # from the data
    assert isinstance(last.build(), nn.Module)


def test_a_timm_model_as_a_user_factory(tmp_path):
    pytest.importorskip("timm")
    f = tmp_path / "my_timm.py"
    f.write_text(USER_FILE)
    spec = ModelSpec(f"{f}:make", num_classes=10, kwargs={"mlp_ratio": 1 / 64}).resolved()
    assert spec.is_user_factory and spec.input_size == 32
    torch.manual_seed(0)
    model = build_model(spec).eval()
    zoo = out_channels(build_model(ModelSpec("timm:vgg11_bn", **SMALL)))
    assert out_channels(model) == zoo  # the same network as timm:vgg11_bn
    result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))
    assert result.output_layers == ["head.fc"]
    assert result.channels_after == {n: c if n == "head.fc" else int(c * 0.5) for n, c in zoo.items()}
    assert count(model, spec).macs == hand_macs(0.5)
    path = tmp_path / "u.pt"
    tp_vgg.save(str(path), model, spec, history=result.history)
    with pytest.raises(UserError, match="names its model by code"):
        tp_vgg.load(str(path))
    loaded = tp_vgg.load(str(path), trust_model_code=True)
    x = spec.example_input(batch=2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# --- refusals: one line, exit 2, nothing imported -------------------------------------------

def test_without_timm_a_timm_model_asks_for_the_extra(run_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    for command in (["profile"], ["prune", "--ratio", "0.5", "--out", tmp_path / "o"]):
        r = run_cli(*command, "--model", "timm:vgg16_bn")
        assert_user_error(r, tmp_path / "o", "--model timm:vgg16_bn needs timm",
                          "install it: pip install 'tp-vgg[timm]'")
    assert not any(n.startswith("timm:") for n in list_models())
    r = run_cli("models")
    assert r.code == 0 and "timm:vgg11 ... timm:vgg19_bn) need timm: pip install" in r.out
    assert "\ntimm:vgg11 " not in r.out


BAD = {
    "not a VGG": ({"name": "timm:resnet50"},
                  ["'timm:resnet50' is not one of timm's VGGs", "accepted: timm:vgg11, timm:vgg11_bn,",
                   "timm:vgg19_bn"]),
    "timm's download": ({"name": "timm:vgg16_bn", "kwargs": {"pretrained": True}},
                        ["bad --model-kwargs for timm:vgg16_bn: 'pretrained' is not accepted; "
                         "accepted: mlp_ratio (a number in [0.000244141, 4]), drop_rate"]),
    "a kwarg out of range": ({"name": "timm:vgg16_bn", "kwargs": {"mlp_ratio": 0}},
                             ["mlp_ratio must be a number in [0.000244141, 4], got 0"]),
    "named weights": ({"name": "timm:vgg16_bn", "weights": "DEFAULT"},
                      ["--weights 'DEFAULT' names torchvision weights", "--weights PATH",
                       "timm's pretrained download is never used"]),
    "a width": ({"name": "timm:vgg16_bn", "width": 0.5},
                ["--width is not accepted by timm:vgg16_bn; it accepts: --in-channels, "
                 "--num-classes, --model-kwargs"]),
    "absurd classes": ({"name": "timm:vgg16_bn", "num_classes": 10**7},
                       ["timm:vgg16_bn with --num-classes 10000000", "would have 4.11e+10 parameters",
                        "accepted: a smaller --num-classes"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_timm_spec_is_refused_before_anything_is_imported(run_cli, tmp_path, monkeypatch,
                                                                  case):
    """On the command line and in a crafted checkpoint: refused by the spec check, before timm
    (blocked here: trying to import it would say so) or any factory is loaded."""
    import tp_vgg.models.zoo as models

    def no_factory(*a, **k):
        raise AssertionError("a timm name loaded a user factory")

    spec, phrases = BAD[case]
    spec_model = build_model(ModelSpec("cifar_vgg11", width=0.125))
    ck = tmp_path / "crafted.pt"
    tp_vgg.save(str(ck), spec_model, ModelSpec("cifar_vgg11", width=0.125))
    raw = torch.load(ck, weights_only=True)
    raw["model_spec"] = spec
    torch.save(raw, ck)
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.setattr(models, "_load_factory", no_factory)
    with pytest.raises(UserError) as err:
        tp_vgg.load(str(ck))
    assert all(p in str(err.value) for p in phrases) and "\n" not in str(err.value), err.value
    flags = {"kwargs": ["--model-kwargs", json.dumps(spec.get("kwargs"))],
             "weights": ["--weights", spec.get("weights")], "width": ["--width", spec.get("width")],
             "num_classes": ["--num-classes", spec.get("num_classes")]}
    args = [a for k, v in flags.items() if k in spec for a in v]
    r = run_cli("prune", "--model", spec["name"], *args, "--ratio", "0.5", "--out", tmp_path / "o")
    assert_user_error(r, tmp_path / "o", *phrases)
