"""Criteria beyond l1/l2/random: bn-scale, fpgm, lamp, taylor (torch-pruning importances)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from conftest import randomize
from methods_util import FAKE, assert_one_line_error, models, read_report, user_model

import tp_vgg
from tp_vgg import PruneConfig, UserError
from tp_vgg.data.batches import Batches, BatchTransform
from tp_vgg.data.datasets import DataConfig, load_data
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.pruning.criteria import IMPORTANCES, GradientBatches, needs_gradients
from tp_vgg.pruning.graph import out_channels

SPEC = ModelSpec("cifar_vgg11_bn", width=0.125).resolved()
TP_CLASS = {"bn-scale": tp.importance.BNScaleImportance, "fpgm": tp.importance.FPGMImportance,
            "lamp": tp.importance.LAMPImportance, "taylor": tp.importance.GroupTaylorImportance,
            "taylor-raw": tp.importance.GroupTaylorImportance,
            "group-norm": tp.importance.GroupMagnitudeImportance}


@pytest.fixture(scope="module")
def fake_batches():
    data = load_data(DataConfig("fake", kwargs={"train_size": 64, "test_size": 16}))
    return Batches(data.train_images, data.train_labels, 32,
                   BatchTransform([0.5] * 3, [0.25] * 3, 32), "cpu", train=True, augment=False)


def test_criteria_are_registered_torch_pruning_importances():
    assert {"l1", "l2", "random", "bn-scale", "fpgm", "lamp", "taylor"} <= set(IMPORTANCES.names())
    for name, cls in TP_CLASS.items():
        assert isinstance(IMPORTANCES.get(name)(PruneConfig()), cls), name


@pytest.mark.parametrize("name", list(TP_CLASS))
def test_each_criterion_prunes_every_layer_it_ranks(name, fake_batches):
    torch.manual_seed(0)
    model = randomize(build_model(SPEC))
    before = out_channels(model)
    grads = GradientBatches(fake_batches, max_batches=2) if needs_gradients(name) else None
    result = tp_vgg.prune(model, SPEC, PruneConfig(ratio=0.5, importance=name), gradients=grads)
    unranked = {"classifier.0"} if name == "bn-scale" else set()  # no BN after the hidden Linear
    for layer, c in before.items():
        if layer in result.output_layers or layer in unranked:
            assert result.channels_after[layer] == c, layer
        else:
            assert result.channels_after[layer] == int(c * 0.5), layer
    assert model(SPEC.example_input(batch=2)).shape == (2, 10)
    assert all(p.grad is None for p in model.parameters())  # taylor's gradients are cleared


def test_bn_scale_removes_the_channels_with_the_smallest_gamma():
    model = build_model(SPEC)
    gamma = torch.rand(model.features[1].num_features) + 0.5
    small = [1, 4, 6, 7]
    gamma[small] = torch.tensor([1e-3, 2e-3, 3e-3, 4e-3])
    with torch.no_grad():
        model.features[1].weight.copy_(gamma)
    result = tp_vgg.prune(model, SPEC, PruneConfig(ratio=0.5, importance="bn-scale"))
    removed = next(idx for name, _, idx in result.history if name == "features.0")
    assert sorted(removed) == small
    assert any("classifier.0" in n and "not pruned" in n for n in result.notes)


def test_bn_scale_without_batchnorm_is_refused_not_silent():
    spec = ModelSpec("cifar_vgg11", width=0.125).resolved()
    model = build_model(spec)
    with pytest.raises(UserError, match="no prunable layer of this model is followed by an affine "
                                        "BatchNorm"):
        tp_vgg.prune(model, spec, PruneConfig(ratio=0.5, importance="bn-scale"))
    assert out_channels(model) == out_channels(build_model(spec))


def test_taylor_needs_gradients():
    with pytest.raises(UserError, match="--importance taylor needs data"):
        tp_vgg.prune(build_model(SPEC), SPEC, PruneConfig(ratio=0.5, importance="taylor"))


def test_taylor_ranks_by_weight_times_gradient(fake_batches):
    """Scaling a channel's gradient signal to zero (dead filter: zero weights) makes it the
    first to go; the criterion sees the gradients of the batches it was given."""
    torch.manual_seed(0)
    model = randomize(build_model(SPEC))
    dead = [0, 3, 5, 6]
    with torch.no_grad():
        model.features[0].weight[dead] = 0
        model.features[0].bias[dead] = 0
        model.features[1].weight[dead] = 0
        model.features[1].bias[dead] = 0
    calls = []

    class Counting(GradientBatches):
        def __call__(self, m):
            calls.append(1)
            super().__call__(m)

    result = tp_vgg.prune(model, SPEC, PruneConfig(ratio=0.5, importance="taylor"),
                          gradients=Counting(fake_batches, max_batches=2))
    removed = next(idx for name, _, idx in result.history if name == "features.0")
    assert sorted(removed) == dead
    assert len(calls) == 1


def test_fpgm_and_lamp_rank_differently_from_l1():
    torch.manual_seed(0)
    base = randomize(build_model(SPEC))
    histories = {}
    for name in ("l1", "fpgm", "lamp"):
        m = copy.deepcopy(base)
        histories[name] = tp_vgg.prune(m, SPEC, PruneConfig(ratio=0.5, importance=name)).history
    assert histories["fpgm"] != histories["l1"]
    # LAMP scores are comparable across layers: under --global the layers lose different shares
    m = copy.deepcopy(base)
    after = tp_vgg.prune(m, SPEC, PruneConfig(ratio=0.5, importance="lamp", global_pruning=True,
                                              max_layer_ratio=0.8)).channels_after
    before = out_channels(base)
    shares = {round(after[n] / before[n], 2) for n in before if n != "classifier.2"}
    assert len(shares) > 1 and all(after[n] >= before[n] * 0.2 for n in before)


@pytest.mark.parametrize("which", ["zoo", "user"])
@pytest.mark.parametrize("name", list(TP_CLASS))
def test_cli_each_criterion_on_zoo_and_user_model(run_cli, tmp_path, which, name):
    out = tmp_path / "out"
    extra = FAKE + ["--taylor-batches", "2"] if needs_gradients(name) else []
    r = run_cli("prune", *models(tmp_path)[which], "--ratio", "0.5", "--importance", name,
                *extra, "--out", out)
    assert r.code == 0, r.err
    rep = read_report(out)
    assert rep["config"]["importance"] == name
    assert rep["after"]["macs"] < rep["before"]["macs"]
    assert torch.load(out / "pruned.pt", weights_only=True)["meta"]["importance"] == name
    if needs_gradients(name):
        assert f"{name}: gradients from 2 batches" in " ".join(rep["notes"])


def _layer_scores(model, name, grads):
    """Each ranked layer's channel scores under ``--global`` with criterion ``name``."""
    from tp_vgg.pruning.targets import _Ranked

    cfg = PruneConfig(ratio=0.5, importance=name, global_pruning=True, max_layer_ratio=0.8)
    ranked = _Ranked(model, SPEC, cfg, SPEC.example_input(), 0.8, grads)
    return {r: torch.as_tensor(s, dtype=torch.float64) for r, s in zip(ranked.roots,
                                                                       ranked.scores)}


