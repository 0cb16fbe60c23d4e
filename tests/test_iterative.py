"""Iterative pruning: K steps with fine-tuning between them reach the one-shot channel counts."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import randomize
from methods_util import FAKE, QUIET, assert_one_line_error, models, read_report

import tp_vgg
from tp_vgg import PruneConfig
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.pruning import iterative, targets

SPEC = ModelSpec("cifar_vgg11_bn", width=0.125).resolved()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize(build_model(SPEC))


def _wiggle(step, m):
    """Stands in for fine-tuning: changes the weights between steps, so re-ranking differs."""
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)


@pytest.mark.parametrize("cfg", [
    PruneConfig(ratio=0.5),
    PruneConfig(ratio=0.6, importance="fpgm", global_pruning=True),
    PruneConfig(ratio=0.4, importance="lamp", round_to=4),
], ids=["uniform", "global", "round_to"])
def test_same_final_channels_and_macs_as_one_shot(model, cfg):
    one = copy.deepcopy(model)
    one_shot = tp_vgg.prune(one, SPEC, cfg)
    it = copy.deepcopy(model)
    sched = iterative.Schedule(SPEC, steps=3, epochs_per_step=0)
    steps = tp_vgg.prune(it, SPEC, dataclasses.replace(cfg, iterative_steps=3),
                         between_steps=lambda s, m: (sched(s, m), _wiggle(s, m)))
    assert steps.channels_after == one_shot.channels_after
    assert tp_vgg.count(it, SPEC).macs == tp_vgg.count(one, SPEC).macs
    assert [r.step for r in sched.records] == [1, 2]
    macs = [r.macs for r in sched.records] + [tp_vgg.count(it, SPEC).macs]
    assert macs[0] > macs[1] > macs[2]


def test_target_then_iterative_matches_one_shot(model):
    cfg, plan = targets.solve(model, SPEC, PruneConfig(global_pruning=True),
                              targets.Target(speedup=3))
    one, it = copy.deepcopy(model), copy.deepcopy(model)
    tp_vgg.prune(one, SPEC, cfg)
    tp_vgg.prune(it, SPEC, dataclasses.replace(cfg, iterative_steps=4), between_steps=_wiggle)
    assert tp_vgg.count(it, SPEC).macs == tp_vgg.count(one, SPEC).macs == plan.predicted_macs


@pytest.mark.parametrize("which", ["zoo", "user"])
def test_cli_iterative_with_finetuning_between_steps(run_cli, tmp_path, which):
    spec_flags = models(tmp_path)[which]
    r = run_cli("prune", *spec_flags, "--target-speedup", "2", "--iterative-steps", "3",
                "--finetune-epochs-per-step", "1", "--finetune-epochs", "1", *FAKE, *QUIET,
                "--out", tmp_path / "it")
    assert r.code == 0, r.err
    rep = read_report(tmp_path / "it")
    sched = rep["schedule"]
    assert sched["iterative_steps"] == 3 and sched["finetune_epochs_per_step"] == 1
    assert [s["step"] for s in sched["steps"]] == [1, 2, 3]
    assert [s["finetune_epochs"] for s in sched["steps"]] == [1, 1, 1]
    assert all(s["top1_pruned"] is not None and s["top1_finetuned"] is not None
               for s in sched["steps"])
    macs = [s["macs"] for s in sched["steps"]]
    assert macs[0] > macs[1] > macs[2] == rep["after"]["macs"]
    assert "the last step (3/3) starts from" in r.out and "step 2/3:" in r.out
    # one shot at the same target: the same final MACs
    r = run_cli("prune", *spec_flags, "--target-speedup", "2", "--out", tmp_path / "one")
    assert r.code == 0, r.err
    assert read_report(tmp_path / "one")["after"]["macs"] == rep["after"]["macs"]
    loaded = tp_vgg.load(str(tmp_path / "it" / "pruned.pt"), trust_model_code=which == "user")
    assert tp_vgg.count(loaded, tp_vgg.load_checkpoint(str(tmp_path / "it" / "pruned.pt")).spec
                        ).macs == rep["after"]["macs"]


def test_cli_iterative_taylor_recomputes_gradients_each_step(run_cli, tmp_path):
    r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--ratio", "0.5",
                "--importance", "taylor", "--taylor-batches", "1", "--iterative-steps", "2",
                *FAKE, "--out", tmp_path / "o")
    assert r.code == 0, r.err
    rep = read_report(tmp_path / "o")
    assert rep["config"]["iterative_steps"] == 2 and len(rep["schedule"]["steps"]) == 2


@pytest.mark.parametrize("extra,message", [
    (["--ratio", "0.5", "--finetune-epochs-per-step", "1"], "needs --iterative-steps K with K >= 2"),
    (["--ratio", "0.5", "--iterative-steps", "3", "--finetune-epochs-per-step", "1"],
     "--finetune-epochs-per-step fine-tunes on data; pass --data D"),
    (["--ratio", "0.5", "--iterative-steps", "0"], "argument --iterative-steps: '0' is below 1"),
])
def test_cli_iterative_mistakes_exit_2(run_cli, tmp_path, extra, message):
    out = tmp_path / "out"
    r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.125", *extra, "--out", out)
    assert_one_line_error(r, message, out)
