"""Printed remedies of the pruning stages (``tp_vgg/pruning/``), applied to the failing case
(issue 19 item 5; the catalogue and its meta-test: ``tests/test_remedies.py``)."""

from __future__ import annotations

import json

import pytest
from methods_util import FAKE, QUIET, TINY, assert_one_line_error
from remedies_util import USER_MODELS, Remedy, run_remedy

from tp_vgg.pruning import graph as pruning
from tp_vgg.pruning import unstructured

PLAIN = ["--model", "cifar_vgg11", "--width", "0.125"]  # no BatchNorm
GROUPNORM = ["--model", f"{USER_MODELS / 'vgg_groupnorm.py'}:make"]
KEEP_TWO = ["--layer-ratios", '{"features.2.0": 0, "features.4.0": 0}']

FUNCTIONAL = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Functional(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.1)
        self.w2 = nn.Parameter(torch.randn(num_classes, 8) * 0.1)

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.w1, padding=1)).mean((2, 3))
        return x @ self.w2.t()


def make(num_classes=10):
    return Functional(num_classes)
'''

# The same network written with modules: the remedy "write the layers as modules".
MODULES = '''
import torch.nn as nn


def make(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes, bias=False))
'''

# A 1-channel attention map (a channel mean written as a 1x1 convolution): 0.5 of 1 channel is 0.
ATTENTION = '''
import torch
import torch.nn as nn


