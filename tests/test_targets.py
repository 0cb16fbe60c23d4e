"""Target-driven pruning: --target-speedup / --target-macs, uniform and --global."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomize
from methods_util import assert_one_line_error, models, read_report

import tp_vgg
from tp_vgg import PruneConfig, UserError
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.pruning import targets
from tp_vgg.pruning.graph import out_channels

SPEC = ModelSpec("cifar_vgg11_bn", width=0.125).resolved()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize(build_model(SPEC))


@pytest.mark.parametrize("speedup,global_pruning", [(2.0, False), (4.0, False), (4.0, True)])
def test_target_speedup_is_reached_closely(model, speedup, global_pruning):
    before = tp_vgg.count(model, SPEC).macs
    cfg, plan = targets.solve(model, SPEC, PruneConfig(importance="l1",
                                                       global_pruning=global_pruning),
                              targets.Target(speedup=speedup))
    assert out_channels(model) == out_channels(build_model(SPEC))  # the model is not touched
    pruned = copy.deepcopy(model)
    tp_vgg.prune(pruned, SPEC, cfg)
    after = tp_vgg.count(pruned, SPEC).macs
    assert after == plan.predicted_macs
    assert speedup <= before / after < speedup * 1.12
    # small steps: MACs fall at every step, the last one is the first at or below the goal
    macs = [m for _, m in plan.steps[:-1]]
    assert all(m > plan.goal_macs for r, m in plan.steps if r < plan.ratio)
    assert plan.steps[-1] == [plan.ratio, after] and len(plan.steps) > 5
    # the default --max-layer-ratio keeps at least a quarter of every layer
    kept = out_channels(pruned)
    full = out_channels(model)
    assert all(kept[n] >= full[n] * (1 - targets.DEFAULT_MAX_LAYER_RATIO) - 1e-9 for n in full)
    if not global_pruning:
        assert cfg.ratio <= targets.DEFAULT_MAX_LAYER_RATIO
        assert len(macs) == len(set(macs))


def test_target_macs(model):
    goal = 1_000_000
    cfg, plan = targets.solve(model, SPEC, PruneConfig(), targets.Target(macs=goal))
    pruned = copy.deepcopy(model)
    tp_vgg.prune(pruned, SPEC, cfg)
    assert goal * 0.9 < tp_vgg.count(pruned, SPEC).macs <= goal


def test_fixed_layer_ratios_stay_and_the_rest_reach_the_target(model):
    cfg, plan = targets.solve(model, SPEC, PruneConfig(layer_ratios={"features.0": 0.0}),
                              targets.Target(speedup=3))
    pruned = copy.deepcopy(model)
    tp_vgg.prune(pruned, SPEC, cfg)
    assert pruned.features[0].out_channels == model.features[0].out_channels
    assert tp_vgg.count(pruned, SPEC).macs <= tp_vgg.count(model, SPEC).macs / 3


@pytest.mark.parametrize("target,message", [
    (targets.Target(speedup=40), "cannot be reached while every layer keeps at least 25% of its "
                                 "channels: at most"),
    (targets.Target(speedup=0.5), "--target-speedup must be a number > 1"),
    (targets.Target(macs=10**12), "is not below the model's"),
    (targets.Target(), "give one of --target-speedup X, --target-macs N or --target-latency MS"),
])
def test_bad_or_unreachable_targets_are_user_errors(model, target, message):
    with pytest.raises(UserError, match=message):
        targets.solve(model, SPEC, PruneConfig(), target)


def test_round_to_never_empties_a_layer(model):
    """--round-to rounds a kept count down: on an 8-channel layer, K 8 empties it at any ratio, so
    the target is refused in one line instead of building a layer with 0 channels."""
    with pytest.raises(UserError, match="cannot be reached with --round-to 8: at most 1.00x .* "
                                        "would keep 0 channels"):
        targets.solve(model, SPEC, PruneConfig(round_to=8), targets.Target(speedup=2))
    cfg, plan = targets.solve(model, SPEC, PruneConfig(round_to=4), targets.Target(speedup=2))
    pruned = copy.deepcopy(model)
    tp_vgg.prune(pruned, SPEC, cfg)
    assert all(c % 4 == 0 and c > 0 for n, c in out_channels(pruned).items()
               if n != "classifier.2")  # the logits keep their 10
    assert tp_vgg.count(pruned, SPEC).macs == plan.predicted_macs <= plan.goal_macs


def test_raising_max_layer_ratio_reaches_further(model):
    with pytest.raises(UserError):
        targets.solve(model, SPEC, PruneConfig(), targets.Target(speedup=20))
    cfg, plan = targets.solve(model, SPEC, PruneConfig(max_layer_ratio=0.9),
                              targets.Target(speedup=20))
    assert plan.max_layer_ratio == 0.9 and plan.predicted_macs <= plan.goal_macs


@pytest.mark.parametrize("which", ["zoo", "user"])
def test_cli_target_report_says_what_was_reached_and_how(run_cli, tmp_path, which):
    out = tmp_path / "out"
    r = run_cli("prune", *models(tmp_path)[which], "--target-speedup", "2.5", "--global",
                "--out", out)
    assert r.code == 0, r.err
    rep = read_report(out)
    t = rep["target"]
    assert t["reached_macs"] == rep["after"]["macs"] <= t["goal_macs"]
    assert t["reached_speedup"] >= 2.5 and t["mode"] == "global"
    assert t["target"] == {"speedup": 2.5, "macs": None, "latency": None}
    assert t["max_layer_ratio"] == targets.DEFAULT_MAX_LAYER_RATIO
    assert rep["config"]["ratio"] == t["ratio"] and t["steps"]
    assert "reached" in r.out and "fewer" in t["how"]
    r = run_cli("prune", *models(tmp_path)[which], "--target-macs", f"{t['reached_macs']}",
                "--out", tmp_path / "again")
    assert r.code == 0, r.err
    assert read_report(tmp_path / "again")["after"]["macs"] <= t["reached_macs"]


@pytest.mark.parametrize("extra,message", [
    (["--target-speedup", "2", "--ratio", "0.3"], "--ratio cannot be combined with --target-speedup"),
    ([], "one of --ratio R, --target-speedup X, --target-macs N or --target-latency MS is required"),
    (["--target-speedup", "1"], "argument --target-speedup: '1' is not > 1"),
    (["--target-macs", "lots"], "argument --target-macs: 'lots' is not a number of MACs"),
    (["--target-speedup", "2", "--target-macs", "1M"], "not allowed with argument"),
    (["--target-speedup", "30"], "cannot be reached"),
    (["--target-speedup", "2", "--unstructured"], "--target-speedup applies to structured"),
])
def test_cli_target_mistakes_exit_2(run_cli, tmp_path, extra, message):
    out = tmp_path / "out"
    r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.125", *extra, "--out", out)
    assert_one_line_error(r, message, out)
