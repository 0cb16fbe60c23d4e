"""The masked-equivalence check runs inside every ``tp_vgg.prune``, on the model itself (no
copy), whatever its size: the pruned model must compute what the original computes with the
removed channels zeroed. A model torch-pruning would cut wrongly is refused (exit 2, one line
naming the first layer that diverges, nothing written); NHWC flattens are pruned right."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import tp_vgg
from tp_vgg.models.zoo import TORCHVISION_VGGS, ModelSpec, build_model
from tp_vgg.pruning import checks
from tp_vgg.pruning import graph as pruning_graph

from conftest import randomize
from masked_reference import zero_removed_channels
from methods_util import assert_one_line_error

USER_MODELS = Path(__file__).parent / "user_models"
NHWC = f"{USER_MODELS / 'vggish_nhwc.py'}:make"
NHWC_FLAGS = ("--model", NHWC, "--in-channels", "1", "--input-size", "96x64")


def _spy(monkeypatch):
    """Record each masked original the check takes (its logits: None when it could not run)."""
    taken = []
    take = checks.MaskedOriginal.take

    def spy(self, groups):
        take(self, groups)
        taken.append(self.logits)
    monkeypatch.setattr(checks.MaskedOriginal, "take", spy)
    return taken


def _raw_flatten_order(monkeypatch):
    """torch-pruning's own column mapping (channel-major), i.e. the NHWC flatten mis-pruned."""
    monkeypatch.setattr(pruning_graph, "_follow_flatten_order", lambda *a, **k: None)


def test_the_check_makes_no_copy_and_runs_on_the_model(monkeypatch):
    spec = ModelSpec("cifar_vgg11_bn", width=0.25).resolved()
    model = randomize(build_model(spec)).eval()
    taken = _spy(monkeypatch)

    def no_copy(*a, **k):
        raise AssertionError("prune() deep-copied something")
    monkeypatch.setattr(copy, "deepcopy", no_copy)
    tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))
    assert len(taken) == 1 and taken[0] is not None and [t.shape for t in taken[0]] == [(1, 10)]


def test_every_iterative_step_is_checked(monkeypatch):
    spec = ModelSpec("cifar_vgg11_bn", width=0.25).resolved()
    model = randomize(build_model(spec)).eval()
    taken = _spy(monkeypatch)
    tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5, iterative_steps=3),
                 between_steps=lambda step, m: None)
    assert len(taken) == 3 and all(t is not None for t in taken)


def test_the_masked_original_leaves_the_model_bit_identical(monkeypatch):
    """Taking the masked original (hooks, bare parameter slices zeroed then restored) changes
    nothing in the model before its step prunes it."""
    spec = ModelSpec(f"{USER_MODELS / 'vgg_groupnorm.py'}:make", num_classes=7).resolved()
    model = randomize(build_model(spec)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = pruning_graph.build_graph(model, spec, spec.example_input())
    group = graph.get_pruning_group(model.features[2][0], pruning_graph.tp.prune_conv_out_channels,
                                    [0, 5, 10, 15])
    masked = checks.MaskedOriginal(model, graph, spec, spec.example_input())
    masked.take([group])
    assert masked.logits is not None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("name", ["vggish_nhwc", "vgg_permute_flatten", "vgg_permute_nn_flatten"])
def test_channels_last_flattens_keep_the_right_columns(name, monkeypatch):
    """The linear layer after a transpose/permute + flatten keeps the columns of the kept
    channels in that order: the oracle (masked reference) holds, and the history replays."""
    opts = {"in_channels": 1, "input_size": [96, 64]} if name == "vggish_nhwc" else {}
    spec = ModelSpec(f"{USER_MODELS / name}.py:make", num_classes=7, **opts).resolved()
    model = randomize(build_model(spec)).eval()
    original = copy.deepcopy(model)
    result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))
    x = spec.example_input(batch=3)
    zeroed = zero_removed_channels(copy.deepcopy(original), spec, result.history)
    with torch.no_grad():
        want, got = zeroed(x), model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    replayed = pruning_graph.replay(randomize(build_model(spec)).eval(), spec, result.history)
    replayed.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(replayed(x), model(x))


def test_a_mis_pruned_nhwc_linear_is_caught_exit_2_nothing_written(run_cli, tmp_path, monkeypatch):
    _raw_flatten_order(monkeypatch)
    out = tmp_path / "d"
    r = run_cli("prune", *NHWC_FLAGS, "--ratio", "0.5", "--out", out)
    assert_one_line_error(r, "the first layer whose output differs is 'embeddings.0' (Linear)", out)


def test_the_nhwc_vggish_prunes_from_the_command_line(run_cli, tmp_path):
    out = tmp_path / "d"
    r = run_cli("prune", *NHWC_FLAGS, "--ratio", "0.5", "--out", out)
    assert r.code == 0, r.err
    assert (out / "pruned.pt").is_file()
    model = tp_vgg.load(str(out / "pruned.pt"), trust_model_code=True)
    assert model.embeddings[0].in_features == 32 * 6 * 4


@pytest.mark.slow
def test_full_size_vggish_nhwc_is_checked_and_a_mis_pruned_copy_refused(run_cli, tmp_path,
                                                                        monkeypatch):
    """VGGish itself (width 1: 72M parameters) at 1x96x64: the check runs at that size."""
    flags = (*NHWC_FLAGS, "--model-kwargs", '{"width": 1.0}', "--ratio", "0.5")
    taken = _spy(monkeypatch)
    r = run_cli("prune", *flags, "--out", tmp_path / "ok")
    assert r.code == 0, r.err
    assert len(taken) == 1 and taken[0] is not None
    model = tp_vgg.load(str(tmp_path / "ok" / "pruned.pt"), trust_model_code=True)
    assert model.embeddings[0].in_features == 256 * 6 * 4
    _raw_flatten_order(monkeypatch)
    out = tmp_path / "bad"
    r = run_cli("prune", *flags, "--out", out)
    assert_one_line_error(r, "the first layer whose output differs is 'embeddings.0' (Linear)", out)


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION_VGGS)
def test_every_torchvision_vgg_at_224_is_checked(name, monkeypatch):
    spec = ModelSpec(name).resolved()
    model = build_model(spec).eval()
    taken = _spy(monkeypatch)
    tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))
    assert len(taken) == 1 and taken[0] is not None and taken[0].shape == (1, 1000)
