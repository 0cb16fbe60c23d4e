"""What a new user meets with data, weights and hints: empty class folders, class names that are
not the model's, a declared normalization, framework checkpoints as --weights, torchvision
weights that are never downloaded, and hints that finish the thought. Each suggested remedy is
applied and succeeds."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from methods_util import QUIET, TINY, assert_one_line_error
from torchvision.io import encode_png

from tp_vgg.checkpoint import store as checkpoint
from tp_vgg.data.datasets import DataConfig, load_data
from tp_vgg.data.preprocessing import Preprocessing
from tp_vgg.errors import UserError
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.train.evaluation import resolve_preprocessing

DIGITS = ["--data", "digits"]
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


def _png(path: Path, value: int) -> None:
    img = torch.full((3, 8, 8), value, dtype=torch.uint8)
    img[:, :4] = 255 - value
    path.write_bytes(bytes(encode_png(img).tolist()))


def _image_folder(root: Path, classes=("cat", "dog"), empty=("empty",)) -> Path:
    for split in ("train", "val"):
        for i, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for j in range(3):
                _png(d / f"{j}.png", 40 * i + 10 * j)
    for c in empty:
        (root / "train" / c).mkdir(parents=True)
    return root


# --------------------------------------------------------------------------------------------
# A. Data checks.

@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_an_empty_class_folder_is_refused_by_name_and_removing_it_works(tmp_path, run_cli, loader):
    root = _image_folder(tmp_path / "d")
    flags = ["--data", "imagefolder", "--data-dir", root, "--data-loader", loader]
    if loader == "stream":
        flags += ["--workers", "0"]
    model = TINY + ["--num-classes", "2"]
    r = run_cli("eval", *model, *flags, "--batch-size", "4")
    assert_one_line_error(r, f"class folder {str(root / 'train' / 'empty')!r} holds no images",
                          tmp_path / "none")
    assert "--num-classes" not in r.err  # no wrong fix (the empty folder is not an 11th class)
    r = run_cli("train", *model, *flags, "--epochs", "1", *QUIET, "--out", tmp_path / "o")
    assert_one_line_error(r, "holds no images", tmp_path / "o")

    (root / "train" / "empty").rmdir()  # the remedy: remove the folder
    r = run_cli("eval", *model, *flags, "--batch-size", "4", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out.strip().splitlines()[-1])["images"] == 6
    assert load_data(DataConfig("imagefolder", str(root), loader=loader)).class_names == ["cat", "dog"]


def test_an_empty_class_folder_of_val_is_refused_too(tmp_path):
    root = _image_folder(tmp_path / "d", empty=())
    (root / "val" / "dog").joinpath("0.png").unlink()
    for f in (root / "val" / "dog").iterdir():
        f.unlink()
    with pytest.raises(UserError, match="class folder .*val/dog' holds no images"):
        load_data(DataConfig("imagefolder", str(root)))
    _png(root / "val" / "dog" / "new.png", 99)  # the other remedy: add its images
    data = load_data(DataConfig("imagefolder", str(root)))
    assert data.test_labels.tolist() == [0, 0, 0, 1]


def _checkpoint(tmp_path: Path, names=CIFAR_NAMES, extra=None) -> Path:
    """A tiny 10-class checkpoint whose preprocessing records ``names`` (as if trained on CIFAR)."""
    spec = ModelSpec("cifar_vgg11_bn", num_classes=10, width=0.125).resolved()
    torch.manual_seed(0)
    model = build_model(spec)
    pre = Preprocessing(32, 3, [0.49, 0.48, 0.45], [0.25, 0.24, 0.26], list(names),
                        dict({"dataset": "cifar10"}, **(extra or {})))
    path = tmp_path / "c.pt"
    checkpoint.save(str(path), model, spec, preprocessing=pre)
    return path


def test_class_names_unlike_the_checkpoints_are_refused_in_eval_unless_allowed(tmp_path, run_cli):
    ck = _checkpoint(tmp_path)
    r = run_cli("eval", "--checkpoint", ck, *DIGITS)
    assert_one_line_error(r, "the digits classes (0, 1, 2, 3, 4, 5, ... (10 in all)) are not the "
                          "checkpoint's (airplane, automobile, bird, cat, deer, dog, ... (10 in "
                          "all))", tmp_path / "none")
    assert "--allow-class-mismatch" in r.err
    r = run_cli("eval", "--checkpoint", ck, *DIGITS, "--allow-class-mismatch", "--json")
    assert r.code == 0, r.err
    notes = [l for l in r.out.splitlines() if l.startswith("note: the digits classes")]
    assert len(notes) == 1 and "--allow-class-mismatch" in notes[0]
    assert json.loads(r.out.strip().splitlines()[-1])["images"] == 359


def test_class_names_unlike_the_checkpoints_are_refused_in_finetune_and_prune(tmp_path, run_cli):
    ck = _checkpoint(tmp_path)
    ft = ["finetune", "--checkpoint", ck, *DIGITS, "--epochs", "1", *QUIET]
    r = run_cli(*ft, "--out", tmp_path / "ft")
    assert_one_line_error(r, "are not the checkpoint's (airplane", tmp_path / "ft")
    r = run_cli(*ft, "--out", tmp_path / "ft", "--allow-class-mismatch")
    assert r.code == 0, r.err
    assert checkpoint.load_checkpoint(str(tmp_path / "ft" / "last.pt")).preprocessing \
        .class_names == [str(i) for i in range(10)]

    pr = ["prune", "--checkpoint", ck, "--ratio", "0.3", *DIGITS, "--bn-recalibrate", "1"]
    r = run_cli(*pr, "--out", tmp_path / "p")
    assert_one_line_error(r, "are not the checkpoint's (airplane", tmp_path / "p")
    r = run_cli(*pr, "--out", tmp_path / "p", "--allow-class-mismatch")
    assert r.code == 0, r.err
    assert (tmp_path / "p" / "pruned.pt").is_file()


def test_torchvision_category_names_are_not_compared_with_folder_names(tmp_path):
    """An ImageNet folder names classes by WordNet id where torchvision's weights say 'tench'."""
    data = load_data(DataConfig("digits"))
    spec = ModelSpec("cifar_vgg11_bn", num_classes=10, width=0.125)
    weights = Preprocessing(32, 3, [0.5] * 3, [0.2] * 3, CIFAR_NAMES, {"weights": "X.DEFAULT"})
    pre = resolve_preprocessing(data, spec, weights)
    assert pre.mean == [0.5] * 3 and pre.extra["normalization"] == "weights"
    with pytest.raises(UserError, match="are not the checkpoint's"):
        resolve_preprocessing(data, spec, dict(weights.to_dict(), dataset="cifar10"))


