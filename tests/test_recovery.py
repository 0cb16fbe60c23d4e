"""Accuracy recovery after pruning: BatchNorm recalibration and knowledge distillation.

The library tests run on every device this machine has (CUDA too, where present: the GPU check
``benchmarks/gpu.sh`` runs this file there)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from resume_util import assert_same_weights, cut_and_resume

import tp_vgg
from tp_vgg.checkpoint import store as checkpoint
from tp_vgg.data.batches import Batches, BatchTransform
from tp_vgg.data.datasets import DataConfig, load_data
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.train.evaluation import recalibrate_bn
from tp_vgg.train.loop import Teacher, TrainConfig, fit, seed_everything
from tp_vgg.train.steps import distill_loss

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SPEC = ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=10).resolved()
DATA = DataConfig("fake", kwargs={"train_size": 96, "test_size": 32})
FAKE = ["--data", "fake", "--data-kwargs", '{"train_size": 96, "test_size": 40}']
QUIET = ["--progress", "plain", "--threads", "1", "--device", "cpu"]


def _batches(x: torch.Tensor, batch_size: int, device: str) -> Batches:
    """Batches of ``x`` (uint8, in order, no augmentation) normalized with mean 0, std 1/255:
    the model sees exactly ``x`` as float."""
    t = BatchTransform([0.0] * x.shape[1], [1 / 255] * x.shape[1], x.shape[-1], channels_last=False)
    return Batches(x, torch.zeros(len(x), dtype=torch.long), batch_size, t, device)


# --------------------------------------------------------------------------------------------
# BatchNorm recalibration.

@pytest.mark.parametrize("device", DEVICES)
def test_recalibration_gives_the_average_of_the_batch_statistics(device):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    bn = nn.BatchNorm2d(4, momentum=0.3)
    model = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 64, 2))
    model.to(device).train(False)
    x = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8)
    n = recalibrate_bn(model, _batches(x, 4, device), num_batches=3)
    assert n == 1
    with torch.no_grad():
        feats = conv(x.to(device).float())
        chunks = feats.split(4)
        mean = torch.stack([c.mean((0, 2, 3)) for c in chunks]).mean(0)
        var = torch.stack([c.var((0, 2, 3), unbiased=True) for c in chunks]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
    # The caller's mode and the layer's momentum are restored; weights are untouched.
    assert not model.training and not bn.training and bn.momentum == 0.3


@pytest.mark.parametrize("device", DEVICES)
def test_recalibration_uses_only_the_requested_batches(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).to(device)
    x = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8)
    recalibrate_bn(model, _batches(x, 4, device), num_batches=1)
    with torch.no_grad():
        first = model[0](x[:4].to(device).float()).mean((0, 2, 3))
    torch.testing.assert_close(model[1].running_mean, first, rtol=1e-4, atol=1e-5)
    assert model[1].num_batches_tracked.item() == 1


def test_a_model_without_batchnorm_is_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.GroupNorm(2, 4),
                          nn.BatchNorm2d(4, track_running_stats=False))
    before = copy.deepcopy(model.state_dict())
    x = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    assert recalibrate_bn(model, _batches(x, 4, "cpu"), num_batches=2) == 0
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_recalibration_after_pruning_raises_accuracy_from_a_trained_model(tmp_path):
    """On a trained model, pruning shifts the statistics; re-estimating them on training data must
    not leave the statistics as they were and must not lower the training-set fit much."""
    data = load_data(DATA)
    seed_everything(0)
    res = fit(build_model(SPEC), SPEC, data, TrainConfig(epochs=3, batch_size=32, progress="none",
                                                         device="cpu"), None, log=lambda s: None)
    model = res.model.cpu()
    tp_vgg.prune(model, SPEC, tp_vgg.PruneConfig(ratio=0.5))
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    old = bn.running_var.clone()
    pre = data.preprocessing()
    from tp_vgg.train.evaluation import recalibrate_on

    assert recalibrate_on(model, SPEC, data, pre, num_batches=3, batch_size=32, device="cpu") == 8
    assert not torch.allclose(bn.running_var, old)


def test_channels_last_scoring_gives_the_same_result_and_hands_the_model_back_contiguous():
    """The search and sensitivity score candidates in channels-last memory (faster on a CPU):
    the same predictions, loss within float rounding, and the model back in contiguous memory
    (where pruning continues)."""
    from tp_vgg.train import evaluation

    data = load_data(DATA)
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    pre = data.preprocessing()
    assert evaluation.channels_last_runs(model, SPEC)
    plain = evaluation.evaluate_on(model, SPEC, data, pre, device="cpu")
    model.to(memory_format=torch.contiguous_format)
    cl = evaluation.evaluate_on(model, SPEC, data, pre, device="cpu", channels_last=True)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    assert cl.images == plain.images == 32
    assert cl.top1 == plain.top1 and cl.top5 == plain.top5
    assert cl.loss == pytest.approx(plain.loss, rel=1e-5)
    assert evaluation.top1(model, SPEC, data, pre, "cpu", channels_last=True) == plain.top1
    assert all(p.is_contiguous() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Distillation.

def test_distill_loss_is_the_weighted_sum_of_cross_entropy_and_scaled_kl():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))
    T, a = 3.0, 0.7
    p_t = F.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean()
    want = (1 - a) * F.cross_entropy(s, y) + a * T * T * kl
    got = distill_loss(s, t, y, nn.CrossEntropyLoss(), T, a)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(distill_loss(s, t, y, nn.CrossEntropyLoss(), T, 0.0), F.cross_entropy(s, y))
    assert distill_loss(s, s, y, nn.CrossEntropyLoss(), T, 1.0).abs().item() < 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_distillation_keeps_the_teacher_frozen_and_saves_it(tmp_path, device):
    data = load_data(DATA)
    seed_everything(0)
    teacher_model = build_model(SPEC)
    ref = copy.deepcopy(teacher_model.state_dict())
    student = copy.deepcopy(teacher_model)
    tp_vgg.prune(student, SPEC, tp_vgg.PruneConfig(ratio=0.5))
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.01, progress="plain", device=device,
                      distill=True, distill_temperature=2.0, distill_alpha=0.5)
    lines = []
    res = fit(student, SPEC, data, cfg, str(tmp_path), teacher=Teacher(teacher_model, SPEC),
              log=lines.append)
    after = {k: v.cpu() for k, v in teacher_model.state_dict().items()}
    assert all(torch.equal(ref[k], after[k]) for k in ref)       # BN buffers too: eval mode
    assert not teacher_model.training
    assert not any(p.requires_grad for p in teacher_model.parameters())
    assert res.final is not None and all("teacher" in l for l in lines if l.startswith("epoch "))
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["teacher_s"] > 0 for r in recs)
    saved = checkpoint.load_checkpoint(str(tmp_path / "teacher.pt"))
    assert all(torch.equal(saved.state_dict[k], ref[k]) for k in ref)


def test_distillation_without_a_teacher_is_refused():
    data = load_data(DATA)
    with pytest.raises(tp_vgg.UserError, match="needs a teacher"):
        fit(build_model(SPEC), SPEC, data, TrainConfig(epochs=1, distill=True, progress="none"))


def test_distilled_run_resumes_exactly(tmp_path):
    data = load_data(DATA)
    seed_everything(1)
    teacher_model = build_model(SPEC)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.02, progress="plain", distill=True, device="cpu")

    def run(out, log=lambda s: None):
        seed_everything(cfg.seed)
        student = build_model(ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=10))
        return fit(student, SPEC, data, cfg, str(out), data_cfg=DATA,
                   teacher=Teacher(copy.deepcopy(teacher_model), SPEC), log=log)

    w = cut_and_resume(run, tmp_path, data)  # the resume reads cut/teacher.pt
    assert_same_weights(w["full"], w["cut"])


# --------------------------------------------------------------------------------------------
# The CLI: prune --bn-recalibrate / --distill, finetune --distill --teacher.

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from tp_vgg.cli import main

    out = tmp_path_factory.mktemp("base")
    assert main(["train", "--model", "cifar_vgg11_bn", "--width", "0.125", *FAKE, "--epochs", "2",
                 "--batch-size", "32", *QUIET, "--out", str(out)]) == 0
    return str(out / "last.pt")


def test_prune_recalibrates_and_distills(run_cli, base, tmp_path):
    r = run_cli("prune", "--checkpoint", base, "--ratio", "0.5", *FAKE, "--finetune-epochs", "1",
                "--distill", "--distill-temperature", "2", "--bn-recalibrate", "2",
                "--batch-size", "32", *QUIET, "--out", tmp_path / "p")
    assert r.code == 0, r.err
    acc = json.loads((tmp_path / "p" / "report.json").read_text())["accuracy"]
    assert list(acc) == ["before", "pruned", "recalibrated", "finetuned"]
    assert "re-estimating 8 BatchNorm layers' statistics on 2 batches" in r.out
    assert "with distillation" in r.out and "(teacher " in r.out
    cfg = json.loads((tmp_path / "p" / "finetune" / "config.json").read_text())["train"]
    assert cfg["distill"] and cfg["distill_temperature"] == 2.0
    # The teacher is the model before pruning.
    teacher = checkpoint.load_checkpoint(str(tmp_path / "p" / "finetune" / "teacher.pt"))
    orig = checkpoint.load_checkpoint(base)
    assert all(torch.equal(teacher.state_dict[k], orig.state_dict[k]) for k in orig.state_dict)


def test_prune_recalibration_only_and_off(run_cli, base, tmp_path):
    r = run_cli("prune", "--checkpoint", base, "--ratio", "0.5", *FAKE, "--bn-recalibrate", "2",
                "--batch-size", "32", *QUIET, "--out", tmp_path / "r")
    assert r.code == 0, r.err
    acc = json.loads((tmp_path / "r" / "report.json").read_text())["accuracy"]
    assert list(acc) == ["before", "pruned", "recalibrated"]
    # pruned.pt holds the recalibrated statistics
    ck = checkpoint.load_checkpoint(str(tmp_path / "r" / "pruned.pt"))
    assert not torch.equal(ck.state_dict["features.1.running_var"],
                           checkpoint.load_checkpoint(base).state_dict["features.1.running_var"][:ck.state_dict["features.1.running_var"].numel()])
    r = run_cli("prune", "--checkpoint", base, "--ratio", "0.5", *FAKE, "--finetune-epochs", "1",
                "--bn-recalibrate", "0", "--batch-size", "32", *QUIET, "--out", tmp_path / "o")
    assert r.code == 0, r.err
    assert list(json.loads((tmp_path / "o" / "report.json").read_text())["accuracy"]) == \
        ["before", "pruned", "finetuned"]


def test_finetune_distills_from_a_teacher_checkpoint(run_cli, base, tmp_path):
    assert run_cli("prune", "--checkpoint", base, "--ratio", "0.5", *QUIET, "--out", tmp_path / "p").code == 0
    r = run_cli("finetune", "--checkpoint", tmp_path / "p" / "pruned.pt", *FAKE, "--epochs", "1",
                "--distill", "--teacher", base, "--batch-size", "32", *QUIET, "--out", tmp_path / "f")
    assert r.code == 0, r.err
    assert (tmp_path / "f" / "teacher.pt").exists() and "(teacher " in r.out


@pytest.mark.parametrize("argv, message", [
    (["finetune", "--checkpoint", "{base}", *FAKE, "--distill", "--out", "{tmp}/x"],
     "--distill needs --teacher CKPT"),
    (["prune", "--checkpoint", "{base}", "--ratio", "0.5", *FAKE, "--finetune-epochs", "1",
      "--teacher", "{base}", "--out", "{tmp}/x"], "--teacher is given without --distill"),
    (["prune", "--checkpoint", "{base}", "--ratio", "0.5", *FAKE, "--distill", "--out", "{tmp}/x"],
     "--distill is given without --finetune-epochs"),
    (["prune", "--checkpoint", "{base}", "--ratio", "0.5", "--bn-recalibrate", "5", "--out", "{tmp}/x"],
     "--bn-recalibrate 5 needs --data"),
    (["prune", "--checkpoint", "{base}", "--ratio", "0.5", *FAKE, "--finetune-epochs", "1",
      "--distill", "--distill-alpha", "1.5", "--out", "{tmp}/x"], "'1.5' is outside [0, 1]"),
    (["prune", "--checkpoint", "{base}", "--ratio", "0.5", *FAKE, "--finetune-epochs", "1",
      "--distill", "--distill-temperature", "0", "--out", "{tmp}/x"], "'0' is not > 0"),
    (["prune", "--checkpoint", "{base}", "--ratio", "0.5", "--bn-recalibrate", "-1", "--out", "{tmp}/x"],
     "'-1' is negative"),
])
def test_recovery_flag_errors(run_cli, base, tmp_path, argv, message):
    r = run_cli(*[a.replace("{base}", base).replace("{tmp}", str(tmp_path)) for a in argv], *QUIET)
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.err
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------
# The scratch control: the pruned architecture trained from a random initialization.

def test_scratch_model_has_the_pruned_shapes_and_fresh_seeded_weights(run_cli, base, tmp_path):
    from tp_vgg.train.loop import scratch_model

    assert run_cli("prune", "--checkpoint", base, "--ratio", "0.5", *QUIET, "--out", tmp_path / "p").code == 0
    ck = checkpoint.load_checkpoint(str(tmp_path / "p" / "pruned.pt"))
    a, b, c = (scratch_model(ck, seed).state_dict() for seed in (0, 0, 1))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in ck.state_dict.items()}
    assert all(torch.equal(a[k], b[k]) for k in a)               # seeded
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])
    assert not torch.equal(a["features.0.weight"], ck.state_dict["features.0.weight"])
    r = run_cli("finetune", "--checkpoint", tmp_path / "p" / "pruned.pt", "--scratch", *FAKE,
                "--epochs", "1", "--batch-size", "32", *QUIET, "--out", tmp_path / "s")
    assert r.code == 0, r.err
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["command"] == "scratch" and cfg["train"]["lr"] == 0.05 and cfg["train"]["warmup_epochs"] == 1.0
    assert checkpoint.load_checkpoint(str(tmp_path / "s" / "last.pt")).meta["scratch"] is True


def test_prune_scratch_control_defaults_to_the_same_total_epochs(run_cli, base, tmp_path):
    r = run_cli("prune", "--checkpoint", base, "--ratio", "0.5", *FAKE, "--finetune-epochs", "1",
                "--scratch", "--batch-size", "32", *QUIET, "--out", tmp_path / "p")
    assert r.code == 0, r.err
    acc = json.loads((tmp_path / "p" / "report.json").read_text())["accuracy"]
    assert list(acc) == ["before", "pruned", "recalibrated", "finetuned", "scratch"]
    cfg = json.loads((tmp_path / "p" / "scratch" / "config.json").read_text())
    assert cfg["command"] == "scratch" and cfg["train"]["epochs"] == 2 + 1  # base 2 + fine-tune 1
    assert cfg["train"]["lr"] == 0.05 and cfg["train"]["warmup_epochs"] == 1.0  # training recipe
    scratch = checkpoint.load_checkpoint(str(tmp_path / "p" / "scratch" / "last.pt"))
    pruned = checkpoint.load_checkpoint(str(tmp_path / "p" / "pruned.pt"))
    assert scratch.history == pruned.history and scratch.meta["scratch"] is True
    assert {k: v.shape for k, v in scratch.state_dict.items()} == \
        {k: v.shape for k, v in pruned.state_dict.items()}
    r = run_cli("prune", "--checkpoint", base, "--ratio", "0.5", *FAKE, "--scratch", "2",
                *QUIET, "--out", tmp_path / "x")
    assert r.code == 2 and "--scratch is given without --finetune-epochs" in r.err


def test_sweep_scratch_adds_the_control_to_the_table(run_cli, tmp_path):
    r = run_cli("sweep", "--model", "cifar_vgg11_bn", "--width", "0.125", "--ratios", "0.3,0.5",
                *FAKE, "--finetune-epochs", "1", "--scratch", "1", "--batch-size", "32", *QUIET,
                "--out", tmp_path / "s")
    assert r.code == 0, r.err
    for d in ("ratio_0.30", "ratio_0.50"):
        acc = json.loads((tmp_path / "s" / d / "report.json").read_text())["accuracy"]
        assert 0 <= acc["scratch"] <= 1
    md = (tmp_path / "s" / "report.md").read_text()
    assert "top-1 scratch" in md
