"""`tp-vgg report` and `tp-vgg sweep`: report.md and plots from the files a run wrote."""

from __future__ import annotations

import json
import os

import pytest

from tp_vgg.report import markdown as report_md
from tp_vgg.report import plots
from tp_vgg.report.summary import format_ms

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--model", "cifar_vgg11_bn", "--width", "0.125"]


def is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG and os.path.getsize(path) > 1000


@pytest.fixture(scope="module")
def prune_run(tmp_path_factory):
    from tp_vgg.cli import main

    out = tmp_path_factory.mktemp("rep") / "run"
    assert main(["prune", *TINY, "--ratio", "0.5", "--out", str(out), "--latency", "1",
                 "--threads", "1"]) == 0
    return out


def test_report_of_a_prune_run(run_cli, prune_run):
    r = run_cli("report", prune_run)
    assert r.code == 0, r.err
    md = (prune_run / "report.md").read_text()
    rep = json.loads((prune_run / "report.json").read_text())
    assert md.startswith("# Pruning report: cifar_vgg11_bn")
    assert f"| MACs | {report_md.human(rep['before']['macs'])} | {report_md.human(rep['after']['macs'])} |" in md
    assert "| `features.0` | Conv2d | 8 | 4 |" in md  # channels before -> after, per layer
    assert "## Latency" in md and "efficiency" in md
    c = rep["latency"]["comparisons"][0]
    assert (f"| 1 | {format_ms(c['original']['median_ms'])} | "
            f"{format_ms(c['pruned']['median_ms'])} |") in md
    assert "multiply-add" in md
    pngs = sorted(os.listdir(prune_run / "plots"))
    assert pngs == ["channels.png", "latency_vs_macs.png", "macs.png"]
    assert all(is_png(prune_run / "plots" / p) for p in pngs)
    for p in pngs:
        assert f"(plots/{p})" in md