def test_an_onnx_file_with_other_class_names_is_refused_unless_allowed(tmp_path, run_cli):
    pytest.importorskip("onnxruntime")
    ck = _checkpoint(tmp_path)
    onnx = tmp_path / "m.onnx"
    r = run_cli("export", "--checkpoint", ck, "--onnx", onnx)
    assert r.code == 0, r.err
    r = run_cli("eval", "--model", onnx, *DIGITS)
    assert_one_line_error(r, "are not the ONNX file's (airplane, automobile", tmp_path / "none")
    r = run_cli("eval", "--model", onnx, *DIGITS, "--allow-class-mismatch", "--json")
    assert r.code == 0, r.err
    assert any(l.startswith("note: the digits classes") for l in r.out.splitlines())
    assert "recorded in the ONNX file" in r.out


def test_a_declared_mean_and_std_are_used_said_and_stored(tmp_path, run_cli):
    r = run_cli("train", *TINY, *DIGITS, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                "--epochs", "1", *QUIET, "--out", tmp_path / "t")
    assert r.code == 0, r.err
    assert "normalization: mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25] (declared with " \
           "--mean/--std)" in r.out
    pre = checkpoint.load_checkpoint(str(tmp_path / "t" / "last.pt")).preprocessing
    assert pre.mean == [0.5] * 3 and pre.std == [0.25] * 3
    assert pre.extra["normalization"] == "declared"
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["preprocessing"]["normalization"] == "declared"

    # the checkpoint's own normalization is then used, and said
    r = run_cli("eval", "--checkpoint", tmp_path / "t" / "last.pt", *DIGITS)
    assert r.code == 0, r.err
    assert "std [0.25, 0.25, 0.25] (recorded in the checkpoint)" in r.out
    # --data-kwargs declares it too, and it wins over the checkpoint's
    r = run_cli("eval", "--checkpoint", tmp_path / "t" / "last.pt", "--data", "digits",
                "--data-kwargs", '{"mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3]}')
    assert r.code == 0, r.err
    assert "mean [0.4, 0.4, 0.4], std [0.3, 0.3, 0.3] (declared" in r.out

    # prune with data records it in pruned.pt and report.json
    r = run_cli("prune", *TINY, "--ratio", "0.3", *DIGITS, "--bn-recalibrate", "1",
                "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--out", tmp_path / "p")
    assert r.code == 0, r.err
    pre = checkpoint.load_checkpoint(str(tmp_path / "p" / "pruned.pt")).preprocessing
    assert pre.std == [0.25] * 3 and pre.extra["normalization"] == "declared"
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["preprocessing"]["normalization"] == "declared"
    assert report["preprocessing"]["mean"] == [0.5] * 3


