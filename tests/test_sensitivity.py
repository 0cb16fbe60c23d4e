"""Sensitivity analysis (Li et al. 2017): per-layer curves, CSV + PNG, --layer-ratios."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from methods_util import FAKE, TRUST, assert_one_line_error, models, read_report

from tp_vgg import UserError
from tp_vgg.jobs import sensitivity as job
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.pruning import sensitivity

SPEC = ModelSpec("cifar_vgg11_bn", width=0.125).resolved()


def _evaluate_by_channels(model):
    """A stand-in for accuracy: features.0 (8 channels) is fragile, every channel lost costs 2
    points; features.4 (16) costs 0.2 point per channel; every other layer costs nothing."""
    lost0 = 8 - model.features[0].out_channels
    lost4 = 16 - model.features[4].out_channels
    return 0.9 - 0.02 * lost0 - 0.002 * lost4


def test_analyze_and_recommend_follow_the_curves():
    model = build_model(SPEC)
    res = sensitivity.analyze(model, SPEC, _evaluate_by_channels, ratios=[0.25, 0.5, 0.75],
                              layers=["features.0", "features.4", "features.8"],
                              log=lambda s: None)
    assert res.baseline_top1 == pytest.approx(0.9)
    assert [r["ratio"] for r in res.curve("features.0")] == [0.25, 0.5, 0.75]
    drop = {(r["layer"], r["ratio"]): r["drop_points"] for r in res.rows}
    assert drop[("features.0", 0.25)] == pytest.approx(4.0)     # 2 channels x 2 points
    assert drop[("features.4", 0.75)] == pytest.approx(2.4)     # 12 channels x 0.2 point
    assert drop[("features.8", 0.75)] == pytest.approx(0.0)
    assert sensitivity.recommend(res, 1.0) == {"features.4": 0.25, "features.8": 0.75}
    assert sensitivity.recommend(res, 4.5) == {"features.0": 0.25, "features.4": 0.75,
                                               "features.8": 0.75}
    text = sensitivity.csv_text(res)
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 9 and rows[0].keys() == set(sensitivity.CSV_FIELDS)


def test_recommendation_stops_at_the_first_ratio_over_budget():
    res = sensitivity.Sensitivity(0.9, 100, ["a"], [0.1, 0.2, 0.3], "l1", rows=[
        {"layer": "a", "ratio": 0.1, "drop_points": 0.2},
        {"layer": "a", "ratio": 0.2, "drop_points": 1.5},   # noisy: over budget ...
        {"layer": "a", "ratio": 0.3, "drop_points": 0.5},   # ... then under again
    ])
    assert sensitivity.recommend(res, 1.0) == {"a": 0.1}


def test_bad_inputs():
    model = build_model(SPEC)
    with pytest.raises(UserError, match="--ratios must be numbers in"):
        sensitivity.analyze(model, SPEC, _evaluate_by_channels, ratios=[0.5, 1.0])
    with pytest.raises(UserError, match="--layers names 'features.99', not a prunable layer"):
        sensitivity.analyze(model, SPEC, _evaluate_by_channels, layers=["features.99"])
    with pytest.raises(UserError, match="--layers names 'classifier.2'"):  # the logits layer
        sensitivity.analyze(model, SPEC, _evaluate_by_channels, layers=["classifier.2"])


@pytest.mark.parametrize("which", ["zoo", "user"])
def test_cli_sensitivity_writes_csv_png_and_usable_layer_ratios(run_cli, tmp_path, which):
    spec_flags = models(tmp_path)[which]
    assert run_cli("prune", *spec_flags, "--ratio", "0", "--out", tmp_path / "m").code == 0
    out = tmp_path / "sens"
    r = run_cli("sensitivity", "--checkpoint", tmp_path / "m" / "pruned.pt", *TRUST[which], *FAKE,
                "--ratios", "0.25,0.5", "--eval-images", "32", "--budget", "100", "--out", out)
    assert r.code == 0, r.err
    rep = json.loads((out / "report.json").read_text())
    rows = list(csv.DictReader((out / "sensitivity.csv").read_text().splitlines()))
    layers = {row["layer"] for row in rows}
    assert len(rows) == 2 * len(layers) and rep["test_images"] == 32
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ratios = json.loads((out / "layer_ratios.json").read_text())
    assert ratios == rep["layer_ratios"] and set(ratios) == layers   # budget 100: all at 0.5
    assert set(ratios.values()) == {0.5}
    assert "--layer-ratios" in rep["command"] and "next: tp-vgg prune" in r.out
    assert all(flag in rep["command"].split() for flag in TRUST[which])  # the command runs as is
    r = run_cli("prune", "--checkpoint", tmp_path / "m" / "pruned.pt", *TRUST[which], "--ratio", "0",
                "--layer-ratios", json.dumps(ratios), "--out", tmp_path / "p")
    assert r.code == 0, r.err
    assert read_report(tmp_path / "p")["after"]["macs"] == rep["predicted"]["macs_after"]


@pytest.mark.parametrize("extra,message", [
    (["--ratios", "0.5,1.5"], "argument --ratios: '0.5,1.5': ratios must be in (0, 1)"),
    (["--layers", "nope"], "--layers names 'nope', not a prunable layer"),
    (["--budget", "-1"], "argument --budget: '-1' is not >= 0"),
])
def test_cli_sensitivity_mistakes_exit_2(run_cli, tmp_path, extra, message):
    out = tmp_path / "out"
    r = run_cli("sensitivity", "--model", "cifar_vgg11_bn", "--width", "0.125", *FAKE, *extra,
                "--out", out)
    assert_one_line_error(r, message, out)


def test_suggested_command_repeats_the_model_flags():
    from tp_vgg.cli import build_parser
    from tp_vgg.cli.methods_cmds import _source_flags

    args = build_parser().parse_args(["sensitivity", "--model", "cifar_vgg11_bn", "--width",
                                      "0.125", "--num-classes", "7", "--data", "fake", "--out", "x"])
    assert _source_flags(args) == "--model cifar_vgg11_bn --num-classes 7 --width 0.125"


def test_sensitivity_study_runs_as_a_library_call(tmp_path):
    """tp_vgg.jobs.sensitivity.run_sensitivity: the study `tp-vgg sensitivity` runs, without the command line;
    nothing is written without out_dir."""
    from tp_vgg.checkpoint.source import ModelSource
    from tp_vgg.data.datasets import DataConfig

    study = job.SensitivityStudy(
        ModelSource(spec=ModelSpec("cifar_vgg11_bn", width=0.125)), DataConfig("digits"),
        ratios=[0.5], budget=100.0, eval_images=60, layers=["features.0", "features.4"])
    logged = []
    rep = job.run_sensitivity(study, log=logged.append)
    assert set(rep["layer_ratios"]) == {"features.0", "features.4"}    # a budget of 100 points
    assert rep["predicted"]["macs_after"] < rep["predicted"]["macs_before"]
    assert rep["test_images"] == 60 and rep["command"].startswith("tp-vgg prune --model cifar_vgg11_bn")
    assert any(line.startswith("next: tp-vgg prune") for line in logged)
    assert not any(line.startswith("wrote") for line in logged)
    job.run_sensitivity(study, tmp_path / "s", log=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "layer_ratios.json", "report.json", "sensitivity.csv", "sensitivity.png"]


def test_pruned_copies_are_evaluated_after_bn_recalibration(tmp_path, monkeypatch):
    """Each pruned copy's BN statistics are re-estimated before it is evaluated (default), and
    so are those of a copy of the unpruned baseline, so that the reference is comparable with
    the points; 0 evaluates the raw model and copies."""
    from tp_vgg.checkpoint import store as checkpoint
    from tp_vgg.checkpoint.source import ModelSource
    from tp_vgg.data.datasets import DataConfig, load_data
    from tp_vgg.train import evaluation
    from tp_vgg.train.loop import TrainConfig, fit, seed_everything

    data_cfg = DataConfig("fake", kwargs={"train_size": 192, "test_size": 64})
    seed_everything(0)
    fit(build_model(SPEC), SPEC, load_data(data_cfg), TrainConfig(epochs=2, batch_size=32,
        progress="none", device="cpu"), str(tmp_path / "base"), data_cfg=data_cfg)
    base = str(tmp_path / "base" / "last.pt")
    before = checkpoint.load_checkpoint(base).state_dict
    calls = []
    real = evaluation.recalibrate_on

    def spy(model, *args, **kwargs):
        old = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
        n = real(model, *args, **kwargs)
        new = model.state_dict()
        calls.append((args[3], n, [m.out_channels for m in model.modules()
                                   if isinstance(m, torch.nn.Conv2d)][:2],
                      any(not torch.equal(v, new[k]) for k, v in old.items())))
        return n
    monkeypatch.setattr(evaluation, "recalibrate_on", spy)

    def study(bn):
        return job.run_sensitivity(job.SensitivityStudy(
            ModelSource(checkpoint=base), data_cfg, ratios=[0.5], layers=["features.0", "features.4"],
            device="cpu", bn_batches=bn), None, log=lambda s: None)

    raw = study(0)
    assert calls == [] and raw["bn_recalibrate_batches"] == 0
    recal = study(2)
    assert recal["bn_recalibrate_batches"] == 2
    # a copy of the baseline (8, 16 channels), then once per pruned copy (features.0 at 8 -> 4
    # channels, then features.4 at 16 -> 8); 2 batches; 8 BN layers re-estimated, their
    # statistics changed
    assert calls == [(2, 8, [8, 16], True), (2, 8, [4, 16], True), (2, 8, [8, 8], True)]
    assert "same BatchNorm re-estimation" in recal["baseline_note"]
    after = checkpoint.load_checkpoint(base).state_dict  # the file is only read
    assert all(before[k].equal(after[k]) for k in before)
