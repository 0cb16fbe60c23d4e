"""Recurrent heads (a CRNN text-line recognizer: VGG features, a recurrent layer over the
columns, per-column logits): the recurrent layer and the layer feeding it are kept whole,
automatically, everything before is pruned, the run says so, and the result is exact."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import tp_vgg
from tp_vgg.models.zoo import ModelSpec, build_model

from conftest import randomize
from masked_reference import zero_removed_channels

CRNN = f"{Path(__file__).parent / 'user_models' / 'crnn.py'}:make"


@pytest.mark.slow  # about a minute per case on 2 cores
@pytest.mark.parametrize("rnn,bidirectional,batch_first", [
    ("lstm", True, True), ("lstm", False, False), ("lstm", True, False), ("rnn", True, True),
    ("rnn", False, False)])
def test_recurrent_layers_are_kept_whole_and_the_rest_prunes_exactly(rnn, bidirectional,
                                                                     batch_first):
    spec = ModelSpec(CRNN, in_channels=1, input_size=[32, 128], kwargs={
        "rnn": rnn, "bidirectional": bidirectional, "batch_first": batch_first}).resolved()
    model = randomize(build_model(spec)).eval()
    original = copy.deepcopy(model)
    before = tp_vgg.count(model, spec).macs
    result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))
    assert tp_vgg.count(model, spec).macs < before / 2
    kept = dict(original.rnn.named_parameters())
    assert all(torch.equal(p, kept[n]) for n, p in model.rnn.named_parameters())
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert result.channels_after[convs[-1]] == result.channels_before[convs[-1]]
    assert all(result.channels_after[n] == result.channels_before[n] // 2 for n in convs[:-1])
    assert result.output_layers == ["fc"] and model.fc.out_features == 37
    assert any("recurrent layer 'rnn'" in n and "kept whole" in n for n in result.notes)
    x = spec.example_input(batch=2)
    zeroed = zero_removed_channels(copy.deepcopy(original), spec, result.history)
    with torch.no_grad():
        got, want = model(x), zeroed(x)
    assert got.shape == (2, 32, 37)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("bidirectional,batch_first", [(True, True), (False, False)])
def test_a_gru_head_is_kept_whole_and_the_rest_prunes_exactly(bidirectional, batch_first):
    """torch-pruning 1.6.1 cannot trace nn.GRU's gates (its split mapping fails): traced as one
    node, the GRU is kept whole like an LSTM, the layer feeding it keeps its outputs, the rest
    prunes, and the result is the masked original."""
    spec = ModelSpec(CRNN, in_channels=1, input_size=[32, 128], kwargs={
        "rnn": "gru", "bidirectional": bidirectional, "batch_first": batch_first}).resolved()
    model = randomize(build_model(spec)).eval()
    original = copy.deepcopy(model)
    result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))
    kept = dict(original.rnn.named_parameters())
    assert all(torch.equal(p, kept[n]) for n, p in model.rnn.named_parameters())
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert result.channels_after[convs[-1]] == result.channels_before[convs[-1]]
    assert all(result.channels_after[n] == result.channels_before[n] // 2 for n in convs[:-1])
    assert any("recurrent layer 'rnn' (GRU" in n and "kept whole" in n for n in result.notes)
    x = spec.example_input(batch=2)
    zeroed = zero_removed_channels(copy.deepcopy(original), spec, result.history)
    with torch.no_grad():
        got, want = model(x), zeroed(x)
    assert got.shape == (2, 32, 37)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.slow
def test_the_crnn_prunes_from_the_command_line_and_says_what_it_did(run_cli, tmp_path):
    out = tmp_path / "d"
    r = run_cli("prune", "--model", CRNN, "--in-channels", "1", "--input-size", "32x128",
                "--ratio", "0.5", "--out", out)
    assert r.code == 0, r.err
    assert "recurrent layer 'rnn' (LSTM, bidirectional) kept whole" in r.out + r.err
    report = json.loads((out / "report.json").read_text())
    assert report["macs_reduction"] > 2 and any("kept whole" in n for n in report["notes"])
    model = tp_vgg.load(str(out / "pruned.pt"), trust_model_code=True)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 128)).shape == (1, 32, 37)