def test_without_a_declaration_the_estimate_from_the_data_is_said(run_cli):
    r = run_cli("eval", *TINY, *DIGITS)
    assert r.code == 0, r.err
    lines = [l for l in r.out.splitlines() if l.startswith("normalization:")]
    assert len(lines) == 1 and "(estimated from the training images of digits)" in lines[0]
    data = load_data(DataConfig("digits"))
    pre = resolve_preprocessing(data, ModelSpec("cifar_vgg11_bn", width=0.125))
    assert pre.extra["normalization"] == "data" and pre.mean == data.stats()[0]


@pytest.mark.parametrize("flags, message", [
    (["--mean", "0.5,0.5", "--std", "0.25,0.25"],
     "--mean/--std have 2 values each but digits images have 3 channels; accepted: 3"),
    (["--mean", "0.5,0.5,0.5", "--std", "0.25,0,0.25"], "--std 0.25,0,0.25: 0 is not > 0"),
    (["--mean", "0.5,0.5,0.5", "--std", "0.25,-1,0.25"], "-1 is not > 0"),
    (["--mean", "0.5,0.5,0.5", "--std", "0.2,0.2"], "has 3 values but --std 0.2,0.2 has 2"),
    (["--mean", "0.5,x"], "'0.5,x' is not a comma-separated list of numbers"),
    (["--data-kwargs", '{"mean": [0.5, 0.5, 0.5], "std": "wide"}'],
     "--data-kwargs std 'wide' is not a list of numbers"),
    (["--mean", "0.5,0.5,0.5"], "--mean is given without --std"),
])
def test_bad_normalization_values_are_one_line_errors(tmp_path, run_cli, flags, message):
    r = run_cli("eval", *TINY, *DIGITS, *flags)
    assert_one_line_error(r, message, tmp_path / "none")


def test_the_suggested_pair_of_mean_and_std_works(run_cli):
    r = run_cli("eval", *TINY, *DIGITS, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")
    assert r.code == 0, r.err
    cfg = DataConfig("digits", mean=[0.5] * 3, std=[0.25] * 3)
    pre = resolve_preprocessing(load_data(cfg), ModelSpec("cifar_vgg11_bn", width=0.125))
    assert (pre.mean, pre.std, pre.extra["normalization"]) == ([0.5] * 3, [0.25] * 3, "declared")


# --------------------------------------------------------------------------------------------
# B. Weights: framework checkpoints, --weights-key, how many tensors fit.

TINY_SPEC = ModelSpec("cifar_vgg11_bn", num_classes=10, width=0.125)


def _trained_state(seed: int = 1) -> tuple:
    from conftest import randomize

    torch.manual_seed(seed)
    model = randomize(build_model(TINY_SPEC), seed).eval()
    return model, model.state_dict()


def _outputs_equal(a, b) -> bool:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_a_lightning_checkpoint_loads_with_no_extra_flag(tmp_path, run_cli):
    from tp_vgg.checkpoint.source import ModelSource, load_source

    original, sd = _trained_state()
    path = tmp_path / "epoch=3-step=40.ckpt"
    torch.save({"epoch": 3, "global_step": 40, "pytorch-lightning_version": "2.2.0",
                "state_dict": {"model." + k: v for k, v in sd.items()},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}],
                "lr_schedulers": [], "callbacks": {}, "hyper_parameters": {"lr": 0.1}}, path)
    loaded = load_source(ModelSource(spec=TINY_SPEC, weights_file=str(path)))
    assert _outputs_equal(loaded.model, original)
    w = loaded.meta["weights"]
    assert w["nested_under"] == ["state_dict"] and w["stripped_prefixes"] == ["model."]
    assert w["loaded"] == len(sd) and w["missing"] == w["unexpected"] == 0

    r = run_cli("prune", *TINY, "--weights", path, "--ratio", "0.3", "--out", tmp_path / "p")
    assert r.code == 0, r.err
    meta = checkpoint.load_checkpoint(str(tmp_path / "p" / "pruned.pt")).meta
    assert meta["weights"]["stripped_prefixes"] == ["model."]


