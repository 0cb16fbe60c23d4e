"""Unstructured magnitude pruning (torch.nn.utils.prune), zeros kept while fine-tuning, lottery
tickets with rewinding."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from conftest import randomize
from methods_util import FAKE, QUIET, assert_one_line_error, models, read_report

import tp_vgg
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.pruning import unstructured

SPEC = ModelSpec("cifar_vgg11_bn", width=0.125).resolved()


def _layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_per_layer_masks_remove_the_smallest_weights_and_are_permanent():
    torch.manual_seed(0)
    model = build_model(SPEC)
    original = copy.deepcopy(model)
    mask = unstructured.magnitude_prune(model, 0.6, exclude=["classifier.2"])
    assert not any(isinstance(h, torch.nn.utils.prune.BasePruningMethod)
                   for m in model.modules() for h in m._forward_pre_hooks.values())
    assert set(model.state_dict()) == set(original.state_dict())  # plain keys, no *_orig/_mask
    for (name, m), (_, o) in zip(_layers(model), _layers(original)):
        w, w0 = m.weight.detach(), o.weight.detach()
        if name == "classifier.2":
            assert torch.equal(w, w0)
            continue
        zero = w == 0
        assert int(zero.sum()) == round(0.6 * w.numel()), name
        assert w0.abs()[zero].max() <= w0.abs()[~zero].min()  # the smallest magnitudes went
        assert torch.equal(w[~zero], w0[~zero])
        assert torch.equal(mask.masks[name], ~zero)


def test_global_ranking_and_growing_masks():
    torch.manual_seed(0)
    model = randomize(build_model(SPEC))
    first = unstructured.magnitude_prune(model, 0.5, global_ranking=True)
    assert first.sparsity() == pytest.approx(0.5, abs=1e-4)
    per_layer = {n: float((~m).float().mean()) for n, m in first.masks.items()}
    assert max(per_layer.values()) - min(per_layer.values()) > 0.1  # not uniform
    second = unstructured.magnitude_prune(model, 0.75, global_ranking=True)
    for name in first.masks:  # what was zero stays zero
        assert not (second.masks[name] & ~first.masks[name]).any()


def test_zero_mask_holds_zeros_through_optimizer_steps():
    torch.manual_seed(0)
    model = build_model(SPEC)
    mask = unstructured.magnitude_prune(model, 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3, 32, 32)).sum().backward()
        opt.step()
        mask()
    assert mask.sparsity() == pytest.approx(0.5, abs=1e-3)
    for name, m in _layers(model):
        assert not m.weight[~mask.masks[name]].any()


def test_sparsity_report_keeps_dense_macs_and_counts_nonzero_macs():
    model = build_model(SPEC)
    before = tp_vgg.count(model, SPEC)
    unstructured.magnitude_prune(model, 0.75)
    after = tp_vgg.count(model, SPEC)
    rep = unstructured.sparsity_report(model, after)
    assert rep["macs_dense"] == after.macs == before.macs
    assert rep["macs_nonzero"] == pytest.approx(0.25 * before.macs, rel=0.01)
    conv = next(l for l in rep["layers"] if l["name"] == "features.4")
    assert conv["sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert conv["macs_nonzero"] == pytest.approx(conv["macs_dense"] * 0.25, rel=1e-3)


def test_lottery_rewinds_survivors_to_the_rewind_epoch():
    """Training stand-in: every epoch adds 1 to all weights. With rewind epoch 1, each round
    starts from the weights after epoch 1 (start + 1), masked."""
    torch.manual_seed(0)
    model = build_model(SPEC)
    start = copy.deepcopy(model)
    seen = []

    def train(m, epochs, after_step, on_epoch_end):
        if after_step is not None:  # the round starts from the rewound, masked weights
            w, w0 = m.features[0].weight.detach(), start.features[0].weight.detach() + 1
            seen.append(torch.equal(w[w != 0], w0[w != 0]) and bool((w == 0).any()))
        for e in range(1, epochs + 1):
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(1.0)
            if after_step is not None:
                after_step()
            if on_epoch_end is not None:
                on_epoch_end(e, m)
        return 0.5

    cfg = unstructured.LotteryConfig(sparsity=0.75, rounds=2, epochs=3, rewind_epoch=1)
    mask, rounds = unstructured.lottery(model, cfg, train, log=lambda s: None)
    assert seen == [True, True]
    assert [r["epochs"] for r in rounds] == [3, 2, 2]
    assert [round(r["sparsity"], 3) for r in rounds] == [0.0, 0.5, 0.75]
    assert mask.sparsity() == pytest.approx(0.75, abs=1e-3)


@pytest.mark.parametrize("which", ["zoo", "user"])
def test_cli_unstructured_checkpoint_and_report(run_cli, tmp_path, which):
    out = tmp_path / "out"
    r = run_cli("prune", *models(tmp_path)[which], "--unstructured", "--ratio", "0.7", "--global",
                "--out", out)
    assert r.code == 0, r.err
    rep = read_report(out)
    s = rep["unstructured"]
    assert rep["before"]["macs"] == rep["after"]["macs"] == s["macs_dense"]
    assert s["macs_nonzero"] < s["macs_dense"]
    assert rep["config"]["global"] and rep["config"]["not_pruned"] == rep["output_layers"]
    assert "dense MACs unchanged" in r.out and "nonzero MACs" in r.out
    ck = torch.load(out / "pruned.pt", weights_only=True)
    assert ck["meta"]["unstructured"]["sparsity"] == pytest.approx(s["sparsity"])
    model = tp_vgg.load(str(out / "pruned.pt"), trust_model_code=which == "user")
    zeros = sum(int((m.weight == 0).sum()) for _, m in _layers(model))
    assert zeros == s["zeros"]


def test_cli_finetuning_keeps_pruned_weights_at_zero(run_cli, tmp_path):
    r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--unstructured",
                "--ratio", "0.6", "--finetune-epochs", "1", *FAKE, *QUIET, "--out", tmp_path / "ft")
    assert r.code == 0, r.err
    rep = read_report(tmp_path / "ft")
    assert set(rep["accuracy"]) == {"before", "pruned", "recalibrated", "finetuned"}  # BN re-estimated
    tuned = tp_vgg.load(str(tmp_path / "ft" / "pruned.pt"))
    for name, m in _layers(tuned):  # none regrown while fine-tuning
        if name not in rep["output_layers"]:
            assert int((m.weight == 0).sum()) == round(0.6 * m.weight.numel()), name
    # and `tp-vgg finetune` of that checkpoint keeps exactly those zeros
    r = run_cli("finetune", "--checkpoint", tmp_path / "ft" / "pruned.pt", *FAKE, *QUIET,
                "--epochs", "1", "--out", tmp_path / "ft2")
    assert r.code == 0, r.err
    again = tp_vgg.load(str(tmp_path / "ft2" / "last.pt"))
    changed = False
    for (name, t), (_, a) in zip(_layers(tuned), _layers(again)):
        assert torch.equal(t.weight == 0, a.weight == 0), name
        changed |= not torch.equal(t.weight, a.weight)
    assert changed


@pytest.mark.parametrize("which", ["zoo", "user"])
def test_cli_lottery_ticket_mode(run_cli, tmp_path, which):
    out = tmp_path / "lt"
    r = run_cli("prune", *models(tmp_path)[which], "--unstructured",
                "--ratio", "0.75", "--lottery-rounds", "2", "--rewind-epoch", "1",
                "--finetune-epochs", "2", *FAKE, *QUIET, "--out", out)
    assert r.code == 0, r.err
    rep = read_report(out)
    assert [x["round"] for x in rep["lottery_rounds"]] == [0, 1, 2]
    assert [x["epochs"] for x in rep["lottery_rounds"]] == [2, 1, 1]
    assert rep["lottery_rounds"][-1]["sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert rep["config"]["lottery"]["rewind_epoch"] == 1
    assert "lottery round 2" in r.out


@pytest.mark.parametrize("extra,message", [
    (["--lottery-rounds", "2"], "--lottery-rounds needs --finetune-epochs N"),
    (["--rewind-epoch", "1"], "--rewind-epoch applies to lottery-ticket mode"),
    (["--lottery-rounds", "2", "--rewind-epoch", "3", "--finetune-epochs", "3", *FAKE],
     "--rewind-epoch must be in 0..2"),
    (["--importance", "fpgm"], "--importance fpgm ranks channels; --unstructured ranks single"),
    (["--layer-ratios", '{"features.0": 0.5}'], "--layer-ratios applies to structured"),
])
def test_cli_unstructured_mistakes_exit_2(run_cli, tmp_path, extra, message):
    out = tmp_path / "out"
    r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--unstructured",
                "--ratio", "0.5", *extra, "--out", out)
    assert_one_line_error(r, message, out)


def test_cli_lottery_flags_need_unstructured(run_cli, tmp_path):
    out = tmp_path / "out"
    r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--ratio", "0.5",
                "--lottery-rounds", "2", "--out", out)
    assert_one_line_error(r, "--lottery-rounds applies to --unstructured pruning", out)
