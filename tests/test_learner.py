"""What a newcomer types, and what a student met (issue: learning pruning by doing):

* the short API: ``count(model)``, ``prune(model, cfg)``, ``save(path, model)`` read the spec and
  history kept on a model tp-vgg built or loaded, ``load`` gives back what ``save`` stored, and
  ``finetune(model, data, epochs)`` uses the fine-tuning defaults (no warm-up unless asked) and
  says so;
* iterative pruning reports each step against the model just before it: raw, BN re-estimated
  and fine-tuned top-1 per step; without data it warns;
* the sensitivity study gives no advice that prunes nothing.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from methods_util import QUIET, read_report

import tp_vgg
from tp_vgg import UserError

SPEC = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.125)


def test_count_prune_save_need_no_spec_for_a_model_tp_vgg_built(tmp_path):
    torch.manual_seed(0)
    model = tp_vgg.build_model(SPEC)
    assert tp_vgg.count(model).macs == tp_vgg.count(model, SPEC).macs
    first = tp_vgg.prune(model, tp_vgg.PruneConfig(ratio=0.5))
    second = tp_vgg.prune(model, tp_vgg.PruneConfig(ratio=0.25))
    assert model.tp_vgg_record.history == first.history + second.history
    path = str(tmp_path / "p.pt")
    tp_vgg.save(path, model)
    back = tp_vgg.load(path)
    # load gives back what save stored: spec, history, and the exact weights
    assert back.tp_vgg_record.spec == tp_vgg.load_checkpoint(path).spec
    assert back.tp_vgg_record.history == first.history + second.history
    assert tp_vgg.count(back).macs == tp_vgg.count(model).macs
    sd, sd2 = model.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    # saved again from what was loaded: the same checkpoint, bit for bit in its tensors
    tp_vgg.save(str(tmp_path / "q.pt"), back)
    a, b = tp_vgg.load_checkpoint(path), tp_vgg.load_checkpoint(str(tmp_path / "q.pt"))
    assert a.history == b.history and a.meta == b.meta
    assert a.preprocessing.to_dict() == b.preprocessing.to_dict()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def test_a_model_built_elsewhere_is_told_to_pass_its_spec():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    for call in (lambda: tp_vgg.count(plain), lambda: tp_vgg.prune(plain)):
        try:
            call()
        except UserError as e:
            assert "pass" in str(e) and "(model, spec)" in str(e)
        else:
            raise AssertionError("no UserError")


def test_finetune_uses_the_finetuning_defaults_and_says_them(tmp_path):
    torch.manual_seed(0)
    model = tp_vgg.build_model(SPEC)
    tp_vgg.prune(model, tp_vgg.PruneConfig(ratio=0.5))
    logged = []
    res = tp_vgg.finetune(model, "digits", epochs=1, batch_size=128, log=logged.append)
    defaults = tp_vgg.finetuning()
    assert logged[0].startswith("fine-tuning 1 epoch: sgd lr") and "no warm-up" in logged[0]
    # no warm-up: the first epoch runs at the fine-tuning LR (cosine over one epoch starts there)
    assert res.records[0]["lr"] == defaults.lr and defaults.warmup_epochs == 0
    assert res.final is not None and 0 <= res.final.top1 <= 1
    assert not model.training and next(model.parameters()).device.type == "cpu"
    # the normalization it was fine-tuned with is what save() records
    tp_vgg.save(str(tmp_path / "f.pt"), model)
    pre = tp_vgg.load_checkpoint(str(tmp_path / "f.pt")).preprocessing
    assert pre.mean is not None and pre.class_names == [str(i) for i in range(10)]
    warm = []
    tp_vgg.finetune(model, "digits", epochs=1, batch_size=128, warmup_epochs=0.5,
                    log=warm.append)
    assert "0.5 warm-up epochs" in warm[0]


def test_iterative_steps_each_against_the_model_before_it(run_cli, tmp_path):
    r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--ratio", "0.5",
                "--iterative-steps", "3", "--finetune-epochs-per-step", "1",
                "--finetune-epochs", "1", "--data", "digits", *QUIET, "--out", tmp_path / "it")
    assert r.code == 0, r.err
    rep = read_report(tmp_path / "it")
    steps = rep["schedule"]["steps"]
    acc = rep["accuracy"]
    assert steps[0]["top1_before"] == acc["before"]
    for prev, cur in zip(steps, steps[1:]):  # each step starts from the one before, fine-tuned
        assert cur["top1_before"] == prev["top1_finetuned"]
    for s in steps:
        assert None not in (s["top1_pruned"], s["top1_recalibrated"], s["top1_finetuned"])
    last = steps[-1]
    assert acc["before_last_step"] == steps[-2]["top1_finetuned"]
    assert (last["top1_pruned"], last["top1_recalibrated"], last["top1_finetuned"]) == (
        acc["pruned"], acc["recalibrated"], acc["finetuned"])
    assert "the last step (3/3) starts from" in r.out
    assert "top-1 before step | pruned | BN re-estimated | fine-tuned (epochs)" in r.out


def test_iterative_without_data_warns(run_cli, tmp_path):
    r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--ratio", "0.5",
                "--iterative-steps", "3", "--out", tmp_path / "it")
    assert r.code == 0, r.err
    line = next(l for l in r.out.splitlines() if l.startswith("warning: --iterative-steps 3"))
    assert "no fine-tuning between the steps" in line and "--finetune-epochs-per-step" in line
    assert "fine-tuning 0 epochs" not in r.out


def test_sensitivity_gives_no_advice_that_prunes_nothing(monkeypatch):
    from tp_vgg.checkpoint.source import ModelSource
    from tp_vgg.jobs.sensitivity import SensitivityStudy, run_sensitivity
    from tp_vgg.pruning import sensitivity

    study = SensitivityStudy(ModelSource(spec=SPEC), tp_vgg.DataConfig("digits"), ratios=[0.5],
                             budget=1.0, eval_images=60, layers=["features.0", "features.4"],
                             bn_batches=0)
    logged = []
    # every layer costs 100 points alone at the smallest ratio tried: nothing is within budget
    real = sensitivity.analyze

    def costly(*args, **kwargs):
        res = real(*args, **kwargs)
        for row in res.rows:
            row["drop_points"] = 100.0
        return res
    monkeypatch.setattr(sensitivity, "analyze", costly)
    rep = run_sensitivity(study, log=logged.append)
    assert rep["layer_ratios"] == {} and rep["command"] is None
    assert not any(l.startswith("next:") or "--layer-ratios '{}'" in l for l in logged)
    line = next(l for l in logged if "nothing to recommend" in l)
    assert "no layer stays within 1 top-1 points at the smallest ratio tried (0.5)" in line
    assert "Raise --budget" in line and set(rep["least_sensitive"]) == {"features.0", "features.4"}


def test_readmes_first_cifar_command_uses_the_shared_archive():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    first = text.index("--data-dir data/cifar10-jpeg")
    assert "--data cifar10 " not in text[:first]  # the download-only dataset is not offered first
    setup = text.rfind("```", 0, first)
    assert "tar xzf ../shared/data/cifar10-jpeg.tar.gz -C data" in text[setup:first]