def test_any_attribute_prefix_common_to_every_key_is_undone(tmp_path):
    from tp_vgg.checkpoint.source import ModelSource, load_source

    original, sd = _trained_state()
    path = tmp_path / "w.pt"
    torch.save({"module.my_classifier." + k: v for k, v in sd.items()}, path)
    loaded = load_source(ModelSource(spec=TINY_SPEC, weights_file=str(path)))
    assert _outputs_equal(loaded.model, original)
    assert loaded.meta["weights"]["stripped_prefixes"] == ["module.", "my_classifier."]


def test_two_prefixes_that_both_fit_are_ambiguous_and_weights_key_picks_one(tmp_path, run_cli):
    original, sd = _trained_state()
    _, other = _trained_state(seed=2)
    path = tmp_path / "two.pt"
    torch.save({**{"model." + k: v for k, v in sd.items()},
                **{"model_ema." + k: v for k, v in other.items()}}, path)
    flags = [*TINY, "--weights", path, "--ratio", "0.3"]
    r = run_cli("prune", *flags, "--out", tmp_path / "a")
    assert_one_line_error(r, "is ambiguous: the tensors under 'model.' and under 'model_ema.' "
                          "each fit the model; pick one with --weights-key model or --weights-key "
                          "model_ema", tmp_path / "a")
    r = run_cli("prune", *flags, "--weights-key", "model_ema", "--out", tmp_path / "b")
    assert r.code == 0, r.err
    meta = checkpoint.load_checkpoint(str(tmp_path / "b" / "pruned.pt")).meta["weights"]
    assert meta["key"] == "model_ema" and meta["stripped_prefixes"] == ["model_ema."]

    from tp_vgg.checkpoint.source import ModelSource, load_source
    ema = load_source(ModelSource(spec=TINY_SPEC, weights_file=str(path), weights_key="model"))
    assert _outputs_equal(ema.model, original)


def test_weights_key_picks_a_nested_entry_and_names_the_keys_present(tmp_path, run_cli):
    from tp_vgg.checkpoint.source import ModelSource, load_source

    _, sd = _trained_state()
    ema_model, ema = _trained_state(seed=3)
    path = tmp_path / "timm.pth.tar"
    torch.save({"epoch": 9, "arch": "vgg", "state_dict": sd, "state_dict_ema": ema}, path)
    loaded = load_source(ModelSource(spec=TINY_SPEC, weights_file=str(path),
                                     weights_key="state_dict_ema"))
    assert _outputs_equal(loaded.model, ema_model)
    assert loaded.meta["weights"]["nested_under"] == ["state_dict_ema"]

    r = run_cli("profile", *TINY, "--weights", path, "--weights-key", "ema")
    assert_one_line_error(r, "--weights-key 'ema' is not in --weights", tmp_path / "none")
    assert "keys present: epoch, arch, state_dict, state_dict_ema" in r.err
    r = run_cli("profile", *TINY, "--weights-key", "ema")
    assert_one_line_error(r, "--weights-key picks an entry of a --weights PATH file", tmp_path / "n")


def test_keys_under_one_prefix_among_others_suggest_weights_key_which_works(tmp_path, run_cli):
    original, sd = _trained_state()
    path = tmp_path / "w.ckpt"
    torch.save({"state_dict": {**{"net." + k: v for k, v in sd.items()},
                               "criterion.weight": torch.ones(10)}}, path)
    r = run_cli("profile", *TINY, "--weights", path)
    assert_one_line_error(r, "the tensors under 'net.' alone fit the model exactly: pick them "
                          "with --weights-key net", tmp_path / "none")
    assert "--no-strict-weights" not in r.err  # 0 of 60 fit as named: not the fix
    r = run_cli("profile", *TINY, "--weights", path, "--weights-key", "net", "--json")
    assert r.code == 0, r.err