class Attention(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.att = nn.Conv2d(8, 1, 1)
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stem(x)
        return self.fc(self.body(x * torch.sigmoid(self.att(x))))


def make(num_classes=10):
    return Attention(num_classes)
'''


def _file(c, name, text):
    return f"{c.write(name, text)}:make"


def _prune(*flags):
    return lambda c: ["prune", *flags, "--out", c.path("out")]


REMEDIES = [
    Remedy("sparsity-without-bn",
           "regularizes BatchNorm gammas but the model has no affine BatchNorm layer; "
           "use --sparsity group-norm",
           lambda c: ["train", *PLAIN, *FAKE, *QUIET, "--epochs", "1", "--sparsity", "bn-l1",
                      "--out", c.path("t")],
           lambda c: ["train", *PLAIN, *FAKE, *QUIET, "--epochs", "1", "--sparsity",
                      "group-norm", "--out", c.path("t")]),
    Remedy("taylor-needs-data",
           "needs data: it runs a few batches forward and backward for the gradients; pass "
           "--data D",
           _prune(*TINY, "--ratio", "0.5", "--importance", "taylor"),
           _prune(*TINY, "--ratio", "0.5", "--importance", "taylor", *FAKE, *QUIET)),
    Remedy("write-layers-as-modules",
           "tp-vgg prunes the channels of nn.Conv2d and nn.Linear modules: write the layers as "
           "modules",
           lambda c: ["prune", "--model", _file(c, "functional.py", FUNCTIONAL), "--ratio", "0.5",
                      "--out", c.path("out")],
           lambda c: ["prune", "--model", _file(c, "modules.py", MODULES), "--ratio", "0.5",
                      "--out", c.path("out")]),
    Remedy("layer-would-keep-nothing", "keep it whole",
           lambda c: ["prune", "--model", _file(c, "att.py", ATTENTION), "--ratio", "0.5",
                      "--out", c.path("out")],
           lambda c: ["prune", "--model", _file(c, "att.py", ATTENTION), "--ratio", "0.5",
                      "--layer-ratios", '{"att": 0}', "--out", c.path("out")],
           printed="ratio 0.5 would leave layer 'att' with 0 of its 1 channels; keep it whole "
                   "with --layer-ratios '{\"att\": 0}'"),
    Remedy("layer-would-keep-nothing-at-this-ratio", "give it at most {}",
           _prune(*TINY, "--ratio", "0.95", "--layer-ratios",
                  json.dumps({f"features.{i}": 0.875 for i in (4, 8, 11, 15, 18, 22, 25)})),
           _prune(*TINY, "--ratio", "0.95", "--layer-ratios",
                  json.dumps({f"features.{i}": 0.875 for i in (0, 4, 8, 11, 15, 18, 22, 25)})),
           printed="ratio 0.95 would leave layer 'features.0' with 0 of its 8 channels; give it "
                   "at most 0.875 with --layer-ratios '{\"features.0\": 0.875}'"),
    Remedy("groupnorm-round-to-keep-it-unpruned",
           "and no equal count per group makes a multiple of --round-to {}; keep it unpruned "
           "with --layer-ratios '{}'",
           _prune(*GROUPNORM, "--ratio", "0.5", "--round-to", "16", *KEEP_TWO),
           _prune(*GROUPNORM, "--ratio", "0.5", "--round-to", "16", "--layer-ratios",
                  '{"features.2.0": 0, "features.4.0": 0, "features.0.0": 0}'),
           printed="no equal count per group makes a multiple of --round-to 16; keep it "
                   "unpruned with --layer-ratios '{\"features.0.0\": 0}'"),
    Remedy("groupnorm-round-to-use-another",
           "or use another --round-to",
           _prune(*GROUPNORM, "--ratio", "0.5", "--round-to", "16", *KEEP_TWO),
           _prune(*GROUPNORM, "--ratio", "0.5", "--round-to", "2", *KEEP_TWO)),
    Remedy("target-round-to-lower",
           "would keep 0 channels; lower --round-to or the target",
           _prune(*TINY, "--target-speedup", "2", "--round-to", "8"),
           _prune(*TINY, "--target-speedup", "2", "--round-to", "4")),
]

# Remedies applied in other test files: message fragment -> "tests/file.py::test_name".
ELSEWHERE = {
    "a size written as a number in view/reshape does not follow pruning: flatten with "
    "torch.flatten(x, 1)": "tests/test_diagnoses.py::test_constant_view_remedy",
    "write the sizes from x.size()":
        "tests/test_diagnoses.py::"
        "test_constant_size_in_a_view_that_is_not_a_flatten_gets_the_size_remedy",
    "is used outside any module, so torch-pruning guessed its channel dimension":
        "tests/test_diagnoses.py::test_bare_parameter_remedy",
    "which torch-pruning cannot follow; keep the layer before it unpruned":
        "tests/test_diagnoses.py::test_keep_layer_unpruned_remedy",
    " with --layer-ratios '": "tests/test_diagnoses.py::test_keep_layer_unpruned_remedy",
    "the layer that produces them lost outputs; name it with --output-layer NAME":
        "tests/test_diagnoses.py::test_output_layer_remedy",
    "none of the Conv2d/Linear layers is traced to them":
        "tests/test_remedies_prune.py::test_output_layer_remedy_when_the_graph_finds_none",
    # a method's description: train with the regularizer, then prune with the criterion
    "train with --sparsity bn-l1 first": "tests/test_sparsity.py::"
                                         "test_cli_train_bn_l1_shrinks_gamma_and_reports_before_after",
    "then prune with --importance bn-scale": "tests/test_sparsity.py::"
                                             "test_cli_train_bn_l1_shrinks_gamma_and_reports_before_after",
    "lottery-ticket mode trains: give --finetune-epochs N":
        "tests/test_remedies_prune.py::test_lottery_needs_epochs_and_runs_with_them",
    "give one of --target-speedup X, --target-macs N or --target-latency MS":
        "tests/test_remedies_prune.py::test_one_target_is_needed_and_one_works",
}

# Literals the scan matches that suggest nothing: fragment -> why.
NOT_SUGGESTIONS = {}


@pytest.mark.parametrize("remedy", [pytest.param(r, id=r.id, marks=r.marks) for r in REMEDIES])
def test_remedy(remedy, run_cli, tmp_path):
    run_remedy(remedy, run_cli, tmp_path)


@pytest.mark.parametrize("flags", [["--ratio", "0.5"], ["--target-speedup", "1.5"]])
def test_output_layer_remedy_when_the_graph_finds_none(run_cli, tmp_path, monkeypatch, flags):
    """The fallback for a graph whose sinks lead to no Conv2d/Linear (simulated: no model of the
    zoo reaches it): the message names the last layers, and --output-layer with one works, for a
    ratio and for a target (which shares the message)."""
    monkeypatch.setattr(pruning, "_graph_output_layers", lambda graph: [])
    out = tmp_path / "out"
    r = run_cli("prune", *TINY, *flags, "--out", out)
    assert_one_line_error(r, "none of the Conv2d/Linear layers is traced to them; name it with "
                          "--output-layer NAME (e.g. one of ", out)
    assert "classifier.2" in r.err
    r = run_cli("prune", *TINY, *flags, "--output-layer", "classifier.2", "--out", out)
    assert r.code == 0, r.err
    assert json.loads((out / "report.json").read_text())["after"]["macs"] > 0


def test_lottery_needs_epochs_and_runs_with_them():
    """The library's check (the CLI refuses --lottery-rounds without --finetune-epochs first)."""
    from tp_vgg import UserError
    from tp_vgg.models.zoo import ModelSpec, build_model

    cfg = unstructured.LotteryConfig(sparsity=0.75, rounds=2, epochs=0)
    with pytest.raises(UserError, match="lottery-ticket mode trains: give --finetune-epochs N"):
        cfg.validate()
    cfg = unstructured.LotteryConfig(sparsity=0.75, rounds=2, epochs=1)
    cfg.validate()
    model = build_model(ModelSpec("cifar_vgg11_bn", width=0.125).resolved())
    mask, rounds = unstructured.lottery(model, cfg, lambda m, e, after, end: 0.5,
                                        log=lambda s: None)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[-1]["sparsity"] == pytest.approx(0.75, abs=1e-3)


def test_one_target_is_needed_and_one_works():
    from tp_vgg import UserError
    from tp_vgg.pruning import targets

    with pytest.raises(UserError, match="give one of --target-speedup X, --target-macs N or "
                                        "--target-latency MS"):
        targets.Target(speedup=2, macs=1000).validate()
    targets.Target(speedup=2).validate()
