"""Diagnoses that are right, remedies that work (issue 19 items 4 and 5).

Every failure after pruning names a cause only once it is confirmed against what the model did
(tp_vgg.pruning.diagnosis), and every remedy a message prints is applied here, literally, to the
failing case, which then prunes (exit 0) and passes the masked-equivalence check that every
prune runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch.nn as nn
from methods_util import assert_one_line_error

import tp_vgg
from tp_vgg import PruneConfig, UserError
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.pruning import mapping

USER_MODELS = Path(__file__).parent / "user_models"


def _model(name: str, factory: str = "make") -> str:
    return f"{USER_MODELS / name}.py:{factory}"


def _rewritten(tmp_path: Path, name: str, old: str, new: str, header: str = "") -> str:
    """A copy of user model ``name`` with ``old`` replaced by ``new`` (the remedy applied)."""
    text = (USER_MODELS / f"{name}.py").read_text()
    assert old in text
    path = tmp_path / f"{name}_fixed.py"
    path.write_text(header + text.replace(old, new))
    return f"{path}:make"


def _prune(run_cli, model: str, out: Path, *extra: str):
    return run_cli("prune", "--model", model, "--ratio", extra[0] if extra else "0.5",
                   *extra[1:], "--out", out)


def _flag(err: str, flag: str) -> str:
    """The value the message gives for ``flag`` (e.g. the JSON after --layer-ratios)."""
    m = re.search(re.escape(flag) + r" '([^']*)'", err)
    assert m, err
    return m.group(1)


# --- a size written as a number ----------------------------------------------------------------

@pytest.mark.parametrize("rewrite", ["x = torch.flatten(x, 1)", "x = x.view(x.size(0), -1)",
                                     "x = nn.Flatten()(x)"])
def test_constant_view_remedy(run_cli, tmp_path, rewrite):
    out = tmp_path / "out"
    r = _prune(run_cli, _model("unsupported_view_width"), out)
    assert_one_line_error(r, "asks for [-1, 256] as before pruning, but its input is now "
                          "1x8x4x4 (was 1x16x4x4): a size written as a number", out)
    hint = {"x = torch.flatten(x, 1)": "torch.flatten(x, 1)",
            "x = x.view(x.size(0), -1)": "x.view(x.size(0), -1)",
            "x = nn.Flatten()(x)": "nn.Flatten()"}[rewrite]
    assert hint in r.err
    fixed = _rewritten(tmp_path, "unsupported_view_width", "x = x.view(-1, 16 * 4 * 4)", rewrite,
                       "import torch\n")
    r = _prune(run_cli, fixed, out)
    assert r.code == 0, r.err
    assert (out / "pruned.pt").exists()


def test_constant_reshape_at_batch_one_remedy(run_cli, tmp_path):
    out = tmp_path / "out"
    r = _prune(run_cli, _model("unsupported_reshape_batch1"), out)
    assert_one_line_error(r, "it asks for [1, 256] as before pruning", out)
    assert "torch.flatten(x, 1)" in r.err
    fixed = _rewritten(tmp_path, "unsupported_reshape_batch1", "self.features(x).reshape(1, 256)",
                       "torch.flatten(self.features(x), 1)", "import torch\n")
    assert _prune(run_cli, fixed, out).code == 0


NOT_A_FLATTEN = '''
import torch.nn as nn


class GroupedView(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.features(x)
        x = x.view(-1, 16, 16).mean(2)
        return self.fc(x)


def make(num_classes=10):
    return GroupedView(num_classes)
'''


def test_constant_size_in_a_view_that_is_not_a_flatten_gets_the_size_remedy(run_cli, tmp_path):
    path = tmp_path / "grouped.py"
    path.write_text(NOT_A_FLATTEN)
    out = tmp_path / "out"
    r = _prune(run_cli, f"{path}:make", out)
    assert_one_line_error(r, "it asks for [-1, 16, 16] as before pruning", out)
    assert "write the sizes from x.size()" in r.err and "torch.flatten" not in r.err
    path.write_text(NOT_A_FLATTEN.replace("x.view(-1, 16, 16)", "x.view(x.size(0), x.size(1), -1)"))
    assert _prune(run_cli, f"{path}:make", out).code == 0


# --- parameters outside modules -----------------------------------------------------------------

def test_bare_parameter_remedy(run_cli, tmp_path):
    out = tmp_path / "out"
    r = _prune(run_cli, _model("unsupported_bare_param"), out, "0.3")
    assert_one_line_error(r, "parameter 'extra' is used outside any module", out)
    keep = _flag(r.err, "--layer-ratios")
    assert json.loads(keep) == {"block1.4": 0}
    assert _prune(run_cli, _model("unsupported_bare_param"), out, "0.3",
                  "--layer-ratios", keep).code == 0
    # the other remedy: a per-channel (1, C, 1, 1) parameter
    assert "make it a per-channel (1, C, 1, 1) parameter" in r.err
    fixed = _rewritten(tmp_path, "unsupported_bare_param", "shape = (1, 1, 8, 8) if spatial",
                       "shape = (1, 16, 1, 1) if spatial")
    assert _prune(run_cli, fixed, tmp_path / "b", "0.3").code == 0


# --- the logits layer ---------------------------------------------------------------------------

def test_output_layer_remedy(run_cli, tmp_path):
    out = tmp_path / "out"
    r = _prune(run_cli, _model("vgg_seq_linear"), out, "0.5", "--output-layer", "features.0")
    assert_one_line_error(r, "name it with --output-layer NAME", out)
    model = build_model(ModelSpec(_model("vgg_seq_linear")).resolved())
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert _prune(run_cli, _model("vgg_seq_linear"), out, "0.5", "--output-layer", last).code == 0


# --- layers that normalize across channels, reductions over channels ---------------------------

def test_a_layernorm_over_the_channels_keeps_its_feeder_and_says_the_rewrite(run_cli, tmp_path):
    """nn.LayerNorm([C, H, W]) normalizes across the channels: the conv feeding it keeps its
    outputs, automatically, the rest prunes, and the note names the GroupNorm(1, C) rewrite,
    which then prunes that conv too."""
    out = tmp_path / "out"
    r = _prune(run_cli, _model("unsupported_channel_norm"), out)
    assert r.code == 0, r.err
    notes = json.loads((out / "report.json").read_text())["notes"]
    note = next(n for n in notes if "'features.1' (LayerNorm)" in n)
    assert "('features.0') keep their output channels" in note and "nn.GroupNorm(1, C)" in note
    assert tp_vgg.load(str(out / "pruned.pt"), trust_model_code=True).features[0].out_channels == 8
    fixed = _rewritten(tmp_path, "unsupported_channel_norm", "nn.LayerNorm([8, 32, 32])",
                       "nn.GroupNorm(1, 8)")
    assert _prune(run_cli, fixed, tmp_path / "b").code == 0
    assert tp_vgg.load(str(tmp_path / "b" / "pruned.pt"),
                       trust_model_code=True).features[0].out_channels == 4


@pytest.mark.parametrize("name, factory, cause", [
    ("unsupported_channel_mean", "make", "the mean at "),
    ("unsupported_channel_norm", "make_lrn", "LocalResponseNorm normalizes across channels"),
])
def test_keep_layer_unpruned_remedy(run_cli, tmp_path, name, factory, cause):
    out = tmp_path / "out"
    r = _prune(run_cli, _model(name, factory), out)
    assert_one_line_error(r, cause, out)
    keep = _flag(r.err, "--layer-ratios")
    assert _prune(run_cli, _model(name, factory), out, "0.5", "--layer-ratios", keep).code == 0


def test_a_channel_mean_is_named_with_its_line(run_cli, tmp_path):
    r = _prune(run_cli, _model("unsupported_channel_mean"), tmp_path / "out")
    assert "unsupported_channel_mean.py:19" in r.err
    assert "reduces over the channel dimension" in r.err


# --- GroupNorm ratios ---------------------------------------------------------------------------

def test_groupnorm_ratio_remedy(tmp_path):
    spec = ModelSpec(_model("vgg_groupnorm")).resolved()
    ratios = {}
    for _ in range(4):  # each message names one layer: the user follows them one by one
        try:
            tp_vgg.prune(build_model(spec), spec, PruneConfig(ratio=0.85, layer_ratios=ratios))
            break
        except UserError as e:
            assert "give it at most" in str(e)
            ratios.update(json.loads(re.search(r"--layer-ratios '([^']*)'", str(e)).group(1)))
    else:
        pytest.fail(f"still refused after {ratios}")
    assert ratios
    others = {"features.2.0": 0, "features.4.0": 0}
    with pytest.raises(UserError, match="keep it unpruned with --layer-ratios") as e:
        tp_vgg.prune(build_model(spec), spec, PruneConfig(ratio=0.5, round_to=16,
                                                          layer_ratios=others))
    keep = json.loads(re.search(r"--layer-ratios '([^']*)'", str(e.value)).group(1))
    tp_vgg.prune(build_model(spec), spec, PruneConfig(ratio=0.5, round_to=16,
                                                      layer_ratios={**others, **keep}))


# --- concatenations -----------------------------------------------------------------------------

def test_concat_remedy(run_cli, tmp_path, monkeypatch):
    """torch-pruning's own flatten strides (what tp-vgg meets where the traced shapes are not
    recorded): the diagnosis names the torch.cat and the linear layer -- not "a size written as
    a number", which the model does not have -- and keeping its feeders whole works."""
    monkeypatch.setattr(mapping, "_flatten_stride", lambda graph, node: None)
    out = tmp_path / "out"
    r = _prune(run_cli, _model("vgg_multiscale"), out)
    assert_one_line_error(r, "the torch.cat at ", out)
    assert "but 'fc' keeps" in r.err and "written as a number" not in r.err
    keep = _flag(r.err, "--layer-ratios")
    assert set(json.loads(keep)) == {"blocks.0.3", "blocks.1.3", "blocks.2.3", "blocks.3.3"}
    assert _prune(run_cli, _model("vgg_multiscale"), out, "0.5", "--layer-ratios", keep).code == 0