def test_no_strict_weights_refuses_when_fewer_than_half_fit(tmp_path, run_cli):
    path = tmp_path / "wide.pt"
    torch.save(build_model(ModelSpec("cifar_vgg11_bn", width=0.25)).state_dict(), path)
    r = run_cli("profile", *TINY, "--weights", path, "--no-strict-weights")
    assert_one_line_error(r, "only 9 of the model's 60 tensors fit", tmp_path / "none")
    r = run_cli("profile", *TINY, "--weights", path)  # strict: --no-strict-weights not offered
    assert_one_line_error(r, "does not fit the model (9 of the model's 60 tensors fit)",
                          tmp_path / "none")
    assert "--no-strict-weights" not in r.err

    path = tmp_path / "junk.pt"
    torch.save({"a.weight": torch.zeros(3), "b.bias": torch.zeros(2)}, path)
    r = run_cli("profile", *TINY, "--weights", path, "--no-strict-weights")
    assert_one_line_error(r, "only 0 of the model's 60 tensors fit", tmp_path / "none")


def test_strict_error_offers_no_strict_weights_when_most_fit_and_it_works(tmp_path, run_cli):
    from tp_vgg.checkpoint.source import ModelSource, load_source

    _, sd = _trained_state()
    path = tmp_path / "head100.pt"
    torch.save(build_model(ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=100))
               .state_dict() | {k: v for k, v in sd.items() if not k.startswith("classifier.2")},
               path)
    r = run_cli("profile", *TINY, "--weights", path)
    assert_one_line_error(r, "or pass --no-strict-weights to load only the tensors that fit",
                          tmp_path / "none")
    r = run_cli("profile", *TINY, "--weights", path, "--no-strict-weights", "--json")
    assert r.code == 0, r.err
    loaded = load_source(ModelSource(spec=TINY_SPEC, weights_file=str(path), strict_weights=False))
    assert loaded.meta["weights"]["loaded"] == 58
    assert torch.equal(loaded.model.state_dict()["features.0.weight"], sd["features.0.weight"])


def test_the_closest_prefix_mapping_is_shown(tmp_path, run_cli):
    _, sd = _trained_state()
    path = tmp_path / "bb.pt"
    torch.save({("backbone." + k if k.startswith("features") else "head." + k): v
                for k, v in sd.items()}, path)
    r = run_cli("profile", *TINY, "--weights", path)
    assert_one_line_error(r, "the closest prefix mapping found, file 'backbone.' -> model '', "
                          "would match 56 of the model's 60 tensors", tmp_path / "none")


def test_a_prefixed_checkpoint_of_another_head_is_loaded_by_following_the_hints(tmp_path, run_cli):
    """Lightning keys of a 100-class model into a 10-class one: --weights-key model (the closest
    mapping), then --no-strict-weights (58 of 60 fit) -- each as the error before says."""
    head100 = build_model(ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=100)).state_dict()
    path = tmp_path / "l.ckpt"
    torch.save({"epoch": 1, "state_dict": {"model." + k: v for k, v in head100.items()}}, path)
    r = run_cli("profile", *TINY, "--weights", path)
    assert_one_line_error(r, "the closest prefix mapping found, file 'model.' -> model '', would "
                          "match 58 of the model's 60 tensors (--weights-key model applies it)",
                          tmp_path / "none")
    r = run_cli("profile", *TINY, "--weights", path, "--weights-key", "model")
    assert_one_line_error(r, "(58 of the model's 60 tensors fit): 2 of the wrong shape", tmp_path / "n")
    assert "or pass --no-strict-weights" in r.err
    r = run_cli("profile", *TINY, "--weights", path, "--weights-key", "model",
                "--no-strict-weights", "--json")
    assert r.code == 0, r.err
    assert "loaded 58 of the model's 60 tensors" in r.out


# --------------------------------------------------------------------------------------------
# C. No network, ever: torchvision weights come from the torch hub cache only.

@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt in this process is refused and recorded."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_torchvision_weights_not_cached_name_the_file_and_touch_no_network(
        tmp_path, monkeypatch, run_cli, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    r = run_cli("profile", "--model", "vgg16_bn", "--weights", "DEFAULT")
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "vgg16_bn-6c64b313.pth"
    assert_one_line_error(r, f"expected the file {expected} ", tmp_path / "none")
    assert "tp-vgg never downloads" in r.err
    assert "Downloading" not in r.out + r.err
    assert no_network == []
    assert not (tmp_path / "torch" / "hub" / "checkpoints").exists() or \
        not any((tmp_path / "torch" / "hub" / "checkpoints").iterdir())


