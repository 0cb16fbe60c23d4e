import copy

import pytest
import torch
import torch.nn as nn
from conftest import conv_and_linear, randomize, zoo_spec
from masked_reference import zero_removed_channels

import tp_vgg
from tp_vgg import PruneConfig, UserError
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.pruning.graph import out_channels


def test_forward_shape_unchanged(pruned_case):
    x = pruned_case.spec.example_input(batch=2)
    with torch.no_grad():
        assert pruned_case.pruned(x).shape == pruned_case.original(x).shape == (2, 50)


def test_every_layer_keeps_exactly_int_c_times_one_minus_r(pruned_case):
    before = out_channels(pruned_case.original)
    after = out_channels(pruned_case.pruned)
    logits_layer = conv_and_linear(pruned_case.original)[-1]
    assert pruned_case.result.output_layers == [logits_layer]
    for name, c in before.items():
        expected = c if name == logits_layer else int(c * (1 - pruned_case.ratio))
        assert after[name] == expected, name
    # inputs follow the producer: each conv reads what the previous conv now writes
    convs = [m for m in pruned_case.pruned.modules() if isinstance(m, nn.Conv2d)]
    for a, b in zip(convs, convs[1:]):
        assert b.in_channels == a.out_channels


def test_pruned_equals_original_with_removed_channels_zeroed(pruned_case):
    """The test that catches lost conv/BN/FC biases: compare logits with 1e-5 relative tolerance."""
    zeroed = zero_removed_channels(copy.deepcopy(pruned_case.original), pruned_case.spec,
                                   pruned_case.result.history)
    x = pruned_case.spec.example_input(batch=3)
    with torch.no_grad():
        want, got = zeroed(x), pruned_case.pruned(x)
    assert want.abs().max() > 1e-3  # a non-trivial output
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    with torch.no_grad():  # and the removed channels did matter
        assert not torch.allclose(pruned_case.original(x), want, rtol=1e-5, atol=1e-6)


def test_macs_and_params_fall(pruned_case):
    before = tp_vgg.count(pruned_case.original, pruned_case.spec)
    after = tp_vgg.count(pruned_case.pruned, pruned_case.spec)
    assert after.macs < before.macs and after.params < before.params
    # halving both sides of every inner conv leaves about a quarter of the conv work
    conv_before = sum(l.macs for l in before.layers if l.type == "Conv2d")
    conv_after = sum(l.macs for l in after.layers if l.type == "Conv2d")
    assert 0.24 < conv_after / conv_before < 0.27


@pytest.mark.parametrize("training", [True, False])
def test_callers_mode_is_kept(training):
    spec = zoo_spec("cifar_vgg11_bn")
    model = build_model(spec).train(training)
    tp_vgg.prune(model, spec, PruneConfig(ratio=0.3))
    assert all(m.training == training for m in model.modules())


@pytest.mark.parametrize("ratio,round_to", [(0.3, 8), (0.5, 16), (0.7, 4)])
def test_round_to_rounds_kept_count_down(ratio, round_to):
    spec = zoo_spec("cifar_vgg13_bn")  # width 0.5: 32..256 channels
    model = build_model(spec)
    before = out_channels(model)
    result = tp_vgg.prune(model, spec, PruneConfig(ratio=ratio, round_to=round_to))
    for name, c in before.items():
        if name in result.output_layers:
            continue
        keep = int(c * (1 - ratio))
        assert result.channels_after[name] == keep - keep % round_to, name


def test_layer_ratios_prune_only_the_named_layers():
    spec = zoo_spec("cifar_vgg11_bn")
    model = build_model(spec)
    before = out_channels(model)
    cfg = PruneConfig(ratio=0.0, layer_ratios={"features.0": 0.5, "features.8": 0.25})
    after = tp_vgg.prune(model, spec, cfg).channels_after
    assert after["features.0"] == before["features.0"] // 2
    assert after["features.8"] == int(before["features.8"] * 0.75)
    untouched = set(before) - {"features.0", "features.8"}
    assert all(after[n] == before[n] for n in untouched)


def test_global_ranking_respects_max_layer_ratio():
    spec = zoo_spec("cifar_vgg16_bn")
    model = randomize(build_model(spec))
    with torch.no_grad():  # make one layer look unimportant: global ranking would empty it
        model.features[0].weight.mul_(1e-3)
    before = out_channels(model)
    result = tp_vgg.prune(model, spec, PruneConfig(ratio=0.5, global_pruning=True, max_layer_ratio=0.6))
    after = result.channels_after
    assert after["features.0"] == before["features.0"] - int(before["features.0"] * 0.6)
    assert all(after[n] >= before[n] * 0.4 - 1 for n in before)
    assert len({after[n] / before[n] for n in before if n not in result.output_layers}) > 1


def test_random_importance_is_seeded():
    spec = zoo_spec("cifar_vgg11")
    runs = []
    for seed in (1, 1, 2):
        model = build_model(spec)
        runs.append(tp_vgg.prune(model, spec, PruneConfig(ratio=0.5, importance="random", seed=seed)).history)
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_l1_removes_the_smallest_filters():
    spec = zoo_spec("cifar_vgg11")
    model = build_model(spec)
    norms = model.features[0].weight.detach().abs().flatten(1).sum(1)
    result = tp_vgg.prune(model, spec, PruneConfig(ratio=0.5, importance="l1"))
    removed = next(idxs for name, _, idxs in result.history if name == "features.0")
    assert sorted(removed) == sorted(norms.argsort()[: len(norms) // 2].tolist())


def test_logits_layer_found_for_a_1x1_conv_classifier(tmp_path):
    f = tmp_path / "convhead.py"
    f.write_text(
        "import torch.nn as nn\n"
        "def make(num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),\n"
        "        nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),\n"
        "        nn.Conv2d(32, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n")
    spec = ModelSpec(f"{f}:make").resolved()
    model = build_model(spec)
    result = tp_vgg.prune(model, spec, PruneConfig(ratio=0.5))
    assert result.output_layers == ["6"]
    assert model[6].out_channels == 10 and model[4].out_channels == 16
    assert model(spec.example_input()).shape == (1, 10)


@pytest.mark.parametrize("cfg,message", [
    (PruneConfig(ratio=1.0), r"--ratio must be a number in \[0, 1\), got 1.0"),
    (PruneConfig(ratio=-0.1), r"--ratio must be a number in \[0, 1\)"),
    (PruneConfig(ratio=0.5, importance="nope"), r"unknown importance 'nope'; accepted: l1, l2, random"),
    (PruneConfig(ratio=0.5, layer_ratios={"features.99": 0.5}), r"names 'features.99', which is not a module"),
    (PruneConfig(ratio=0.5, layer_ratios={"features.2": 0.5}), r"'features.2', a ReLU with no Conv2d"),
    (PruneConfig(ratio=0.5, layer_ratios={"classifier.2": 0.5}), r"the layer that produces the logits"),
    (PruneConfig(ratio=0.5, round_to=64), r"would leave layer 'features.0' with 0 of its 32 channels after rounding"),
    (PruneConfig(ratio=0.99), r"ratio 0.99 would leave layer 'features.0' with 0 of its 32 channels"),
])
def test_bad_configs_are_user_errors_and_leave_the_model_alone(cfg, message):
    spec = zoo_spec("cifar_vgg11_bn")
    model = build_model(spec)
    before = out_channels(model)
    with pytest.raises(UserError, match=message):
        tp_vgg.prune(model, spec, cfg)
    assert out_channels(model) == before
