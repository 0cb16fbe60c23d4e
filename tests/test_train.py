"""The training engine and the train / finetune / eval / prune --finetune-epochs commands."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import tp_vgg
from tp_vgg.checkpoint import store as checkpoint
from tp_vgg.data.batches import Batches, BatchTransform
from tp_vgg.data.datasets import DataConfig, load_data
from tp_vgg.errors import UserError
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.train.evaluation import evaluate
from tp_vgg.train.loop import TrainConfig, finetune, lr_lambda, seed_everything

FAKE = ["--data", "fake", "--data-kwargs", '{"train_size": 96, "test_size": 40}']
TINY = ["--model", "cifar_vgg11_bn", "--width", "0.125"]
QUIET = ["--progress", "plain", "--threads", "1"]

# A small user model; after ``nan_after`` training forwards its output turns NaN.
NET = '''
import torch.nn as nn

class Net(nn.Module):
    def __init__(self, num_classes=10, nan_after=None):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                                  nn.Flatten(), nn.Linear(8 * 8 * 8, num_classes))
        self.nan_after, self.calls = nan_after, 0

    def forward(self, x):
        out = self.body(x)
        if self.training and self.nan_after is not None:
            self.calls += 1
            if self.calls > self.nan_after:
                out = out * float("nan")
        return out

def make(num_classes=10, nan_after=None):
    return Net(num_classes, nan_after)
'''


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(NET)
    return str(path)




class ConstantLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_eval_averages_over_samples_not_batches():
    # labels 0,0 | 1,1 | 0 in batches of 2; the model always says class 0.
    labels = torch.tensor([0, 0, 1, 1, 0])
    images = torch.zeros(5, 3, 8, 8, dtype=torch.uint8)
    batches = Batches(images, labels, 2, BatchTransform([0] * 3, [1] * 3, 8))
    logits = [2.0, 0.0, -1.0]
    res = evaluate(ConstantLogits(logits), batches)
    assert res.top1 == pytest.approx(3 / 5)  # the mean of batch accuracies would be 2/3
    assert res.top5 == 1.0 and res.images == 5  # top-k with k = min(5, 3 classes)
    ce = [-torch.log_softmax(torch.tensor(logits), 0)[c].item() for c in labels.tolist()]
    assert res.loss == pytest.approx(sum(ce) / 5)


def test_warmup_then_cosine_and_the_step_schedules():
    f = lr_lambda(TrainConfig(epochs=10, warmup_epochs=2, schedule="cosine"), steps_per_epoch=5)
    assert [f(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert f(10) == pytest.approx(1.0) and f(30) == pytest.approx(0.5)
    assert f(49) == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))
    g = lr_lambda(TrainConfig(epochs=10, warmup_epochs=0, schedule="multistep",
                              milestones=[3, 6]).resolved(), steps_per_epoch=4)
    assert [g(s) for s in (11, 12, 23, 24)] == pytest.approx([1, 0.1, 0.1, 0.01])
    h = lr_lambda(TrainConfig(epochs=10, warmup_epochs=0, schedule="step", step_size=2), 4)
    assert [h(s) for s in (7, 8, 16)] == pytest.approx([1, 0.1, 0.01])


def test_config_mistakes_are_user_errors():
    for bad, match in ((dict(optimizer="lion"), "unknown optimizer 'lion'; accepted: sgd, adamw"),
                       (dict(schedule="poly"), "unknown schedule 'poly'"),
                       (dict(momentum=0.0), "--nesterov needs --momentum > 0"),
                       (dict(amp="fp8"), "--amp 'fp8'")):
        with pytest.raises(UserError, match=match):
            TrainConfig(**bad).validate()


def test_train_writes_checkpoints_metrics_and_resolved_config(run_cli, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", *TINY, *FAKE, "--epochs", "2", "--batch-size", "32", *QUIET, "--out", out)
    assert r.code == 0, r.err
    assert r.out.count("epoch ") >= 2 and "final test top-1" in r.out  # plain lines, not a TTY
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec["epoch"] for rec in records] == [1, 2]
    assert {"lr", "train_loss", "test_top1", "test_top5", "test_loss", "images_per_s"} <= set(records[0])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["lr"] == 0.05 and cfg["train"]["weight_decay"] == 5e-4  # resolved
    assert cfg["data"]["name"] == "fake" and \
        cfg["runtime"]["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")  # auto
    for name in ("last.pt", "best.pt"):
        obj = torch.load(out / name, weights_only=True)  # no pickled objects
        assert obj["preprocessing"]["mean"] is not None and len(obj["preprocessing"]["class_names"]) == 10
    last = checkpoint.load_checkpoint(str(out / "last.pt"))
    assert last.train_state["epoch"] == 2 and last.meta["test_top1"] == records[-1]["test_top1"]
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_eval_json_is_the_last_line_and_matches_the_training_record(run_cli, tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", *TINY, *FAKE, "--epochs", "1", *QUIET, "--out", out).code == 0
    r = run_cli("eval", "--checkpoint", out / "last.pt", *FAKE, "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out.strip().splitlines()[-1])
    assert {"top1", "top5", "loss"} <= set(res) and res["images"] == 40
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert res["top1"] == pytest.approx(rec["test_top1"]) and res["loss"] == pytest.approx(rec["test_loss"], rel=1e-5)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(run_cli, tmp_path, net_file):
    out = tmp_path / "run"
    # 96 images in batches of 32: 3 steps per epoch, NaN from the 5th step (epoch 2).
    r = run_cli("train", "--model", f"{net_file}:make", "--model-kwargs", '{"nan_after": 4}', *FAKE,
                "--epochs", "3", "--batch-size", "32", *QUIET, "--out", out)
    assert r.code == 2
    err = r.err.strip().splitlines()
    assert len(err) == 1 and "NaN or infinite at epoch 2" in err[0] and "Traceback" not in r.err
    kept = checkpoint.load_checkpoint(str(out / "last.pt"))
    assert kept.train_state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept.state_dict.values() if v.is_floating_point())


def test_finetune_starts_from_the_pruned_architecture_and_weights(tmp_path):
    data = load_data(DataConfig("fake", kwargs={"train_size": 64, "test_size": 32}))
    spec = ModelSpec("cifar_vgg11", width=0.125, num_classes=10).resolved()  # no BN buffers
    seed_everything(0)
    model = build_model(spec)
    result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))
    path = str(tmp_path / "pruned.pt")
    tp_vgg.save(path, model, spec, history=result.history)
    cfg = TrainConfig(epochs=1, lr=1e-12, weight_decay=0, batch_size=32, progress="none")
    res = finetune(path, data, cfg, str(tmp_path / "ft"))
    assert res.model.features[0].out_channels == model.features[0].out_channels  # pruned shapes
    for (k, a), b in zip(model.state_dict().items(), res.model.state_dict().values()):
        assert torch.allclose(a, b.cpu(), atol=1e-6), k  # weights carried over, not re-initialized


def test_prune_with_finetune_reports_accuracy_and_saves_the_finetuned_weights(run_cli, tmp_path):
    out = tmp_path / "p"
    r = run_cli("prune", *TINY, "--ratio", "0.5", "--finetune-epochs", "1", *FAKE,
                "--batch-size", "32", *QUIET, "--out", out)
    assert r.code == 0, r.err
    acc = json.loads((out / "report.json").read_text())["accuracy"]
    # BatchNorm statistics are re-estimated by default whenever data are given
    assert set(acc) == {"before", "pruned", "recalibrated", "finetuned"} and all(0 <= v <= 1 for v in acc.values())
    assert "top-1: before" in r.out
    pruned = checkpoint.load_checkpoint(str(out / "pruned.pt"))
    tuned = checkpoint.load_checkpoint(str(out / "finetune" / "last.pt"))
    assert pruned.history == tuned.history and pruned.meta["accuracy"] == acc
    for k, v in tuned.state_dict.items():
        assert torch.equal(pruned.state_dict[k], v), k
    assert pruned.preprocessing.mean is not None  # the fine-tuning normalization travels
    assert run_cli("prune", *TINY, "--ratio", "0.5", *FAKE, "--out", tmp_path / "q").code == 2


@pytest.mark.parametrize("argv, message", [
    (["train", *TINY, "--data", "mnist"], "unknown dataset 'mnist'; accepted: digits"),
    (["train", *TINY, "--data", "imagefolder", "--data-dir", "{tmp}/none"], "does not exist"),
    (["train", *TINY, "--data", "cifar10", "--data-dir", "{tmp}"], "pass --download"),
    (["train", *TINY, *FAKE, "--optimizer", "lion"], "unknown optimizer 'lion'"),
    (["train", *TINY, *FAKE, "--num-classes", "7"], "7 outputs but fake has 10 classes"),
    (["train", *FAKE, "--out", "{tmp}/o"], "one of --model or --resume is required"),
    (["finetune", *FAKE, "--out", "{tmp}/o"], "one of --checkpoint or --resume is required"),
    (["train", "--resume", "{tmp}/missing.pt"], "does not exist"),
])
def test_user_mistakes_exit_2_with_one_line(run_cli, tmp_path, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv and "--resume" not in argv:
        argv += ["--out", str(tmp_path / "o")]
    r = run_cli(*argv)
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_is_a_user_error(run_cli, tmp_path):
    r = run_cli("train", *TINY, *FAKE, "--device", "cuda", "--out", tmp_path / "o")
    assert r.code == 2 and "CUDA is not available" in r.err


@pytest.mark.slow
def test_done_when_digits_6_epochs_reach_90_percent(run_cli, tmp_path):
    r = run_cli("train", "--model", "cifar_vgg11_bn", "--width", "0.25", "--data", "digits",
                "--epochs", "6", "--progress", "plain", "--out", tmp_path / "d")
    assert r.code == 0, r.err
    rec = json.loads((tmp_path / "d" / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["test_top1"] >= 0.90


def test_a_model_that_flattens_with_view_fine_tunes_on_contiguous_batches(run_cli, tmp_path):
    """``x.view(x.size(0), -1)`` after a conv cannot take channels-last activations: training
    and BN re-estimation feed such a model contiguous batches, and say so (it used to stop with
    an internal error)."""
    model = Path(__file__).parent / "user_models" / "vgg_seq_linear.py"
    out = tmp_path / "out"
    r = run_cli("prune", "--model", f"{model}:make", "--ratio", "0.4", *FAKE,
                "--finetune-epochs", "1", "--progress", "none", "--threads", "1", "--out", out)
    assert r.code == 0, r.err
    assert "channels-last off: the model's forward cannot take channels-last input" in r.out
    rep = json.loads((out / "report.json").read_text())
    assert rep["accuracy"]["finetuned"] is not None
