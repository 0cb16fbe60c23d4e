"""Conv-BN folding and export: the exported model computes what the PyTorch model computes."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn as nn
from conftest import randomize

import tp_vgg
from tp_vgg.export import exporters as export
from tp_vgg.models.zoo import CIFAR_VGGS, ModelSpec, build_model

BN_MODELS = [n for n in CIFAR_VGGS if n.endswith("_bn")] + [
    pytest.param("vgg11_bn", marks=pytest.mark.slow)]  # torchvision form: same Sequential blocks


def spec_of(name: str) -> ModelSpec:
    if name.startswith("cifar_"):
        return ModelSpec(name, width=0.25, num_classes=10).resolved()
    return ModelSpec(name, input_size=32, num_classes=10).resolved()


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


@pytest.mark.parametrize("name", BN_MODELS)
def test_fuse_bn_removes_every_bn_and_keeps_the_output(name):
    spec = spec_of(name)
    torch.manual_seed(0)
    model = randomize(build_model(spec)).train()
    n_bn = export.count_bn(model)
    fused = export.fuse_bn(model)
    assert n_bn > 0 and export.count_bn(fused) == 0
    assert export.count_bn(model) == n_bn and model.training  # the original is untouched
    assert not fused.training
    x = spec.example_input(batch=3)
    want, got = logits(model, x), logits(fused, x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_fuse_bn_on_a_pruned_model(pruned_bn):
    spec, pruned = pruned_bn
    fused = export.fuse_bn(pruned)
    assert export.count_bn(fused) == 0
    assert export.max_abs_diff(pruned, fused, spec) <= 1e-5 * logits(
        pruned, spec.example_input(2)).abs().max().item() + 1e-7
    # the conv shapes are the pruned ones
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [
        m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]


def test_fuse_bn_leaves_unfusable_bn_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1),
                          nn.BatchNorm2d(4))
    fused = export.fuse_bn(model)
    assert export.count_bn(fused) == 1 and isinstance(fused[2], nn.BatchNorm2d)
    assert isinstance(fused[4], nn.Identity)


@pytest.fixture(scope="module")
def pruned_bn():
    spec = spec_of("cifar_vgg11_bn")
    torch.manual_seed(0)
    model = randomize(build_model(spec)).eval()
    tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.4))
    return spec, model


def test_onnx_export_matches_pytorch_at_any_batch(pruned_bn, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    spec, model = pruned_bn
    path = tmp_path / "m.onnx"
    chk = export.export_onnx(model, spec, str(path))
    assert chk.checked and chk.max_abs_diff <= 1e-3 * chk.max_abs_output + 1e-6
    assert os.listdir(tmp_path) == ["m.onnx"]  # no temp file left
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = spec.example_input(batch=5)
    got = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    want = logits(model, x)
    assert got.shape == (5, 10)
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-5 * want.abs().max().item())


def test_onnx_export_without_onnxruntime_is_unchecked(pruned_bn, tmp_path, monkeypatch):
    spec, model = pruned_bn
    monkeypatch.setattr(export, "onnxruntime_available", lambda: False)
    chk = export.export_onnx(model, spec, str(tmp_path / "m.onnx"))
    assert not chk.checked and (tmp_path / "m.onnx").stat().st_size > 0


def test_torch_export_program_round_trip(pruned_bn, tmp_path):
    spec, model = pruned_bn
    path = tmp_path / "m.pt2"
    export.export_program(export.fuse_bn(model), spec, str(path))
    loaded = torch.export.load(str(path)).module()
    x = spec.example_input(batch=3)
    want = logits(model, x)
    assert torch.allclose(loaded(x), want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


# --------------------------------------------------------------------------------------------
# CLI

@pytest.fixture(scope="module")
def pruned_ckpt(tmp_path_factory):
    from tp_vgg.cli import main

    out = tmp_path_factory.mktemp("exp") / "run"
    assert main(["prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--ratio", "0.5",
                 "--out", str(out)]) == 0
    return out / "pruned.pt"


def test_cli_export_fused_onnx_and_pt2(run_cli, pruned_ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    r = run_cli("export", "--checkpoint", pruned_ckpt, "--fuse-bn", "--onnx", tmp_path / "m.onnx",
                "--pt2", tmp_path / "m.pt2")
    assert r.code == 0, r.err
    assert "folded 8 of 8 BatchNorm layers" in r.out and "onnxruntime matches PyTorch" in r.out
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.pt2"]
    import onnx
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert not [n for n in graph.node if n.op_type == "BatchNormalization"]
    assert len([n for n in graph.node if n.op_type == "Conv"]) == 8
    model = tp_vgg.load(str(pruned_ckpt))
    spec = tp_vgg.load_checkpoint(str(pruned_ckpt)).spec
    x = spec.example_input(batch=2)
    out = torch.export.load(str(tmp_path / "m.pt2")).module()(x)
    assert torch.allclose(out, logits(model, x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--onnx", "{tmp}/missing/m.onnx"], "--onnx '{tmp}/missing/m.onnx': folder"),
    (["--pt2", "{tmp}"], "is a folder; give a file name"),
    ([], "nothing to write: give --onnx OUT.onnx and/or --pt2 OUT.pt2"),
    (["--onnx", "m.onnx", "--opset", "0"], "argument --opset: '0' is below 1"),
])
def test_cli_export_mistakes_exit_2_with_one_line(run_cli, pruned_ckpt, tmp_path, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    r = run_cli("export", "--checkpoint", pruned_ckpt, *argv)
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and message.format(tmp=tmp_path) in lines[0], r.err
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Reading the exported ONNX file: `eval` and `profile` need no model code (and no trust).

DIGITS = ["--data", "digits", "--batch-size", "32", "--progress", "none", "--threads", "1"]
FAKE_5 = ["--data", "fake", "--data-kwargs", '{"train_size": 8, "test_size": 8, "num_classes": 5}']


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory):
    """A CIFAR-form VGG trained briefly on digits, pruned, fine-tuned, exported with BN folded."""
    pytest.importorskip("onnxruntime")
    from tp_vgg.cli import main

    d = tmp_path_factory.mktemp("digits")
    assert main(["train", "--model", "cifar_vgg11_bn", "--width", "0.125", "--epochs", "3",
                 *DIGITS, "--out", str(d / "t")]) == 0
    assert main(["prune", "--checkpoint", str(d / "t" / "last.pt"), "--ratio", "0.25",
                 "--finetune-epochs", "1", *DIGITS, "--out", str(d / "p")]) == 0
    assert main(["export", "--checkpoint", str(d / "p" / "pruned.pt"), "--fuse-bn",
                 "--onnx", str(d / "m.onnx")]) == 0
    return d / "p" / "pruned.pt", d / "m.onnx"


def _json(r, whole: bool = False) -> dict:
    """`eval --json` prints its JSON as the last line, `profile --json` prints only JSON."""
    assert r.code == 0, r.err
    return json.loads(r.out if whole else r.out.strip().splitlines()[-1])


def test_eval_of_the_exported_onnx_equals_the_checkpoint(run_cli, digits_export):
    ck, onnx_file = digits_export
    # onnxruntime runs on the CPU: so does the checkpoint (cuDNN's TF32 convolutions would move
    # the loss in the 4th digit; seen on an H200)
    want = _json(run_cli("eval", "--checkpoint", ck, "--data", "digits", "--threads", "1", "--json",
                         "--device", "cpu"))
    got = _json(run_cli("eval", "--model", onnx_file, "--data", "digits", "--threads", "1", "--json"))
    assert want["top1"] > 0.5  # a trained model, not chance (10 classes)
    assert got["images"] == want["images"] == 359
    assert got["top1"] == want["top1"] and got["top5"] == want["top5"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
    assert got["onnx"] == str(onnx_file) and got["runtime"].startswith("onnxruntime")


def test_the_onnx_file_records_the_checkpoints_preprocessing(digits_export):
    import onnx

    ck, onnx_file = digits_export
    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    record = json.loads(props[export.METADATA_KEY])
    pre = tp_vgg.load_checkpoint(str(ck)).preprocessing
    assert record["preprocessing"]["mean"] == pre.mean and record["preprocessing"]["std"] == pre.std
    assert record["preprocessing"]["class_names"] == pre.class_names
    assert (record["preprocessing"]["input_size"], record["preprocessing"]["in_channels"]) == (32, 3)
    assert record["model"] == "cifar_vgg11_bn"


def test_profile_of_the_exported_onnx_counts_the_checkpoints_macs(run_cli, digits_export):
    ck, onnx_file = digits_export
    want = _json(run_cli("profile", "--checkpoint", ck, "--json"), whole=True)
    got = _json(run_cli("profile", "--model", onnx_file, "--json", "--latency",
                        "--batch-sizes", "1,4", "--repeats", "3", "--threads", "1"), whole=True)
    assert got["macs"] == want["macs"] > 0
    assert [l["macs"] for l in got["layers"]] == [l["macs"] for l in want["layers"]
                                                  if l["type"] in ("Conv2d", "Linear")]
    assert [l["out_channels"] for l in got["layers"]] == [
        l["out_channels"] for l in want["layers"] if l["type"] in ("Conv2d", "Linear")]
    assert set(got["latency"]["timings"]) == {"1", "4"}
    assert all(t["model"]["median_ms"] > 0 for t in got["latency"]["timings"].values())


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "{tmp}/none.onnx", "--data", "digits"], "ONNX file '{tmp}/none.onnx' does not exist"),
    (["eval", "--model", "{tmp}/junk.onnx", "--data", "digits"],
     "'{tmp}/junk.onnx' is not an ONNX model onnxruntime can load"),
    (["prune", "--model", "{onnx}", "--ratio", "0.5", "--out", "{tmp}/o"],
     "is an ONNX file: `tp-vgg eval` and `tp-vgg profile` read it"),
    (["eval", "--model", "{onnx}", "--data", "digits", "--num-classes", "3"],
     "--num-classes does not apply to an ONNX file"),
    (["eval", "--model", "{onnx}", *FAKE_5], "the model has 10 outputs but fake has 5 classes"),
    (["profile", "--model", "{onnx}", "--latency", "--device", "cuda"],
     "tp-vgg runs ONNX files on the CPU"),
    (["profile", "--model", "{onnx}", "--repeats", "0", "--latency"], "--repeats must be an integer >= 1"),
])
def test_onnx_mistakes_exit_2_with_one_line(run_cli, digits_export, tmp_path, argv, message):
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf" * 10)

    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp_path)).replace("{onnx}", str(digits_export[1]))

    r = run_cli(*map(fill, argv))
    assert r.code == 2, (r.code, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and fill(message) in lines[0], r.err
