"""Sparsity training: --sparsity bn-l1 / group-norm, and the BN gamma report."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from conftest import randomize
from methods_util import FAKE, QUIET, TINY, TRUST, assert_one_line_error, read_report, user_model

from tp_vgg import UserError
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.pruning import sparsity

SPEC = ModelSpec("cifar_vgg11_bn", width=0.125).resolved()


def test_bn_l1_adds_reg_times_sign_gamma_to_the_gradient():
    torch.manual_seed(0)
    model = randomize(build_model(SPEC))
    with torch.no_grad():
        model.features[1].weight[:3] *= -1
    reg = sparsity.Regularizer(model, SPEC, "bn-l1", 0.01)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    reg()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            torch.testing.assert_close(m.weight.grad, 0.01 * torch.sign(m.weight))
            assert not m.bias.grad.any()
    assert not any(m.weight.grad.any() for m in model.modules() if isinstance(m, nn.Conv2d))


def test_group_norm_pulls_on_every_coupled_weight_but_not_the_logits_layer():
    torch.manual_seed(0)
    model = randomize(build_model(SPEC))
    reg = sparsity.Regularizer(model, SPEC, "group-norm", 0.01)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    reg()
    assert model.features[0].weight.grad.abs().sum() > 0
    assert model.features[1].weight.grad.abs().sum() > 0
    # the logits layer's outputs are never pruned: its rows get no pull
    assert not model.classifier[2].bias.grad.any()


def test_bn_methods_refuse_a_model_without_batchnorm():
    spec = ModelSpec("cifar_vgg11", width=0.125).resolved()
    with pytest.raises(UserError, match="--sparsity bn-l1 regularizes BatchNorm gammas but the "
                                        "model has no affine BatchNorm layer; use --sparsity group-norm"):
        sparsity.Regularizer(build_model(spec), spec, "bn-l1")
    sparsity.Regularizer(build_model(spec), spec, "group-norm")


def test_gamma_stats():
    model = build_model(SPEC)
    with torch.no_grad():
        model.features[1].weight[:4] = 1e-4
    stats = sparsity.gamma_stats(model)
    n = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert stats["channels"] == n == sum(stats["histogram"]["counts"])
    assert stats["fraction_below"]["0.001"] == pytest.approx(4 / n)
    assert stats["quantiles"]["0"] == pytest.approx(1e-4) and stats["quantiles"]["1"] == 1.0
    assert sparsity.gamma_stats(build_model(ModelSpec("cifar_vgg11", width=0.125))) is None


def test_cli_train_bn_l1_shrinks_gamma_and_reports_before_after(run_cli, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", *TINY, *FAKE, *QUIET, "--epochs", "2", "--sparsity", "bn-l1",
                "--sparsity-reg", "1", "--lr", "0.1", "--warmup-epochs", "0", "--out", out)
    assert r.code == 0, r.err
    rep = json.loads((out / "sparsity.json").read_text())
    assert rep["method"] == "bn-l1" and rep["reg"] == 1
    before, after = rep["gamma_before"], rep["gamma_after"]
    assert before["quantiles"]["0.5"] == 1.0  # BN initialized to gamma = 1
    assert after["quantiles"]["0.5"] < 0.8 * before["quantiles"]["0.5"]
    assert (out / "bn_gamma.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "BN gamma before" in r.out and "BN gamma after" in r.out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["sparsity"] == "bn-l1" and cfg["train"]["sparsity_reg"] == 1
    # then bn-scale has something to cut
    r = run_cli("prune", "--checkpoint", out / "last.pt", "--ratio", "0.5",
                "--importance", "bn-scale", "--out", tmp_path / "pruned")
    assert r.code == 0, r.err
    pruned = read_report(tmp_path / "pruned")
    assert pruned["after"]["macs"] < pruned["before"]["macs"]


def test_cli_group_norm_on_a_user_model_without_bn(run_cli, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", *user_model(tmp_path, bn=False), *FAKE, *QUIET, "--epochs", "1",
                "--sparsity", "group-norm", "--out", out)
    assert r.code == 0, r.err
    rep = json.loads((out / "sparsity.json").read_text())
    assert rep["method"] == "group-norm" and rep["gamma_before"] is None
    assert not (out / "bn_gamma.png").exists()


@pytest.mark.parametrize("which", ["zoo", "user"])
@pytest.mark.parametrize("method", ["bn-l1", "group-norm"])
def test_cli_sparsity_train_and_finetune(run_cli, tmp_path, which, method):
    model = TINY if which == "zoo" else user_model(tmp_path)
    r = run_cli("train", *model, *FAKE, *QUIET, "--epochs", "1", "--sparsity", method,
                "--out", tmp_path / "t")
    assert r.code == 0, r.err
    r = run_cli("finetune", "--checkpoint", tmp_path / "t" / "last.pt", *TRUST[which], *FAKE, *QUIET,
                "--epochs", "1", "--sparsity", method, "--sparsity-reg", "1e-3",
                "--out", tmp_path / "f")
    assert r.code == 0, r.err
    rep = json.loads((tmp_path / "f" / "sparsity.json").read_text())
    assert rep["method"] == method and rep["reg"] == 1e-3
    assert rep["gamma_after"]["channels"] == rep["gamma_before"]["channels"] > 0


@pytest.mark.parametrize("extra,message", [
    (["--sparsity", "l0"], "argument --sparsity: invalid choice: 'l0'"),
    (["--sparsity", "bn-l1", "--sparsity-reg", "-1"], "argument --sparsity-reg: '-1' is not > 0"),
    (["--model-kwargs", '{"bn": false}', "--sparsity", "bn-l1"], "use --sparsity group-norm"),
])
def test_cli_sparsity_mistakes_exit_2(run_cli, tmp_path, extra, message):
    out = tmp_path / "out"
    model = user_model(tmp_path) if "--model-kwargs" in extra else TINY
    r = run_cli("train", *model, *FAKE, *QUIET, "--epochs", "1", *extra, "--out", out)
    assert_one_line_error(r, message, out)