def test_the_cross_layer_rankings_keep_what_per_layer_normalization_removes(fake_batches):
    """taylor is taylor-raw divided by each layer's mean: the same order inside a layer, a
    different scale per layer (which --global ranks across); group-norm's top channel in every
    layer scores 1 (normalized by its maximum)."""
    torch.manual_seed(0)
    model = randomize(build_model(SPEC))
    grads = GradientBatches(fake_batches, max_batches=2)
    raw = _layer_scores(model, "taylor-raw", grads)
    norm = _layer_scores(model, "taylor", grads)
    means = {}
    for r in raw:
        assert torch.allclose(norm[r] * raw[r].mean(), raw[r], rtol=1e-4, atol=1e-12), r
        means[r] = float(raw[r].mean())
    assert max(means.values()) > 2 * min(means.values())  # layers differ: raw keeps it
    group = _layer_scores(model, "group-norm", None)
    for r, s in group.items():
        assert float(s.max()) == pytest.approx(1.0), r
    # ranked globally, the layers lose different shares of their channels
    after = tp_vgg.prune(copy.deepcopy(model), SPEC, PruneConfig(
        ratio=0.5, importance="taylor-raw", global_pruning=True, max_layer_ratio=0.8),
        gradients=grads).channels_after
    before = out_channels(model)
    assert len({round(after[n] / before[n], 2) for n in raw}) > 1


def test_cli_criteria_that_cannot_apply_exit_2(run_cli, tmp_path):
    out = tmp_path / "out"
    r = run_cli("prune", *user_model(tmp_path, bn=False), "--ratio", "0.5",
                "--importance", "bn-scale", "--out", out)
    assert_one_line_error(r, "--importance bn-scale ranks channels by the gamma", out)
    r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--ratio", "0.5",
                "--importance", "taylor", "--out", out)
    assert_one_line_error(r, "--importance taylor needs data", out)
    r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--ratio", "0.5",
                "--importance", "taylor-raw", "--global", "--out", out)
    assert_one_line_error(r, "--importance taylor-raw needs data", out)
    r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--ratio", "0.5",
                "--taylor-batches", "3", "--out", out)
    assert_one_line_error(r, "--taylor-batches applies to --importance taylor or taylor-raw", out)


def test_global_without_importance_ranks_by_the_measured_default(run_cli, tmp_path):
    """--global alone ranks by the cross-layer criterion the frontier measured best; a named
    --importance is kept; uniform pruning stays l1."""
    from tp_vgg.pruning.criteria import DEFAULT_GLOBAL_IMPORTANCE

    for flags, want in ((["--global"], DEFAULT_GLOBAL_IMPORTANCE),
                        (["--global", "--importance", "l1"], "l1"), ([], "l1")):
        out = tmp_path / "_".join(flags or ["uniform"])
        r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--ratio", "0.4",
                    *flags, "--out", out)
        assert r.code == 0, r.err
        assert read_report(out)["config"]["importance"] == want