def test_multiscale_head_prunes_with_the_traced_shapes(run_cli, tmp_path):
    r = _prune(run_cli, _model("vgg_multiscale"), tmp_path / "out")
    assert r.code == 0, r.err
    model = tp_vgg.load(str(tmp_path / "out" / "pruned.pt"), trust_model_code=True)
    kept = [b[3].out_channels for b in model.blocks]
    assert kept == [8, 16, 32, 64]  # every depth halved, the scaled one too
    assert model.fc.in_features == 8 + 16 * 4 + 32 + 64 * 4
    assert tuple(model.scale.shape) == (16,)


# --- when no known cause is confirmed, the line says so and suggests nothing ------------------

UNKNOWN = '''
import torch
import torch.nn as nn


class ChannelRoll(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))
        self.fc = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x):  # channel c takes channel c - 1's values: torch-pruning cannot see it
        return self.fc(torch.flatten(torch.roll(self.features(x), 1, dims=1), 1))


def make(num_classes=10):
    return ChannelRoll(num_classes)
'''


def test_an_unconfirmed_cause_is_said_and_no_remedy_offered(run_cli, tmp_path):
    path = tmp_path / "channel_roll.py"
    path.write_text(UNKNOWN)
    out = tmp_path / "out"
    r = _prune(run_cli, f"{path}:make", out)
    assert_one_line_error(r, "none of the causes tp-vgg knows", out)
    assert "first layer whose output differs is 'fc'" in r.err and "--layer-ratios" not in r.err
