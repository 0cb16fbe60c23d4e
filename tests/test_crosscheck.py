"""fvcore's MACs agree with PyTorch's own FlopCounterMode (2 FLOPs per multiply-add) on the
conv + linear work of every zoo VGG, original and pruned, in total and layer by layer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import tp_vgg
from tp_vgg.models.zoo import TORCHVISION_VGGS, ModelSpec, build_model

TOLERANCE = 0.01
CONV_OPS = ("convolution", "_convolution", "conv2d")
LINEAR_OPS = ("addmm", "mm", "linear")


def torch_macs(model: nn.Module, spec: ModelSpec) -> dict:
    """{layer name: MACs} for every Conv2d/Linear, from FlopCounterMode's FLOPs / 2, plus
    'conv' and 'linear' totals over the whole model."""
    model.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(spec.example_input(batch=1))
    counts = fc.get_flop_counts()
    prefix = type(model).__name__ + "."
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out[name] = sum(counts.get(prefix + name, {}).values()) / 2
    glob = {str(op).split(".")[-1]: n for op, n in counts["Global"].items()}
    out["conv"] = sum(glob.get(op, 0) for op in CONV_OPS) / 2
    out["linear"] = sum(glob.get(op, 0) for op in LINEAR_OPS) / 2
    out["total"] = sum(glob.values()) / 2
    return out


def fvcore_macs(model: nn.Module, spec: ModelSpec) -> dict:
    c = tp_vgg.count(model, spec)
    out = {l.name: l.macs for l in c.layers if l.type in ("Conv2d", "Linear")}
    out["conv"] = sum(l.macs for l in c.layers if l.type == "Conv2d")
    out["linear"] = sum(l.macs for l in c.layers if l.type == "Linear")
    out["total"] = c.macs
    return out


def assert_agree(model: nn.Module, spec: ModelSpec) -> dict:
    fv, pt = fvcore_macs(model, spec), torch_macs(model, spec)
    assert set(fv) == set(pt)
    assert fv["conv"] > 0 and fv["linear"] > 0
    for key in fv:
        assert fv[key] == pytest.approx(pt[key], rel=TOLERANCE), key
    return fv


def test_original_and_pruned_agree(pruned_case):
    """Every zoo VGG (torchvision ones at 32x32), original and pruned at ratio 0.5."""
    fv_o = assert_agree(pruned_case.original, pruned_case.spec)
    fv_p = assert_agree(pruned_case.pruned, pruned_case.spec)
    assert fv_p["conv"] < 0.3 * fv_o["conv"]  # really pruned: (1 - 0.5)^2 on the inner convs


def test_per_layer_counts_match_the_closed_form():
    """Ground truth by hand for one tiny model: a 3x3 conv at HxW costs 9*Cin*Cout*H*W MACs."""
    spec = ModelSpec("cifar_vgg11", width=0.125, num_classes=10).resolved()
    model = build_model(spec)
    fv = fvcore_macs(model, spec)
    h = 32
    for name, m in model.features.named_children():
        if isinstance(m, nn.MaxPool2d):
            h //= 2
        elif isinstance(m, nn.Conv2d):
            assert fv[f"features.{name}"] == 9 * m.in_channels * m.out_channels * h * h
    for name in ("classifier.0", "classifier.2"):
        lin = model.get_submodule(name)
        assert fv[name] == lin.in_features * lin.out_features


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION_VGGS)
def test_torchvision_at_224_agree(name):
    spec = ModelSpec(name).resolved()
    torch.manual_seed(0)
    model = build_model(spec).eval()
    assert_agree(model, spec)
    pruned = copy.deepcopy(model)
    tp_vgg.prune(pruned, spec, tp_vgg.PruneConfig(ratio=0.5))
    assert_agree(pruned, spec)