@pytest.mark.slow
def test_torchvision_weights_copied_into_the_cache_are_read_from_there(
        tmp_path, monkeypatch, no_network):
    """The remedy the error names: the file at that path (here random weights of the right
    shapes, ~0.5 GB) is what the model gets, with no connection."""
    from tp_vgg.models.zoo import cached_weights_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _, path = cached_weights_file("vgg11", "IMAGENET1K_V1")
    assert path == str(tmp_path / "torch" / "hub" / "checkpoints" / "vgg11-8a719046.pth")
    Path(path).parent.mkdir(parents=True)
    torch.manual_seed(5)
    sd = build_model(ModelSpec("vgg11")).state_dict()
    torch.save(sd, path)
    with pytest.raises(UserError, match="have 1000 classes; --num-classes 10 does not fit them: "
                                         "leave --num-classes out"):
        build_model(ModelSpec("vgg11", weights="IMAGENET1K_V1", num_classes=10))
    model = build_model(ModelSpec("vgg11", weights="IMAGENET1K_V1", input_size=32))
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    assert no_network == []


def test_a_corrupt_cached_torchvision_file_is_one_line(tmp_path, monkeypatch, no_network):
    from tp_vgg.models.zoo import cached_weights_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _, path = cached_weights_file("vgg11", "DEFAULT")
    Path(path).parent.mkdir(parents=True)
    Path(path).write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(UserError, match="cannot read torchvision weights .*delete the file and "
                                        "copy it again"):
        build_model(ModelSpec("vgg11", weights="DEFAULT"))
    assert no_network == []


# --------------------------------------------------------------------------------------------
# D. Hints that finish the thought; each applied.

MODEL_FILE = '''
import torch.nn as nn

raise_on_import = True  # nothing here may run before the user names a factory


def make(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def counted(num_classes):
    return make(num_classes)


def named(name, num_classes=10):
    assert name == "small", name
    return make(num_classes)


class Block(nn.Module):
    pass


def _helper():
    return None
'''


def test_a_model_file_without_factory_lists_its_callables_without_running_it(tmp_path, run_cli):
    f = tmp_path / "mine" / "myvgg.py"
    f.parent.mkdir()
    f.write_text(MODEL_FILE + "\nopen(__file__ + '.ran', 'w').write('ran')\n")
    r = run_cli("profile", "--model", f)
    assert_one_line_error(r, f"--model {str(f)!r} names a file but not the callable that builds "
                          f"the model: add :factory, e.g. --model {f}:make; callables defined in "
                          "it: make, counted, named, Block, _helper", tmp_path / "none")
    assert "unknown model" not in r.err and "cifar_vgg11" not in r.err
    assert not (tmp_path / "mine" / "myvgg.py.ran").exists()  # read with ast, never run
    r = run_cli("profile", "--model", f"{f}:")
    assert_one_line_error(r, "add :factory, e.g. --model", tmp_path / "none")

    r = run_cli("profile", "--model", f"{f}:make", "--json")  # the hint applied
    assert r.code == 0, r.err
    assert json.loads(r.out)["params"] > 0


def test_a_missing_model_file_is_said_plainly(tmp_path, run_cli):
    r = run_cli("profile", "--model", tmp_path / "nope.py")
    assert_one_line_error(r, "does not exist; accepted: a zoo name", tmp_path / "none")


def test_a_required_factory_argument_suggests_model_kwargs_which_works(tmp_path, run_cli):
    f = tmp_path / "myvgg.py"
    f.write_text(MODEL_FILE)
    r = run_cli("profile", "--model", f"{f}:named")
    assert_one_line_error(r, f"factory '{f}:named' needs the argument 'name', not given "
                          "(called with {}); pass --model-kwargs '{\"name\": ...}'",
                          tmp_path / "none")
    r = run_cli("profile", "--model", f"{f}:named", "--model-kwargs", '{"name": "small"}', "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["params"] > 0


def test_a_required_num_classes_suggests_the_flag_which_works(tmp_path, run_cli):
    f = tmp_path / "myvgg.py"
    f.write_text(MODEL_FILE)
    r = run_cli("profile", "--model", f"{f}:counted")
    assert_one_line_error(r, "needs the argument 'num_classes', not given (called with {}); pass "
                          "--num-classes N", tmp_path / "none")
    r = run_cli("profile", "--model", f"{f}:counted", "--num-classes", "7", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["params"] > 0
