import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import tp_vgg
from tp_vgg import UserError
from tp_vgg.checkpoint.store import load_checkpoint
from tp_vgg.models.zoo import build_model

from conftest import zoo_spec


def test_round_trip_is_bit_exact_and_weights_only(pruned_case, tmp_path):
    path = tmp_path / "pruned.pt"
    tp_vgg.save(str(path), pruned_case.pruned, pruned_case.spec, history=pruned_case.result.history,
                meta={"importance": "l1", "ratio": 0.5})
    raw = torch.load(path, weights_only=True)  # no pickled modules inside
    assert raw["format"] == "tp-vgg-checkpoint" and raw["model_spec"]["name"] == pruned_case.name
    loaded = tp_vgg.load(str(path))
    want, got = pruned_case.pruned.state_dict(), loaded.state_dict()
    assert list(want) == list(got)
    assert all(torch.equal(want[k], got[k]) for k in want)
    x = pruned_case.spec.example_input(batch=2)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned_case.pruned.eval()(x))


def test_checkpoint_holds_spec_history_preprocessing_and_meta(tmp_path):
    spec = zoo_spec("cifar_vgg11_bn")
    model = build_model(spec)
    result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.25))
    path = str(tmp_path / "m.pt")
    tp_vgg.save(path, model, spec, history=result.history,
                preprocessing={"input_size": 32, "in_channels": 3, "mean": [0.5] * 3,
                               "std": [0.25] * 3, "class_names": list("abcdefghij")},
                meta={"macs_after": 123})
    ckpt = load_checkpoint(path)
    assert ckpt.spec == spec
    assert ckpt.history == result.history
    assert ckpt.preprocessing.class_names == list("abcdefghij")
    assert ckpt.meta == {"macs_after": 123}
    raw = torch.load(path, weights_only=True)
    assert raw["tp_vgg_version"] == tp_vgg.__version__


def test_pruning_a_pruned_checkpoint_chains_histories(tmp_path):
    spec = zoo_spec("cifar_vgg11_bn")
    model = build_model(spec)
    first = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5)).history
    second = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5)).history
    path = str(tmp_path / "twice.pt")
    tp_vgg.save(path, model, spec, history=first + second)
    loaded = tp_vgg.load(path)
    assert loaded.features[0].out_channels == 8  # 32 -> 16 -> 8
    x = spec.example_input()
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_write_is_atomic_no_temp_files_left(tmp_path):
    spec = zoo_spec("cifar_vgg11")
    tp_vgg.save(str(tmp_path / "a.pt"), build_model(spec), spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def _good(tmp_path):
    spec = zoo_spec("cifar_vgg11")
    path = tmp_path / "good.pt"
    tp_vgg.save(str(path), build_model(spec), spec)
    return path


BAD_FILES = {
    "missing": (lambda tmp: tmp / "nope.pt", r"does not exist"),
    "folder": (lambda tmp: tmp, r"is a folder"),
    "junk": (lambda tmp: _write(tmp / "junk.pt", b"this is not a checkpoint\n" * 10),
             r"corrupt, truncated or not a PyTorch file"),
    "empty": (lambda tmp: _write(tmp / "empty.pt", b""), r"corrupt, truncated or not a PyTorch file"),
    "truncated": (lambda tmp: _write(tmp / "cut.pt", _good(tmp).read_bytes()[:5000]),
                  r"corrupt, truncated or not a PyTorch file"),
    "state_dict": (lambda tmp: _save(tmp / "sd.pt", nn.Linear(2, 2).state_dict()),
                   r"is not a tp-vgg checkpoint \(it holds a plain state_dict\)"),
    "other_tool": (lambda tmp: _save(tmp / "other.pt", {"epoch": 3, "model": {}}),
                   r"is not a tp-vgg checkpoint \(it holds a dict\)"),
    "pickled_module": (lambda tmp: _save(tmp / "module.pt", nn.Linear(2, 2)),
                       r"holds pickled Python objects .* never unpickles"),
}


def _write(path, data):
    path.write_bytes(data)
    return path


def _save(path, obj):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_checkpoint_files_are_one_line_user_errors(tmp_path, case):
    make, message = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(UserError, match=message) as err:
        tp_vgg.load(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_pickled_module_is_never_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("PWNED",))
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "tp-vgg-checkpoint", "x": Boom()}, f)
    with pytest.raises(UserError):
        tp_vgg.load(str(path))


def test_checkpoint_that_does_not_match_its_architecture(tmp_path):
    spec = zoo_spec("cifar_vgg11")
    model = build_model(spec)
    path = str(tmp_path / "m.pt")
    tp_vgg.save(path, model, spec)
    raw = torch.load(path, weights_only=True)
    raw["model_spec"]["num_classes"] = 7
    torch.save(raw, path)
    with pytest.raises(UserError, match="does not match its model's architecture"):
        tp_vgg.load(path)


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_a_checkpoint_written_by_release_0_1_0_loads_and_evaluates_identically():
    """tests/fixtures holds a pruned checkpoint and its logits on a fixed input, both written by
    the flat-module release (commit b0a5534) before the package became subpackages: the file
    names no module of tp_vgg, so it loads with bit-identical weights and the same logits."""
    path = FIXTURES / "v0.1.0_cifar_vgg11_bn_w0.125_pruned.pt"
    ref = torch.load(FIXTURES / "v0.1.0_cifar_vgg11_bn_w0.125_logits.pt", weights_only=True)
    raw = torch.load(path, weights_only=True)
    assert raw["tp_vgg_version"] == "0.1.0"
    strings = []

    def walk(v):
        if isinstance(v, str):
            strings.append(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(k)
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk({k: v for k, v in raw.items() if k != "state_dict"})
    assert not [s for s in strings if "tp_vgg." in s]  # no stored module path
    model = tp_vgg.load(str(path))  # rebuilt from the zoo, its pruning history replayed
    loaded = model.state_dict()
    assert set(loaded) == set(raw["state_dict"])
    for k, v in raw["state_dict"].items():
        assert torch.equal(loaded[k], v), k  # the file's weights, bit for bit
    with torch.no_grad():
        out = model(ref["input"])
    # the reference logits were computed on another CPU, whose conv kernels may round the last
    # bit differently (seen: 1e-9 apart on an AMD EPYC); the weights above are exact
    torch.testing.assert_close(out, ref["logits"], rtol=1e-5, atol=1e-8)
