"""Which channels a run removed (report.json ``removed_channels``), `tp-vgg compare` of runs side
by side, and an unstructured run's per-layer sparsity in `tp-vgg report`."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
import torch.nn as nn

import tp_vgg
from tp_vgg.report import compare as report_compare
from tp_vgg.report.summary import removed_channels

PNG = b"\x89PNG\r\n\x1a\n"
SMALL = ["--model", "cifar_vgg11_bn", "--width", "0.25", "--threads", "1"]


def is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG and os.path.getsize(path) > 1000


def read(path) -> dict:
    return json.loads(path.read_text())


def one_line(r, message: str) -> None:
    assert r.code == 2, (r.code, r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.err
    assert "Traceback" not in r.err


def prunable(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def pruned_pair(steps: int):
    spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.25)
    torch.manual_seed(0)
    original = tp_vgg.build_model(spec).eval()
    model = copy.deepcopy(original)
    result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5, iterative_steps=steps))
    return original, model, result


# --------------------------------------------------------------------------------------------
# removed_channels: the pruning history in the original numbering

def test_history_of_later_steps_maps_back_to_the_original_numbering():
    history = [["a", True, [1, 3]], ["b", True, [0]], ["a", False, [5]],  # in-channel: not read
               ["a", True, [2, 0]]]  # a's channels left: 0 2 4 5 -> indices 0, 2 are 0, 4
    assert removed_channels(history, {"a": 6, "b": 2}) == {"a": [0, 1, 3, 4], "b": [0]}
    with pytest.raises(ValueError):
        removed_channels([["a", True, [6]]], {"a": 6})


def test_one_step_removes_exactly_the_filters_of_smallest_l1_norm():
    """l1 ranks each root layer's own filters (FilterNormImportance), so every layer's removed
    channels are its filters of smallest L1 norm in the weights before pruning."""
    original, model, result = pruned_pair(1)
    removed = removed_channels(result.history, result.channels_before)
    after = dict(prunable(model))
    assert set(removed) == {n for n, _ in prunable(original)} - set(result.output_layers)
    for name, layer in prunable(original):
        gone = removed.get(name, [])
        out = layer.weight.shape[0]
        assert len(gone) == out - after[name].weight.shape[0]
        l1 = layer.weight.detach().flatten(1).abs().sum(1)
        assert sorted(gone) == sorted(torch.argsort(l1)[:len(gone)].tolist()), name


def test_two_steps_map_to_the_original_channels_whose_weights_the_model_kept():
    original, model, result = pruned_pair(2)
    removed = removed_channels(result.history, result.channels_before)
    pruned = dict(prunable(model))
    naive_differs = False
    kept_in = None  # the previous layer's kept channels: this layer's kept inputs
    for name, layer in prunable(original):
        c = layer.weight.shape[0]
        gone = removed.get(name, [])
        assert len(gone) == len(set(gone)) == c - pruned[name].weight.shape[0]
        assert all(0 <= i < c for i in gone)
        steps = [h[2] for h in result.history if h[0] == name]
        assert len(steps) == (2 if name in removed else 0)
        naive_differs |= bool(steps) and sorted(set(steps[0]) | set(steps[1])) != gone
        kept = [i for i in range(c) if i not in set(gone)]
        w = layer.weight.detach()[kept]
        if kept_in is not None and w.shape[1] != pruned[name].weight.shape[1]:
            w = w[:, kept_in]
        assert torch.equal(w, pruned[name].weight.detach()), name
        kept_in = kept
    assert naive_differs  # step 2's indices count the channels left after step 1


# --------------------------------------------------------------------------------------------
# `tp-vgg prune` writes them; `tp-vgg compare`

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tp_vgg.cli import main

    root = tmp_path_factory.mktemp("cmp")
    out = {}
    for importance in ("l1", "l2"):
        out[importance] = root / importance
        assert main(["prune", *SMALL, "--ratio", "0.5", "--importance", importance,
                     "--out", str(out[importance])]) == 0
    return out


def test_prune_report_records_each_layers_removed_channels(runs):
    rep = read(runs["l1"] / "report.json")
    rows = {r["name"]: r for r in rep["layers"]}
    removed = rep["removed_channels"]
    assert removed and not set(removed) & set(rep["output_layers"])
    for name, idxs in removed.items():
        r = rows[name]
        assert len(idxs) == len(set(idxs)) == r["out_channels_before"] - r["out_channels_after"]
        assert idxs == sorted(idxs) and 0 <= idxs[0] and idxs[-1] < r["out_channels_before"]


def test_compare_overlap_is_the_jaccard_index_of_the_two_reports(run_cli, runs, tmp_path):
    out = tmp_path / "cmp"
    r = run_cli("compare", runs["l1"], runs["l2"], "--out", out)
    assert r.code == 0, r.err
    a, b = (read(runs[k] / "report.json")["removed_channels"] for k in ("l1", "l2"))
    cmp = read(out / "compare.json")
    assert [x["label"] for x in cmp["runs"]] == ["l1", "l2"]
    assert [row["layer"] for row in cmp["layers"]] == list(a)
    shared_sum = union_sum = 0
    for row in cmp["layers"]:
        sa, sb = set(a[row["layer"]]), set(b[row["layer"]])
        assert row["removed"] == [len(sa), len(sb)]
        assert row["shared"] == [len(sa), len(sa & sb)]
        assert row["jaccard"][0] == 1.0
        assert row["jaccard"][1] == pytest.approx(len(sa & sb) / len(sa | sb))
        shared_sum, union_sum = shared_sum + len(sa & sb), union_sum + len(sa | sb)
    assert cmp["total"]["jaccard"][1] == pytest.approx(shared_sum / union_sum)
    assert any(row["jaccard"][1] < 1.0 for row in cmp["layers"])  # l1 and l2 do differ
    rep = read(runs["l2"] / "report.json")
    assert cmp["runs"][1]["macs"] == rep["after"]["macs"]
    assert cmp["runs"][1]["params"] == rep["after"]["params"]
    assert cmp["runs"][1]["importance"] == "l2" and cmp["runs"][1]["top1"] is None
    first = cmp["layers"][0]
    md = (out / "compare.md").read_text()
    line = (f"| {first['layer']} | {first['channels']} | {first['removed'][0]} | "
            f"{first['removed'][1]} | {first['shared'][1]} (")
    assert line in md and f"{first['jaccard'][1]:.2f} |" in md and "multiply-add" in md
    assert "Jaccard" in md and "(compare.png)" in md and is_png(out / "compare.png")
    assert first["layer"] in r.out and "Jaccard" in r.out and "multiply-add" in r.out


def test_a_run_compared_with_itself_overlaps_fully(runs):
    cmp = report_compare.compare_runs([str(runs["l1"]), str(runs["l1"])])
    assert cmp["layers"] and all(row["jaccard"] == [1.0, 1.0] for row in cmp["layers"])
    assert cmp["total"]["jaccard"] == [1.0, 1.0]
    assert all(row["shared"][1] == row["removed"][0] > 0 for row in cmp["layers"])


@pytest.mark.parametrize("case, message", [
    ("one run", "tp-vgg compare needs at least 2 run folders, got 1"),
    ("no report", "holds no report.json; give folders written by tp-vgg prune --out DIR"),
    ("missing", "does not exist"),
    ("sweep", "is a sweep (sweep.json), not one prune run; compare its runs instead"),
    ("unstructured", "is an unstructured run (--unstructured): it zeroes weights and removes "
                     "no channel"),
    ("other model", "runs of different base models"),
    ("other width", "runs of different base models: layer features.0 had 16 output channels"),
    ("old report", "records no removed_channels"),
    ("out is a file", "--out"),
])
def test_compare_mistakes_exit_2_with_one_line(run_cli, runs, tmp_path, case, message):
    other = tmp_path / "other"
    args = [runs["l1"], other]
    if case == "one run":
        args = [runs["l1"]]
    elif case == "no report":
        other.mkdir()
    elif case == "sweep":
        other.mkdir()
        (other / "sweep.json").write_text(json.dumps({"runs": [{"ratio": 0.5,
                                                                  "dir": "ratio_0.50"}]}))
    elif case == "unstructured":
        assert run_cli("prune", *SMALL, "--unstructured", "--ratio", "0.5",
                       "--out", other).code == 0
    elif case == "other model":
        assert run_cli("prune", "--model", "cifar_vgg13_bn", "--width", "0.125", "--threads",
                       "1", "--ratio", "0.5", "--out", other).code == 0
    elif case == "other width":
        assert run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--threads",
                       "1", "--ratio", "0.5", "--out", other).code == 0
    elif case == "old report":
        other.mkdir()
        rep = read(runs["l2"] / "report.json")
        rep.pop("removed_channels")
        (other / "report.json").write_text(json.dumps(rep))
    elif case == "out is a file":
        args = [runs["l1"], runs["l2"], "--out", tmp_path / "file"]
        (tmp_path / "file").write_text("x")
    r = run_cli("compare", *args)
    one_line(r, message)
    if case == "other model":
        assert "only in" in r.err and "cifar_vgg13_bn" in r.err and "cifar_vgg11_bn" in r.err
    if case not in ("one run", "out is a file"):
        assert str(other) in r.err
    assert not list(tmp_path.rglob("compare.*"))


# --------------------------------------------------------------------------------------------
# an unstructured run's report

def test_unstructured_report_has_the_sparsity_table_and_plot_not_channels(run_cli, tmp_path):
    out = tmp_path / "un"
    assert run_cli("prune", *SMALL, "--unstructured", "--ratio", "0.8", "--out", out).code == 0
    r = run_cli("report", out)
    assert r.code == 0, r.err
    md = (out / "report.md").read_text()
    rep = read(out / "report.json")
    sparse = rep["unstructured"]
    assert "## Sparsity per layer" in md
    assert "| layer | type | weights | zeroed | sparsity | dense MACs | nonzero MACs |" in md
    assert len(sparse["layers"]) == 10
    for row in sparse["layers"]:
        assert (f"| `{row['name']}` | {row['type']} | {row['weights']} | {row['zeros']} | "
                f"{100 * row['sparsity']:.2f}% |") in md
    assert f"| total |  | {sparse['weights']} | {sparse['zeros']} | " in md
    by_name = {r["name"]: r["sparsity"] for r in sparse["layers"]}
    assert all(s == pytest.approx(0.8, abs=0.01) for n, s in by_name.items()
               if n not in rep["output_layers"])
    assert all(by_name[n] == 0.0 for n in rep["output_layers"])  # the logits layer: not pruned
    assert os.listdir(out / "plots") == ["sparsity.png"] and is_png(out / "plots" / "sparsity.png")
    assert "(plots/sparsity.png)" in md and "channels.png" not in md


def test_a_file_for_a_run_and_runs_without_accuracy_say_what_to_give(run_cli, runs, tmp_path):
    f = tmp_path / "report.json"
    f.write_text("{}")
    r = run_cli("compare", runs["l1"], f)
    assert r.code == 2 and f"'{f}' is a file; give the folder tp-vgg prune --out wrote" in r.err
    r = run_cli("compare", runs["l1"], runs["l2"], "--out", tmp_path / "c")
    assert r.code == 0, r.err
    # pruned without --data: no top-1 to compare, and the table says how to get one
    assert "No run recorded accuracy (prune with --data NAME to evaluate)." in (
        tmp_path / "c" / "compare.md").read_text()
