"""The VGG inside the user's network (issue 30): segmenters with ConvTranspose2d and skip
concatenations, multi-output and nested-dict heads, spectral- and weight-norm discriminators,
per-channel buffers, weight standardization, channels-last LayerNorm, GRU heads and
torchvision's SSD300. Each prunes exactly (every output equal to the masked original) or with
its stated invariant checked; raw torch-pruning is never less restrictive than tp-vgg; the
mapping patch is scoped to tp-vgg's own calls."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import randomize
from masked_reference import zero_removed_channels
from methods_util import assert_one_line_error
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm
from torch_pruning.dependency import index_mapping

import tp_vgg
from tp_vgg.models import outputs
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.pruning import mapping, raw
from tp_vgg.pruning.graph import out_channels

USER_MODELS = Path(__file__).parent / "user_models"
CRNN = f"{USER_MODELS / 'crnn.py'}:make"

# name -> (spec options, what holds: "exact" = every output is the masked original)
NETWORKS = {
    "net_unet": ({}, "exact"),
    "net_ternaus": ({}, "exact"),
    "net_fcn": ({}, "exact"),
    "net_two_heads": ({}, "exact"),
    "net_dict_heads": ({}, "exact"),
    "net_layernorm_cl": ({}, "kept"),  # every conv feeds a LayerNorm: none can lose channels
    "net_weight_std": ({}, "exact"),
    "net_buffer_scale": ({}, "buffers"),
    "net_wn_disc": ({"num_classes": 1}, "weight-norm"),
    "net_wn_disc:legacy": ({"num_classes": 1, "kwargs": {"legacy": True}}, "weight-norm"),
    "net_sn_disc": ({"num_classes": 1}, "spectral-norm"),
    "net_sn_disc:legacy": ({"num_classes": 1, "kwargs": {"legacy": True}}, "spectral-norm"),
}


def _spec(name: str) -> ModelSpec:
    opts, _ = NETWORKS[name]
    file = name.split(":")[0]
    return ModelSpec(f"{USER_MODELS / file}.py:make", **{"num_classes": 5, **opts}).resolved()


def _build(spec: ModelSpec) -> nn.Module:
    torch.manual_seed(0)
    return randomize(build_model(spec)).eval()


def _leaves(model, x):
    with torch.no_grad():
        return outputs.tensor_leaves(outputs.run(model, x))


def _plain(model: nn.Module) -> nn.Module:
    """The model with every weight-norm layer holding its effective (eval) weight."""
    model = model.eval()
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, WeightNorm):
                torch.nn.utils.remove_weight_norm(m)
    return model


def test_every_network_file_is_listed():
    files = {p.stem for p in USER_MODELS.glob("net_*.py")}
    assert files == {n.split(":")[0] for n in NETWORKS}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_the_network_prunes_with_what_it_claims_checked(name, tmp_path):
    spec = _spec(name)
    original, model = _build(spec), _build(spec)  # not deepcopy: torch cannot copy a model
    result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))  # under the old weight_norm
    before, after = out_channels(original), out_channels(model)
    kind = NETWORKS[name][1]
    if kind == "kept":  # said, and the model is the original
        assert after == before
        assert any("(LayerNorm)" in n and "keep their output channels" in n
                   for n in result.notes)
        x = spec.example_input(batch=2)
        assert all(torch.equal(a, b) for a, b in zip(_leaves(model, x), _leaves(original, x)))
        return
    assert any(after[n] < before[n] for n in before), "nothing was pruned"
    assert all(after[n] == before[n] for n in result.output_layers)
    x = spec.example_input(batch=2)
    got, want_shapes = _leaves(model, x), [t.shape for t in _leaves(original, x)]
    assert [t.shape for t in got] == want_shapes
    if kind in ("exact", "weight-norm"):
        # independently of tp-vgg's own check: the masked original from the history
        plain = _plain(_build(spec))
        zeroed = zero_removed_channels(plain, spec, result.history)
        for g, w in zip(got, _leaves(zeroed, x)):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * w.abs().max().item())
    if kind == "weight-norm":
        assert any("weight norm on 7 layers" in n and "exact" in n for n in result.notes)
        assert type(model).__name__ == type(original).__name__
        assert set(model.state_dict()) == set(original.state_dict())
    if kind == "spectral-norm":
        assert set(model.state_dict()) == set(original.state_dict())
        legacy = "legacy" in name
        for (n, m), m0 in zip(model.named_modules(), original.modules()):
            if not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            w = m.weight_orig if legacy else m.parametrizations.weight.original
            w0 = m0.weight_orig if legacy else m0.parametrizations.weight.original
            # the un-normalized weight keeps the original's entries (a sub-block of it)
            assert set(w.detach().flatten().tolist()) <= set(w0.detach().flatten().tolist())
            # sigma re-estimated: the normalized weight is W / (top singular value of W)
            sigma = torch.linalg.matrix_norm(w.detach().reshape(w.shape[0], -1), ord=2)
            with torch.no_grad():
                m.eval()
                m(torch.zeros(1, m.in_channels, 4, 4) if isinstance(m, nn.Conv2d)
                  else torch.zeros(1, m.in_features))
            torch.testing.assert_close(m.weight.detach(), w.detach() / sigma, rtol=1e-4,
                                       atol=1e-6)
        assert any("spectral norm on 7 layers" in n and "sigma" in n for n in result.notes)
    if kind == "buffers":
        # each buffer keeps the values of the channels kept by the layer before it
        kept = {n: sorted(set(range(before[n])) - {i for h in result.history if h[0] == n
                                                    for i in h[2]}) for n in before}
        assert model.features[1].scale.shape == (1, after["features.0"], 1, 1)
        torch.testing.assert_close(model.features[1].scale.flatten(),
                                   original.features[1].scale.flatten()[kept["features.0"]])
        assert model.gain.gain.shape == (1, after["features.8"])
        assert any("per-channel buffers pruned" in n for n in result.notes)
        assert "scale" in dict(model.features[1].named_buffers())
    # the checkpoint reloads bit for bit
    path = str(tmp_path / "pruned.pt")
    tp_vgg.save(path, model, spec, history=result.history)
    loaded = tp_vgg.load(path, trust_model_code=True).eval()
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 model.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(_leaves(loaded, x), got))


def test_a_non_tensor_output_leaf_is_skipped_and_named():
    spec = _spec("net_dict_heads")
    result = tp_vgg.prune(build_model(spec).eval(), spec, tp_vgg.PruneConfig(ratio=0.5))
    note = next(n for n in result.notes if "not tensors" in n)
    assert "output['name'] (str)" in note and "output['extra'] (NoneType)" in note


@pytest.mark.parametrize("name, said", [("unsupported_output_none", "returned None"),
                                        ("unsupported_output_str", "returned the str 'ok'")])
def test_an_output_without_tensors_exits_2_naming_it(run_cli, tmp_path, name, said):
    out = tmp_path / "out"
    r = run_cli("prune", "--model", f"{USER_MODELS / name}.py:make", "--ratio", "0.5",
                "--out", out)
    assert_one_line_error(r, f"the model's forward {said}, with no tensor in it", out)


SSD = ["--model", "torchvision.models.detection:ssd300_vgg16", "--model-kwargs",
       '{"weights_backbone": null}', "--num-classes", "21", "--input-size", "300"]


def test_finetuning_a_detector_exits_2_in_one_line(run_cli, tmp_path):
    out = tmp_path / "out"
    r = run_cli("prune", *SSD, "--ratio", "0.5", "--finetune-epochs", "3", "--data", "digits",
                "--out", out)
    assert_one_line_error(r, "--finetune-epochs 3 is not accepted for SSD", out)


@pytest.mark.slow  # SSD300 at 300x300: about 30 s on 2 cores
def test_ssd300_prunes_from_the_command_line_and_detects_after_load(run_cli, tmp_path):
    out = tmp_path / "out"
    r = run_cli("prune", *SSD, "--ratio", "0.5", "--out", out)
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    assert report["after"]["params"] < report["before"]["params"] / 3
    assert report["after"]["macs"] < report["before"]["macs"] / 3
    assert any("raw path head(backbone(x))" in n for n in report["notes"])
    model = tp_vgg.load(str(out / "pruned.pt"), trust_model_code=True).eval()
    with torch.no_grad():
        dets = model([torch.rand(3, 300, 300), torch.rand(3, 240, 320)])
    assert len(dets) == 2 and set(dets[0]) == {"boxes", "scores", "labels"}
    # the head's outputs are the masked original's
    spec = ModelSpec(SSD[1], num_classes=21, input_size=300,
                     kwargs={"weights_backbone": None}).resolved()
    torch.manual_seed(0)
    original = randomize(build_model(spec)).eval()
    pruned = copy.deepcopy(original)
    result = tp_vgg.prune(pruned, spec, tp_vgg.PruneConfig(ratio=0.5))
    zeroed = zero_removed_channels(copy.deepcopy(original), spec, result.history)
    x = spec.example_input()
    for g, w in zip(_leaves(pruned, x), _leaves(zeroed, x)):
        assert float((g - w).abs().max()) <= 1e-4 * float(w.abs().max())


# --- never more restrictive than torch-pruning itself ------------------------------------------

PARITY = sorted(p.stem for p in USER_MODELS.glob("*.py")
                if p.stem not in ("__init__", "vggish_blocks", "vggish", "vggish_nhwc",
                                  "vgg_multiscale"))  # raw torch-pruning 1.6.1 never ends there
SPECIAL = {"vgg_gray28": {"in_channels": 1, "input_size": 28}, "vgg_64": {"input_size": 64},
           "vgg_dict_named": {"output_key": "scores"}, "crnn": {"in_channels": 1,
                                                               "input_size": [32, 128]}}


@pytest.mark.parametrize("name", PARITY)
def test_tp_vgg_prunes_exactly_every_model_raw_torch_pruning_prunes_exactly(name):
    spec = ModelSpec(f"{USER_MODELS / name}.py:make",
                     **{"num_classes": 5, **SPECIAL.get(name, {})}).resolved()
    torch.manual_seed(0)
    original = randomize(build_model(spec)).eval()
    x = spec.example_input()
    theirs = raw.raw_prune(original, x, ratio=0.5)
    if theirs.status != "exact" or theirs.params_after == theirs.params_before:
        pytest.skip(f"raw torch-pruning: {theirs.status} ({theirs.error})")
    model = copy.deepcopy(original)
    result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))  # no refusal
    zeroed = zero_removed_channels(copy.deepcopy(original), spec, result.history)
    for g, w in zip(_leaves(model, x), _leaves(zeroed, x)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * w.abs().max().item())


def test_raw_torch_pruning_is_unpatched_after_tp_vgg_ran():
    """tp-vgg's index-mapping fixes apply inside its own calls only: torch-pruning's function is
    back afterwards, and a raw U-Net prune gives what it gives in a fresh process."""
    original = index_mapping.update_index_mapping
    assert original is mapping._ORIGINAL
    spec = _spec("net_unet")
    model = randomize(build_model(spec)).eval()
    with mapping.scope():
        assert index_mapping.update_index_mapping is mapping.update_index_mapping
        with mapping.scope():  # nested
            pass
        assert index_mapping.update_index_mapping is mapping.update_index_mapping
    tp_vgg.prune(copy.deepcopy(model), spec, tp_vgg.PruneConfig(ratio=0.5))
    assert index_mapping.update_index_mapping is original
    with pytest.raises(RuntimeError):
        with mapping.scope():
            raise RuntimeError("a failure inside")
    assert index_mapping.update_index_mapping is original
    assert raw.raw_prune(model, spec.example_input(), ratio=0.5).status == "exact"