def test_report_includes_fine_tuning_metrics_and_accuracy(run_cli, prune_run, tmp_path):
    run = tmp_path / "ft"
    run.mkdir()
    rep = json.loads((prune_run / "report.json").read_text())
    rep["accuracy"] = {"before": 0.9, "pruned": 0.5, "finetuned": 0.875}
    (run / "report.json").write_text(json.dumps(rep))
    (run / "finetune").mkdir()
    records = [{"epoch": e, "lr": 0.01, "train_loss": 1.0 / e, "train_top1": 0.5 + e / 10,
                "test_top1": 0.6 + e / 10, "test_top5": 0.99} for e in (1, 2)]
    (run / "finetune" / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 3, "torn')
    r = run_cli("report", run)
    assert r.code == 0, r.err
    md = (run / "report.md").read_text()
    assert "| test top-1 | 90.00% | 87.50% |" in md
    assert "| top-1 right after pruning |  | 50.00% |" in md
    assert "## Fine-tuning" in md and "| 2 | 0.01 | 0.5000 | 80.00% | 99.00% |" in md
    assert is_png(run / "plots" / "training.png")


def test_report_shows_what_pruning_methods_add(run_cli, prune_run, tmp_path):
    rep = json.loads((prune_run / "report.json").read_text())
    rep.pop("latency")
    rep["target"] = {"mode": "uniform", "reached_speedup": 3.0216, "how": "found in 24 steps"}
    rep["schedule"] = {"iterative_steps": 2, "steps": [
        {"step": 1, "macs": 5_000_000, "top1": 0.5}, {"step": 2, "macs": 2_500_000, "top1": None}]}
    rep["unstructured"] = {"sparsity": 0.798, "macs_dense": 9_897_216, "macs_nonzero": 1_980_149,
                           "params": 596_298, "params_nonzero": 120_531}
    rep["notes"] = ["a note"]
    (tmp_path / "report.json").write_text(json.dumps(rep))
    assert run_cli("report", tmp_path).code == 0
    md = (tmp_path / "report.md").read_text()
    assert "- reached_speedup: 3.022" in md and "- how: found in 24 steps" in md
    assert "| step | macs | top1 |" in md and "| 1 | 5.00M | 0.5 |" in md
    assert "79.8 % of the conv/linear weights are zero" in md and "1.98M" in md
    assert "- a note" in md and "## Latency" not in md


def test_report_of_a_training_run(run_cli, tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps(
        {"epoch": 1, "lr": 0.05, "train_loss": 2.0, "train_top1": 0.3, "test_top1": 0.4,
         "test_top5": 0.8}) + "\n")
    r = run_cli("report", tmp_path)
    assert r.code == 0, r.err
    md = (tmp_path / "report.md").read_text()
    assert "# Training report" in md and "Best test top-1: 40.00%" in md


@pytest.mark.parametrize("setup, message", [
    ("missing", "run folder '{d}' does not exist"),
    ("empty", "'{d}' holds no report.json, sweep.json or metrics.jsonl"),
    ("file", "'{d}' is a file; give the run folder"),
    ("bad json", "report.json' is not valid JSON"),
    ("not a prune report", "is not a tp-vgg prune report"),
])
def test_report_mistakes_exit_2_with_one_line(run_cli, tmp_path, setup, message):
    d = tmp_path / "run"
    if setup == "empty":
        d.mkdir()
    elif setup == "file":
        d.write_text("x")
    elif setup == "bad json":
        d.mkdir()
        (d / "report.json").write_text("{nope")
    elif setup == "not a prune report":
        d.mkdir()
        (d / "report.json").write_text("[1, 2]")
    r = run_cli("report", d)
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and message.format(d=d) in lines[0], r.err
    assert not (d / "report.md").exists() if d.is_dir() else True


# --------------------------------------------------------------------------------------------
# sweep

def test_sweep_prunes_each_ratio_and_plots_the_trade_off(run_cli, tmp_path):
    out = tmp_path / "sweep"
    r = run_cli("sweep", *TINY, "--ratios", "0.5,0.25", "--round-to", "2", "--latency", "2",
                "--threads", "1", "--out", out)
    assert r.code == 0, r.err
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["ratios"] == [0.25, 0.5]
    assert [run["dir"] for run in sweep["runs"]] == ["ratio_0.25", "ratio_0.50"]
    macs = []
    for run in sweep["runs"]:
        rep = json.loads((out / run["dir"] / "report.json").read_text())
        assert rep["config"]["ratio"] == run["ratio"] and rep["config"]["round_to"] == 2
        assert (out / run["dir"] / "pruned.pt").is_file()
        assert rep["latency"]["comparisons"][0]["batch_size"] == 2
        macs.append(rep["after"]["macs"])
    assert macs[0] > macs[1]
    md = (out / "report.md").read_text()
    assert md.startswith("# Pruning sweep: cifar_vgg11_bn")
    assert "| 0.25 | " in md and "| 0.5 | " in md and "| 0 (original) | " in md
    assert "efficiency b2" in md and "No accuracy recorded" in md
    assert is_png(out / "plots" / "latency_vs_macs.png")


def test_sweep_with_fine_tuning_plots_accuracy(run_cli, tmp_path):
    out = tmp_path / "sweep"
    r = run_cli("sweep", *TINY, "--num-classes", "4", "--ratios", "0.5", "--out", out,
                "--data", "fake", "--data-kwargs",
                '{"train_size": 32, "test_size": 16, "num_classes": 4}',
                "--finetune-epochs", "1", "--batch-size", "16", "--progress", "none")
    assert r.code == 0, r.err
    rep = json.loads((out / "ratio_0.50" / "report.json").read_text())
    assert set(rep["accuracy"]) == {"before", "pruned", "recalibrated", "finetuned"}  # BN re-estimated
    md = (out / "report.md").read_text()
    assert f"{100 * rep['accuracy']['finetuned']:.2f}%" in md
    assert is_png(out / "plots" / "accuracy_vs_macs.png")
    r = run_cli("report", out / "ratio_0.50")  # each run reports on its own, with its curve
    assert r.code == 0 and "## Fine-tuning" in (out / "ratio_0.50" / "report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--ratios", "0.5,1.2"], "--ratios '0.5,1.2': '1.2' is not a number in [0, 1)"),
    (["--ratios", "a"], "'a' is not a number in [0, 1)"),
    (["--ratios", "0.5", "--ratio", "0.3"], "--ratio is not a sweep option; give --ratios"),
    (["--ratios", "0.5", "--latency", "0"], "--latency '0': '0' is not a positive integer"),
    (["--ratios", "0.5", "--data", "fake"], "--data is given without --finetune-epochs N"),
])
def test_sweep_mistakes_exit_2_with_one_line(run_cli, tmp_path, argv, message):
    r = run_cli("sweep", *TINY, *argv, "--out", tmp_path / "s")
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.err
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------------------------
# plots from plain data

def test_accuracy_and_latency_figures_plot_the_given_points():
    pts = [{"macs": 100, "top1": 0.9, "series": "fine-tuned", "label": "0"},
           {"macs": 25, "top1": 0.8, "series": "fine-tuned", "label": "0.5"},
           {"macs": 25, "top1": 0.4, "series": "pruned", "label": "0.5"},
           {"macs": 10, "top1": None, "series": "pruned"}]
    ax = plots.accuracy_vs_macs_figure(pts).axes[0]
    lines = {l.get_label(): (list(l.get_xdata()), list(l.get_ydata())) for l in ax.lines}
    assert lines == {"fine-tuned": ([25, 100], [80.0, 90.0]), "pruned": ([25], [40.0])}
    lat = [{"macs": 100, "latency_ms": 10.0, "batch_size": 1},
           {"macs": 25, "latency_ms": 4.0, "batch_size": 1}]
    ax = plots.latency_vs_macs_figure(lat).axes[0]
    lines = {l.get_label(): list(l.get_ydata()) for l in ax.lines}
    assert lines["batch 1"] == [4.0, 10.0]
    assert lines["batch 1: proportional to MACs"] == [2.5, 10.0]
