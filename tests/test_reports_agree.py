"""What a report shows agrees with itself: every speed-up is the baseline shown beside it / the
pruned ms shown (sweep.json, each run's report.json, report.md, the plot, the printed tables of
sweep, prune and profile), and the files a run writes get the user's umask, as a plain open
would give them."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest

from tp_vgg import files
from tp_vgg.checkpoint.source import ModelSource
from tp_vgg.jobs import PruneJob, sweep
from tp_vgg.latency.timing import LatencyConfig
from tp_vgg.models.zoo import ModelSpec
from tp_vgg.pruning.graph import PruneConfig
from tp_vgg.report import markdown as report_md
from tp_vgg.report.summary import format_ms

TINY = ["--model", "cifar_vgg11_bn", "--width", "0.125"]
RATIOS = [0.3, 0.5, 0.7]
BATCHES = (1, 2)


def close(shown_speedup: float, shown_original: str, shown_pruned: str) -> bool:
    """A speed-up printed to 2 decimals is the ratio of the two ms printed, within their
    rounding (3 significant digits each: at most ~1 %) and its own (0.005)."""
    ratio = float(shown_original) / float(shown_pruned)
    return abs(shown_speedup - ratio) <= 0.005 + 0.011 * ratio


def table_rows(text: str, first: str):
    """Rows of a text table (two or more spaces between cells) whose first cell starts with
    ``first``."""
    rows = []
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0].startswith(first):
            rows.append(cells)
    return rows


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A sweep over three ratios with --latency at batch 1 and 2 (tiny model, few repeats)."""
    out = tmp_path_factory.mktemp("agree") / "sweep"
    job = PruneJob(ModelSource(spec=ModelSpec("cifar_vgg11_bn", width=0.125)),
                   PruneConfig(importance="l1"),
                   latency=LatencyConfig(batch_sizes=BATCHES, warmup=1, repeats=3, threads=1,
                                         channels_last=True, fuse_bn=True))
    lines = []
    record = sweep(job, RATIOS, str(out), log=lines.append)
    return out, record, "\n".join(lines)


def test_sweep_times_the_original_once_and_every_speedup_uses_it(swept):
    out, record, _ = swept
    data = json.loads((out / report_md.SWEEP_FILE).read_text())
    assert data == json.loads(json.dumps(record))
    (runtime,) = data["latency_baseline_ms"]
    baseline = {int(b): ms for b, ms in data["latency_baseline_ms"][runtime].items()}
    assert sorted(baseline) == list(BATCHES) and all(ms > 0 for ms in baseline.values())
    assert [r["ratio"] for r in data["runs"]] == RATIOS
    for run in data["runs"]:
        rows = run["latency"][runtime]
        assert [r["batch_size"] for r in rows] == list(BATCHES)
        rep = json.loads((out / run["dir"] / "report.json").read_text())
        comps = {c["batch_size"]: c for c in rep["latency"]["comparisons"]}
        mac_ratio = rep["before"]["macs"] / rep["after"]["macs"]
        for r in rows:
            b = r["batch_size"]
            assert r["original_ms"] == baseline[b]  # one baseline for all rows
            assert r["speedup"] == pytest.approx(baseline[b] / r["pruned_ms"], rel=1e-12)
            c = comps[b]  # the run's own report.json: the same numbers
            assert c["original"]["median_ms"] == baseline[b]
            assert c["pruned"]["median_ms"] == r["pruned_ms"]
            assert c["speedup"] == pytest.approx(c["original"]["median_ms"]
                                                 / c["pruned"]["median_ms"], rel=1e-12)
            assert c["mac_ratio"] == pytest.approx(mac_ratio)
            assert c["efficiency"] == pytest.approx(c["speedup"] / mac_ratio)
        assert "one interleaved session" in rep["latency"]["session"]
        assert set(rep["latency"]["timings"][str(BATCHES[0])]) == {"original", "pruned"}


def test_sweep_report_md_and_printed_table_show_the_baseline_they_divide(swept):
    out, record, log = swept
    baseline = record["latency_baseline_ms"]["torch"]
    md = (out / "report.md").read_text()
    header = next(l for l in md.splitlines() if l.startswith("| ratio |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    rows = {c[0]: c for c in ([x.strip() for x in l.strip("|").split("|")]
                              for l in md.splitlines() if l.startswith("| 0"))}
    assert "original ms per batch of 1" not in cols  # one baseline: shown once, in its row
    original = rows["0 (original)"]
    for b in BATCHES:
        ms, sp = cols.index(f"ms per batch of {b}"), cols.index(f"speed-up b{b}")
        assert original[ms] == format_ms(baseline[str(b)]) and original[sp] == "1.00x"
        for r in RATIOS:
            row = rows[str(r)]
            assert close(float(row[sp].rstrip("x")), original[ms], row[ms]), (row, original)
    assert "timed once" in md
    # the printed table: the original's row, then one row per ratio, each dividing that row
    printed = log[log.index("the original timed once"):]
    (orig,) = table_rows(printed, "original")
    for r in RATIOS:
        (row,) = table_rows(printed, f"ratio {r}")
        for i in range(len(BATCHES)):
            ms, sp = 2 + 2 * i, 3 + 2 * i
            assert close(float(row[sp].rstrip("x")), orig[ms], row[ms]), (row, orig)


