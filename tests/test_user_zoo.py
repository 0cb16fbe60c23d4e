"""The user-model zoo (tests/user_models/): VGGs the way people write them, loaded by import
string and by file path, pruned at 0.3 and 0.7 with every registered criterion; and the patterns
torch-pruning cannot follow, which tp-vgg must detect and explain instead of mis-pruning."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from conftest import randomize
from masked_reference import zero_removed_channels

import tp_vgg
from tp_vgg import PruneConfig, UserError
from tp_vgg.data.preprocessing import input_hw
from tp_vgg.models.zoo import ModelSpec, build_model, select_logits
from tp_vgg.pruning import checks, targets
from tp_vgg.pruning.criteria import GRADIENT_CRITERIA, IMPORTANCES
from tp_vgg.pruning.graph import build_graph, out_channels

USER_MODELS = Path(__file__).parent / "user_models"



# Spec options per model (the rest default: 3 channels, 32x32, logits = the output tensor).
ZOO = {
    "vgg_seq_linear": {},
    "vgg_gap_head": {},
    "vgg_conv_head": {},
    "vgg_no_bn": {},
    "vgg_bn_after_relu": {},
    "vgg_activations": {},
    "vgg_modulelist": {},
    "vgg_moduledict": {},
    "vgg_dropout": {},
    "vgg_gray28": {"in_channels": 1, "input_size": 28},
    "vgg_64": {"input_size": 64},
    "vgg_tuple_out": {},
    "vgg_dict_out": {},
    "vgg_dict_named": {"output_key": "scores"},
    "vgg_strided": {},
    "vgg_functional": {},
    "vgg_groupnorm": {},
    "vgg_bn_no_affine": {},
    "vgg_bn_no_stats": {},
    "vgg_instancenorm": {},
    "vggish": {"in_channels": 1, "input_size": [96, 64]},   # imports vggish_blocks.py
    "vggish_nhwc": {"in_channels": 1, "input_size": [96, 64]},  # the published NHWC flatten
    "vgg_permute_flatten": {},
    "vgg_permute_nn_flatten": {},
    "vgg_multiscale": {},  # pooled maps of four depths concatenated, a bare per-channel scale
}
# Criteria that need something a model may lack: the criterion must refuse it with a UserError.
NEEDS = {"bn-scale": ("BatchNorm", lambda m: any(
    isinstance(x, nn.modules.batchnorm._BatchNorm) and x.affine for x in m.modules()))}
DATA_CRITERIA = set(GRADIENT_CRITERIA)  # rank from gradients: given a tiny fake batch


def user_spec(name: str, form: str, monkeypatch, **extra) -> ModelSpec:
    if form == "import":
        monkeypatch.syspath_prepend(str(USER_MODELS))
        target = f"{name}:make"
    else:
        target = f"{USER_MODELS / name}.py:make"
    return ModelSpec(target, num_classes=7, **{**ZOO.get(name, {}), **extra}).resolved()


def test_the_zoo_has_every_file_and_at_least_twelve_models():
    files = sorted(p.stem for p in USER_MODELS.glob("vgg*.py") if p.stem != "vggish_blocks")
    assert files == sorted(ZOO) and len(files) >= 12


def _gradients(name: str, spec: ModelSpec):
    if name not in DATA_CRITERIA:
        return {}
    from tp_vgg.pruning.criteria import GradientBatches

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, spec.in_channels, *input_hw(spec.input_size), generator=g)
    y = torch.randint(0, spec.num_classes, (4,), generator=g)
    return {"gradients": GradientBatches([(x, y)], max_batches=1, output_key=spec.output_key)}


# the cross-layer rankings (issue 20) on each model in one of its two forms (the form is how the
# factory is named; it does not meet the criterion)
ONE_FORM = {"taylor-raw", "group-norm"}


@pytest.mark.parametrize("form,importance", [(f, i) for i in IMPORTANCES.names()
                                             for f in ("import", "file")
                                             if i not in ONE_FORM or f == "file"])
@pytest.mark.parametrize("ratio", [0.3, 0.7])
@pytest.mark.parametrize("name", list(ZOO))
def test_user_model_prunes_correctly(name, form, ratio, importance, monkeypatch, tmp_path):
    spec = user_spec(name, form, monkeypatch)
    torch.manual_seed(0)
    original = randomize(build_model(spec)).eval()
    model = copy.deepcopy(original)
    cfg = PruneConfig(ratio=ratio, importance=importance, seed=1)
    if importance in NEEDS and not NEEDS[importance][1](model):
        with pytest.raises(UserError, match=NEEDS[importance][0]):
            tp_vgg.prune(model, spec, cfg)
        return
    result = tp_vgg.prune(model, spec, cfg, **_gradients(importance, spec))

    # something was pruned, the logits layer was not
    before, after = out_channels(original), out_channels(model)
    assert any(after[n] < before[n] for n in before)
    assert all(after[n] == before[n] for n in result.output_layers)
    # forward works and the logits keep their shape
    x = spec.example_input(batch=2)
    with torch.no_grad():
        want_shape = select_logits(original(x), spec.output_key).shape
        got = select_logits(model(x), spec.output_key)
    assert got.shape == want_shape == (2, 7)
    # masked equivalence: pruned == original with the removed channels zeroed
    zeroed = zero_removed_channels(copy.deepcopy(original), spec, result.history)
    with torch.no_grad():
        want = select_logits(zeroed(x), spec.output_key)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    # the checkpoint reloads exactly
    path = str(tmp_path / "pruned.pt")
    tp_vgg.save(path, model, spec, history=result.history)
    loaded = tp_vgg.load(path, trust_model_code=True)  # the model is code: our own test file
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 model.state_dict().values()))
    with torch.no_grad():
        assert torch.equal(select_logits(loaded(x), spec.output_key), got)


def test_frozen_parameters_are_pruned_and_stay_frozen(monkeypatch):
    """A user who froze the model (requires_grad=False) still gets it pruned: autograd tracing
    would otherwise see no layer and silently prune nothing."""
    spec = user_spec("vgg_seq_linear", "file", monkeypatch)
    model = build_model(spec).requires_grad_(False)
    result = tp_vgg.prune(model, spec, PruneConfig(ratio=0.5))
    assert result.channels_after["features.0"] == 4
    assert not any(p.requires_grad for p in model.parameters())


# --- multi-output models --------------------------------------------------------------------

def test_tuple_and_dict_logits_are_found(monkeypatch):
    """Every output is traced, so every layer producing one is protected: the embedding
    returned beside the logits too."""
    for name, layers in (("vgg_tuple_out", {"fc", "embed.0"}), ("vgg_dict_out", {"head",
                                                                             "features.4"})):
        spec = user_spec(name, "file", monkeypatch)
        result = tp_vgg.prune(build_model(spec), spec, PruneConfig(ratio=0.5))
        assert set(result.output_layers) == layers


def test_dict_with_several_tensors_asks_for_output_key(run_cli, tmp_path):
    model = f"{USER_MODELS / 'vgg_dict_named.py'}:make"
    # without data no logits are needed: every output is pruned and checked
    r = run_cli("prune", "--model", model, "--ratio", "0.5", "--out", tmp_path / "p")
    assert r.code == 0, r.err
    r = run_cli("prune", "--model", model, "--ratio", "0.5", "--output-key", "logits",
                "--out", tmp_path / "o")
    assert r.code == 2 and "--output-key 'logits' is not in the model's output; keys: embedding, scores" in r.err
    assert not (tmp_path / "o").exists()
    r = run_cli("prune", "--model", model, "--ratio", "0.5", "--output-key", "scores",
                "--out", tmp_path / "o")
    assert r.code == 0, r.err
    # every output's layer is protected, the embedding beside the scores
    assert json.loads((tmp_path / "o" / "report.json").read_text())["output_layers"] == [
        "scores", "embedding"]
    loaded = tp_vgg.load(str(tmp_path / "o" / "pruned.pt"), trust_model_code=True)
    assert loaded(torch.randn(1, 3, 32, 32))["scores"].shape == (1, 10)


# --- normalization layers other than affine BatchNorm ----------------------------------------

# vgg_groupnorm: conv -> GroupNorm(groups, C); channels each conv keeps, exactly, per ratio
GROUPNORM = {"features.0.0": ("features.0.1", 8, 2), "features.2.0": ("features.2.1", 16, 4),
             "features.4.0": ("features.4.1", 16, 1)}
GROUPNORM_KEPT = {0.3: [4, 8, 11], 0.5: [4, 8, 8], 0.7: [2, 4, 4]}


def _pruned_zoo_model(name, monkeypatch, **cfg):
    spec = user_spec(name, "file", monkeypatch)
    original = randomize(build_model(spec)).eval()
    model = copy.deepcopy(original)
    return spec, original, model, tp_vgg.prune(model, spec, PruneConfig(**cfg))


@pytest.mark.parametrize("ratio", list(GROUPNORM_KEPT))
def test_groupnorm_keeps_its_groups_and_each_group_loses_the_same_channels(ratio, monkeypatch):
    """num_groups stays, each group keeps int(C / G * (1 - r)) channels: the same positions in
    every group, so num_channels stays a multiple of num_groups; GroupNorm(1, C) prunes freely."""
    spec, original, model, result = _pruned_zoo_model("vgg_groupnorm", monkeypatch, ratio=ratio)
    for (conv, (norm, c, g)), kept in zip(GROUPNORM.items(), GROUPNORM_KEPT[ratio]):
        gn = model.get_submodule(norm)
        assert result.channels_after[conv] == gn.num_channels == kept, conv
        assert gn.num_groups == g and kept % g == 0
        if gn.affine:
            assert gn.weight.shape == gn.bias.shape == (kept,)
        (gone,) = [idxs for layer, _, idxs in result.history if layer == conv]  # one step
        size = c // g
        positions = [sorted(i % size for i in gone if i // size == k) for k in range(g)]
        assert all(p == positions[0] for p in positions) and len(positions[0]) == size - kept // g
    x = spec.example_input(batch=3)
    zeroed = zero_removed_channels(copy.deepcopy(original), spec, result.history)
    with torch.no_grad():
        got, want = model(x), zeroed(x)
        assert torch.isfinite(got).all() and got.shape == (3, 7)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
        assert not torch.allclose(original(x), want, rtol=1e-4, atol=1e-5)  # pruning did matter


def test_groupnorm_with_round_to_rounds_each_group_alike(monkeypatch):
    """torch-pruning 1.6.1 would round the per-group count as if it were the layer's and skip
    the layer; here the kept total is a multiple of --round-to and of the groups."""
    _, _, model, result = _pruned_zoo_model("vgg_groupnorm", monkeypatch, ratio=0.3, round_to=8,
                                            layer_ratios={"features.0.0": 0})
    assert [result.channels_after[n] for n in GROUPNORM] == [8, 8, 8]
    assert model.features[2][1].num_channels == 8 and model.features[2][1].num_groups == 4
    _, _, _, result = _pruned_zoo_model("vgg_groupnorm", monkeypatch, ratio=0.5, round_to=4)
    assert [result.channels_after[n] for n in GROUPNORM] == [4, 8, 8]


def test_groupnorm_ratio_that_empties_its_groups_is_refused(monkeypatch):
    spec = user_spec("vgg_groupnorm", "file", monkeypatch)
    model = build_model(spec)
    with pytest.raises(UserError, match=r"ratio 0.85 would leave layer 'features.0.0' with 0 of its 8 "
                       r"channels: it feeds a GroupNorm of 2 groups of 4, .*= 0; give it at most 0.75 with --layer-ratios"):
        tp_vgg.prune(model, spec, PruneConfig(ratio=0.85))
    assert out_channels(model) == out_channels(build_model(spec))  # nothing was pruned
    others = {"features.2.0": 0, "features.4.0": 0}
    with pytest.raises(UserError, match=r"int\(4 \* \(1 - 0.5\)\) = 2, lowered alike until the "
                       r"total is a multiple of --round-to 3; give it at most 0.25 with --layer-ratios"):
        tp_vgg.prune(model, spec, PruneConfig(ratio=0.5, round_to=3, layer_ratios=others))
    with pytest.raises(UserError, match=r"no equal count per group makes a multiple of --round-to "
                       r"16; keep it unpruned with --layer-ratios '\{\"features.0.0\": 0\}'"):
        tp_vgg.prune(model, spec, PruneConfig(ratio=0.5, round_to=16, layer_ratios=others))
    tp_vgg.prune(model, spec, PruneConfig(ratio=0.25, round_to=3, layer_ratios=others))
    assert model.features[0][1].num_channels == 6  # 3 per group: the most that is a multiple of 3


def test_groupnorm_global_ranking_removes_whole_rows_of_groups(monkeypatch):
    """--global ranks a GroupNorm-fed layer by position within a group (G channels at a time),
    caps it per group (never the last channel of a group) and reaches the total (G channels go
    together, so it may remove up to G - 1 more)."""
    _, _, model, result = _pruned_zoo_model("vgg_groupnorm", monkeypatch, ratio=0.8,
                                            global_pruning=True)
    assert [result.channels_after[n] for n in GROUPNORM] == [2, 4, 2]  # every cap reached
    _, _, model, result = _pruned_zoo_model("vgg_groupnorm", monkeypatch, ratio=0.5,
                                            global_pruning=True)
    after = [result.channels_after[n] for n in GROUPNORM]
    assert 20 <= 40 - sum(after) < 20 + 4
    assert all(k % g == 0 and k >= g for k, (_, _, g) in zip(after, GROUPNORM.values()))


@pytest.mark.parametrize("global_pruning", [False, True])
def test_groupnorm_target_speedup_plans_what_prune_does(global_pruning, monkeypatch):
    """--target-speedup plans the same GroupNorm-aligned channel counts that pruning then gives."""
    spec = user_spec("vgg_groupnorm", "file", monkeypatch)
    model = randomize(build_model(spec)).eval()
    cfg, plan = targets.solve(model, spec, PruneConfig(global_pruning=global_pruning, round_to=4),
                              targets.Target(speedup=1.5))
    result = tp_vgg.prune(model, spec, cfg)
    assert plan.channels == {n: result.channels_before[n] - result.channels_after[n]
                             for n in plan.channels}
    assert all(result.channels_after[n] % 4 == 0 for n in GROUPNORM)
    assert tp_vgg.count(model, spec).macs == plan.predicted_macs


def test_groupnorm_check_is_exact_and_catches_groups_that_lose_unequally(monkeypatch):
    """The after-pruning check normalizes each group of the zeroed original over its kept
    channels: one channel from each group passes; a whole group (12 = 4 x 3 channels left,
    regrouped) is caught at the GroupNorm, with the right cause."""
    spec = user_spec("vgg_groupnorm", "file", monkeypatch)
    for gone, ok in (([0, 5, 10, 15], True), ([0, 1, 2, 3], False)):
        model = randomize(build_model(spec)).eval()
        example = spec.example_input()
        graph = build_graph(model, spec, example)
        group = graph.get_pruning_group(model.features[2][0], tp.prune_conv_out_channels, gone)
        masked = checks.MaskedOriginal(model, graph, spec, example)
        masked.take([group])       # on the model itself, before the group is pruned
        group.prune()
        assert model.features[2][1].num_channels == 12
        if ok:
            checks.check_pruned(model, spec, example, masked)
            continue
        with pytest.raises(UserError, match=r"first layer whose output differs is 'features.2.1' "
                           r"\(GroupNorm\), right after 'features.2.0': its 4 groups did not each "
                           r"lose the same number of channels"):
            checks.check_pruned(model, spec, example, masked)


def test_batchnorm_without_affine_or_running_stats_prunes_channel_by_channel(monkeypatch):
    _, _, model, result = _pruned_zoo_model("vgg_bn_no_affine", monkeypatch, ratio=0.5)
    assert result.channels_after == {"features.0": 4, "features.4": 8, "classifier.0": 12,
                                     "classifier.3": 7}
    for bn, kept in (("features.1", 4), ("features.5", 8), ("classifier.1", 12)):
        m = model.get_submodule(bn)
        assert m.weight is None and m.num_features == kept
        assert m.running_mean.shape == m.running_var.shape == (kept,)
    _, _, model, result = _pruned_zoo_model("vgg_bn_no_stats", monkeypatch, ratio=0.5)
    for conv, bn, kept in (("features.0", "features.1", 4), ("features.4", "features.5", 8)):
        m = model.get_submodule(bn)
        assert result.channels_after[conv] == m.num_features == kept
        assert m.running_mean is None and m.weight.shape == m.bias.shape == (kept,)
    _, _, model, result = _pruned_zoo_model("vgg_instancenorm", monkeypatch, ratio=0.5)
    assert [(m.num_features, tuple(m.weight.shape)) for m in model.modules()
            if isinstance(m, nn.InstanceNorm2d)] == [(4, (4,)), (8, (8,)), (8, (8,))]


def test_bn_scale_refuses_batchnorm_without_affine_in_one_line(run_cli, tmp_path):
    r = run_cli("prune", "--model", _unsupported("vgg_bn_no_affine"), "--importance", "bn-scale",
                "--ratio", "0.5", "--out", tmp_path / "o")
    assert r.code == 2
    (line,) = r.err.strip().splitlines()
    assert ("no prunable layer of this model is followed by an affine BatchNorm (its BatchNorm "
            "layers have affine=False, no gamma: features.1, features.5, classifier.1); "
            "accepted here: l1, l2, random, fpgm, lamp, taylor") in line
    assert not (tmp_path / "o").exists()


# --- through the command line ---------------------------------------------------------------

@pytest.mark.parametrize("form", ["import", "file"])
def test_cli_grayscale_28(run_cli, tmp_path, monkeypatch, form):
    monkeypatch.syspath_prepend(str(USER_MODELS))
    model = "vgg_gray28:make" if form == "import" else f"{USER_MODELS / 'vgg_gray28.py'}:make"
    r = run_cli("prune", "--model", model, "--in-channels", "1", "--input-size", "28",
                "--ratio", "0.5", "--out", tmp_path)
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["after"]["macs"] < report["before"]["macs"]
    ckpt = torch.load(tmp_path / "pruned.pt", weights_only=True)
    assert ckpt["preprocessing"]["in_channels"] == 1 and ckpt["preprocessing"]["input_size"] == 28
    loaded = tp_vgg.load(str(tmp_path / "pruned.pt"), trust_model_code=True)
    assert loaded(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_cli_grayscale_without_in_channels_says_what_to_pass(run_cli, tmp_path):
    r = run_cli("prune", "--model", f"{USER_MODELS / 'vgg_gray28.py'}:make", "--ratio", "0.5",
                "--out", tmp_path / "o")
    assert r.code == 2 and "cannot run on a 1x3x32x32 input" in r.err and "--in-channels" in r.err
    assert not (tmp_path / "o").exists()


# --- patterns torch-pruning cannot follow: detected, explained, nothing written --------------

def _unsupported(name: str, factory: str = "make") -> str:
    return f"{USER_MODELS / name}.py:{factory}"


UNSUPPORTED = {
    "hard-coded view width": (
        "unsupported_view_width", [],
        ["after pruning, the model's forward fails", "unsupported_view_width.py:17",
         "`x = x.view(-1, 16 * 4 * 4)`", "torch.flatten(x, 1)", "x.view(x.size(0), -1)"]),
    "hard-coded reshape(1, 256)": (
        "unsupported_reshape_batch1", [],
        ["unsupported_reshape_batch1.py:15", "reshape(1, 256)", "torch.flatten(x, 1)"]),
    "bare parameter, wrong dimension guessed": (
        "unsupported_bare_param", ["--ratio", "0.3"],
        ["parameter 'extra' is used outside any module", "cut dimension 3 (1x1x8x8 -> 1x1x8x",
         "--layer-ratios '{\"block1.4\": 0}'"]),
    "channel mean (only masked equivalence sees it)": (
        "unsupported_channel_mean", [],
        ["no longer computes what the original computes with the removed channels zeroed",
         "first layer whose output differs is 'body.0'", "--layer-ratios '{\"stem.0\": 0}'"]),
    "no Conv2d/Linear modules": (
        "unsupported_no_modules", [],
        ["the model has no Conv2d or Linear module", "parameters outside modules: w1, w2, fc"]),
    "features under torch.no_grad()": (
        "unsupported_no_grad", [],
        ["2 Conv2d/Linear layer(s) (backbone.0, backbone.3) are not traced", "torch.no_grad()",
         "nothing would be pruned"]),
    "output layer named wrong": (
        "vgg_seq_linear", ["--output-layer", "features.0"],
        ["pruning changed the logits from shape (1, 10) to (1, 5)", "--output-layer NAME"]),
    "output layer not a layer": (
        "vgg_seq_linear", ["--output-layer", "features.2"],
        ["--output-layer 'features.2' is a ReLU; accepted: the Conv2d or Linear"]),
    "LocalResponseNorm (mixes neighbouring channels)": (
        "unsupported_channel_norm:make_lrn", [],
        ["the first layer whose output differs is 'features.1' (LocalResponseNorm)",
         "LocalResponseNorm normalizes across channels", "--layer-ratios '{\"features.0\": 0}'"]),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_unsupported_pattern_is_explained_and_nothing_written(run_cli, tmp_path, case):
    name, extra, phrases = UNSUPPORTED[case]
    name, _, factory = name.partition(":")
    args = {"--ratio": "0.5"}
    if "--ratio" in extra:
        args = {}
    out = tmp_path / "out"
    r = run_cli("prune", "--model", _unsupported(name, factory or "make"),
                *[x for kv in args.items() for x in kv],
                *extra, "--out", out)
    assert r.code == 2, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert not out.exists() or not any(out.iterdir())


def test_following_the_advice_works(run_cli, tmp_path):
    """The --layer-ratios each message suggests prunes the model correctly."""
    r = run_cli("prune", "--model", _unsupported("unsupported_bare_param"), "--ratio", "0.3",
                "--layer-ratios", '{"block1.4": 0}', "--out", tmp_path / "a")
    assert r.code == 0, r.err
    r = run_cli("prune", "--model", _unsupported("unsupported_channel_mean"), "--ratio", "0.5",
                "--layer-ratios", '{"stem.0": 0}', "--out", tmp_path / "b")
    assert r.code == 0, r.err
    assert tp_vgg.load(str(tmp_path / "b" / "pruned.pt"),
                       trust_model_code=True).body[0].out_channels == 8
    for factory in ("make", "make_lrn"):
        r = run_cli("prune", "--model", _unsupported("unsupported_channel_norm", factory),
                    "--ratio", "0.5", "--layer-ratios", '{"features.0": 0}',
                    "--out", tmp_path / factory)
        assert r.code == 0, r.err
        loaded = tp_vgg.load(str(tmp_path / factory / "pruned.pt"), trust_model_code=True)
        assert [m.out_channels for m in loaded.features if isinstance(m, nn.Conv2d)] == [8, 8]


def test_a_per_channel_bare_parameter_is_pruned_and_said(tmp_path):
    """A (1, C, 1, 1) parameter outside modules: torch-pruning's guess is right; the result
    passes the masked-equivalence check and a note says what happened."""
    spec = ModelSpec(_unsupported("unsupported_bare_param", "make_scale")).resolved()
    original = randomize(build_model(spec)).eval()
    model = copy.deepcopy(original)
    result = tp_vgg.prune(model, spec, PruneConfig(ratio=0.5))
    assert tuple(model.extra.shape) == (1, 8, 1, 1)
    assert any("parameter 'extra' is used outside any module" in n for n in result.notes)
    x = spec.example_input(batch=2)
    with torch.no_grad():
        got, plain = model(x), original(x)
    assert got.shape == plain.shape
    tp_vgg.save(str(tmp_path / "m.pt"), model, spec, history=result.history)
    reloaded = tp_vgg.load(str(tmp_path / "m.pt"), trust_model_code=True)
    with torch.no_grad():
        assert torch.equal(reloaded(x), got)


def test_a_guess_that_would_cut_everything_leaves_the_layer_and_says_so():
    """At 0.5, cutting 8 of the spatial parameter's 8 columns is refused by torch-pruning: the
    coupled layer keeps its channels, and the notes say why rather than staying silent."""
    spec = ModelSpec(_unsupported("unsupported_bare_param")).resolved()
    model = build_model(spec)
    result = tp_vgg.prune(model, spec, PruneConfig(ratio=0.5))
    assert result.channels_after["block1.4"] == 16
    assert any("layer 'block1.4' kept all its 16 channels" in n and "'extra'" in n
               for n in result.notes)


def test_library_callers_get_the_same_user_error():
    spec = ModelSpec(_unsupported("unsupported_view_width")).resolved()
    with pytest.raises(UserError, match=r"torch.flatten\(x, 1\)"):
        tp_vgg.prune(build_model(spec), spec, PruneConfig(ratio=0.5))
