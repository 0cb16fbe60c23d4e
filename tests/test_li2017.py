"""Li et al. 2017 ("Pruning Filters for Efficient ConvNets"), table 2: CIFAR-10 VGG-16 and
VGG-16-pruned-A (conv1 and conv8-13 lose half their filters) -- 3.13e8 -> 2.06e8 MACs (the
paper's "FLOPs" are multiply-adds) and 1.50e7 -> 5.4e6 parameters, through the CLI on the user
model file tests/li2017_vgg16.py."""

from __future__ import annotations

import json
import os

import pytest
from methods_util import read_report

MODEL_FILE = os.path.join(os.path.dirname(__file__), "li2017_vgg16.py")
MODEL = f"{MODEL_FILE}:vgg16"
PRUNED_A = {f"features.conv{i}": 0.5 for i in (1, 8, 9, 10, 11, 12, 13)}


def test_vgg16_counts(run_cli):
    r = run_cli("profile", "--model", MODEL, "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert round(data["macs"] / 1e8, 2) == 3.13
    assert round(data["params"] / 1e7, 2) == 1.50


def test_vgg16_pruned_a(run_cli, tmp_path):
    r = run_cli("prune", "--model", MODEL, "--ratio", "0", "--layer-ratios",
                json.dumps(PRUNED_A), "--out", tmp_path)
    assert r.code == 0, r.err
    rep = read_report(tmp_path)
    assert round(rep["before"]["macs"] / 1e8, 2) == 3.13
    assert round(rep["after"]["macs"] / 1e8, 2) == 2.06
    assert round(rep["before"]["params"] / 1e7, 2) == 1.50
    assert round(rep["after"]["params"] / 1e6, 1) == 5.4
    convs = {l["name"]: l for l in rep["layers"] if l["type"] == "Conv2d"}
    for i in range(1, 14):
        layer = convs[f"features.conv{i}"]
        halved = f"features.conv{i}" in PRUNED_A
        assert layer["out_channels_after"] == layer["out_channels_before"] // (2 if halved else 1)
    assert "34%" in f"{1 - rep['after']['macs'] / rep['before']['macs']:.0%}"  # the paper's 34.2 %


@pytest.mark.parametrize("bad", [{"features.conv14": 0.5}, {"features.bn1": 0.5}])
def test_a_wrong_layer_name_is_a_user_error(run_cli, tmp_path, bad):
    r = run_cli("prune", "--model", MODEL, "--ratio", "0", "--layer-ratios", json.dumps(bad),
                "--out", tmp_path / "o")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