def test_sweep_plot_draws_the_one_baseline_and_each_pruned_ms(swept, monkeypatch):
    out, record, _ = swept
    drawn = []
    real = report_md.plots.latency_vs_macs_figure
    monkeypatch.setattr(report_md.plots, "latency_vs_macs_figure",
                        lambda pts: drawn.append(list(pts)) or real(pts))
    report_md.write_report(str(out))
    (points,) = drawn
    baseline = record["latency_baseline_ms"]["torch"]
    for b in BATCHES:
        series = [p for p in points if p["batch_size"] == b]
        originals = [p for p in series if p["label"] == "0"]
        assert [p["latency_ms"] for p in originals] == [baseline[str(b)]]
        pruned = {p["label"]: p["latency_ms"] for p in series if p["label"] != "0"}
        assert pruned == {str(run["ratio"]): next(r["pruned_ms"] for r in run["latency"]["torch"]
                                                  if r["batch_size"] == b)
                          for run in record["runs"]}


def test_sweep_report_of_runs_that_each_timed_their_own_original_shows_each(swept, tmp_path):
    """A sweep folder written before the one-baseline sweep: every row shows the original ms
    its speed-up was computed from."""
    out, record, _ = swept
    old = tmp_path / "old"
    old.mkdir()
    (old / report_md.SWEEP_FILE).write_text(json.dumps(
        {k: v for k, v in record.items() if not k.startswith("latency_")}))
    for i, run in enumerate(record["runs"]):
        rep = json.loads((out / run["dir"] / "report.json").read_text())
        for c in rep["latency"]["comparisons"]:  # a re-measured original per run
            c["original"]["median_ms"] *= 1 + 0.5 * i
            c["speedup"] = c["original"]["median_ms"] / c["pruned"]["median_ms"]
        (old / run["dir"]).mkdir()
        (old / run["dir"] / "report.json").write_text(json.dumps(rep))
    report_md.write_report(str(old))
    md = (old / "report.md").read_text()
    header = next(l for l in md.splitlines() if l.startswith("| ratio |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    b = BATCHES[0]
    base, ms, sp = (cols.index(f"original ms per batch of {b}"), cols.index(f"ms per batch of {b}"),
                    cols.index(f"speed-up b{b}"))
    rows = [[x.strip() for x in l.strip("|").split("|")] for l in md.splitlines()
            if re.match(r"\| 0\.\d", l)]
    assert len(rows) == len(RATIOS) and len({r[base] for r in rows}) == len(RATIOS)
    for row in rows:
        assert close(float(row[sp].rstrip("x")), row[base], row[ms]), row
    assert "its own measurement of the original" in md


# --------------------------------------------------------------------------------------------
# prune --latency and profile --latency: the printed speed-up divides the two ms printed


def _check_printed(out: str) -> int:
    rows = [r for r in table_rows(out, "") if len(r) == 6 and r[0].isdigit()]
    assert rows, out
    for batch, original, pruned, speedup, _, _ in rows:
        assert close(float(speedup.rstrip("x")), original, pruned), (batch, original, pruned)
    assert "original ms per batch of N" in out and "pruned ms per batch of N" in out
    return len(rows)


def test_prune_and_profile_latency_print_speedups_of_the_ms_they_print(run_cli, tmp_path):
    out = tmp_path / "p"
    r = run_cli("prune", *TINY, "--ratio", "0.5", "--latency", "1,2", "--threads", "1",
                "--out", out)
    assert r.code == 0, r.err
    assert _check_printed(r.out) == 2
    assert run_cli("report", out).code == 0
    rep = json.loads((out / "report.json").read_text())
    for c in rep["latency"]["comparisons"]:
        assert c["speedup"] == pytest.approx(c["original"]["median_ms"] / c["pruned"]["median_ms"])
        assert f"| {c['batch_size']} | {format_ms(c['original']['median_ms'])} | " \
               f"{format_ms(c['pruned']['median_ms'])} | {c['speedup']:.2f}x |" in \
               (out / "report.md").read_text()
    r = run_cli("profile", "--checkpoint", out / "pruned.pt", "--latency", "--batch-sizes", "1,2",
                "--repeats", "3", "--warmup", "1", "--threads", "1")
    assert r.code == 0, r.err
    assert _check_printed(r.out) == 2


# --------------------------------------------------------------------------------------------
# files written with the user's umask


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask, want", [(0o022, 0o644), (0o077, 0o600)])
def test_outputs_get_the_mode_a_plain_open_gives(run_cli, tmp_path, umask, want):
    pytest.importorskip("onnx")
    out = tmp_path / "p"
    old = os.umask(umask)
    try:
        r = run_cli("prune", *TINY, "--ratio", "0.5", "--out", out)
        assert r.code == 0, r.err
        r = run_cli("export", "--checkpoint", out / "pruned.pt", "--onnx", out / "model.onnx")
        assert r.code == 0, r.err
        r = run_cli("report", out)
        assert r.code == 0, r.err
        with open(tmp_path / "plain", "w") as f:  # what the user's open gives, for comparison
            f.write("x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "plain") == want
    written = ["pruned.pt", "report.json", "model.onnx", "report.md",
               *(os.path.join("plots", p) for p in os.listdir(out / "plots"))]
    assert {name: _mode(out / name) for name in written} == {name: want for name in written}
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]  # no temp file left


def test_a_replaced_file_keeps_its_mode_as_with_a_plain_open(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("{}")
    os.chmod(path, 0o640)
    files.write_json(str(path), {"a": 1})
    assert _mode(path) == 0o640 and json.loads(path.read_text()) == {"a": 1}
    old = os.umask(0o027)
    try:
        assert files.current_umask() == 0o027
        assert files.plain_mode(str(tmp_path / "new")) == 0o640
    finally:
        os.umask(old)
    assert files.current_umask() == old
