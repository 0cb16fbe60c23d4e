"""The width search, ``--search N`` (issue 20): candidates within the budget, uniform first,
deterministic per seed, a held-out slice disjoint from the test split and from the BN batches,
user models with and without BatchNorm, the chosen widths in pruned.pt, one-line errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from dist_util import SimulatedRank
from methods_util import QUIET, TINY, assert_one_line_error, read_report

import tp_vgg
from tp_vgg.data.datasets import DataConfig, load_data
from tp_vgg.pruning import graph as pruning
from tp_vgg.search import widths
from tp_vgg.train import evaluation

USER_MODELS = Path(__file__).parent / "user_models"
DATA = ["--data", "fake", "--data-kwargs", '{"train_size": 400, "test_size": 64}']
WIDE = ["--model", "cifar_vgg11_bn", "--width", "0.5"]
SEARCH = ["--search-heldout", "128", "--search-bn-batches", "2", "--search-finalists", "2",
          "--search-epochs", "1"]


def _search(run_cli, out, *flags, model=TINY, n="10"):
    return run_cli("prune", *model, *flags, "--search", n, *DATA, *SEARCH, *QUIET, "--out", out)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One search at 2x fewer MACs, shared by the tests that read it."""
    from tp_vgg.cli import main
    out = tmp_path_factory.mktemp("search") / "out"
    assert main(["prune", *TINY, "--target-speedup", "2", "--search", "10", *DATA, *SEARCH,
                 *QUIET, "--out", str(out)]) == 0
    return out, read_report(out)


def test_every_accepted_candidate_is_within_the_budget(searched):
    _, rep = searched
    s = rep["search"]
    lo, hi = s["budget"]["window"]
    assert hi <= s["budget"]["goal"] and lo == pytest.approx(0.99 * hi)
    assert hi <= s["budget"]["uniform"] * 1.01 + 1e-6
    assert s["scored"] == len(s["rows"]) >= 8  # the draws found candidates in the window
    for row in s["rows"][1:]:
        assert lo <= row["macs"] <= hi, row  # fvcore's count of the pruned copy
        assert row["in_budget"]
    assert rep["after"]["macs"] <= s["budget"]["goal"]


def test_candidate_zero_is_uniform(searched, tmp_path, run_cli):
    _, rep = searched
    r = run_cli("prune", *TINY, "--target-speedup", "2", "--out", tmp_path / "u")
    assert r.code == 0, r.err
    uniform = {row["name"]: row["out_channels_after"] for row in read_report(tmp_path / "u")["layers"]}
    first = rep["search"]["rows"][0]
    assert first["id"] == 0 and first["origin"] == "uniform"
    assert first["widths"] == {k: uniform[k] for k in first["widths"]}
    assert first["macs"] == read_report(tmp_path / "u")["after"]["macs"]


def test_the_chosen_widths_are_in_pruned_pt_and_replay(searched):
    out, rep = searched
    model = tp_vgg.load(str(out / "pruned.pt"))
    kept = pruning.out_channels(model)
    chosen = rep["search"]["chosen_widths"]
    assert {k: kept[k] for k in chosen} == chosen
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finals = rep["search"]["finalists"]
    assert finals[0]["id"] == 0 and len(finals) == 3
    assert rep["search"]["chosen"] in [f["id"] for f in finals]
    assert all(0 <= f["finetuned"] <= 1 for f in finals)


def test_report_md_shows_the_search(searched, run_cli):
    out, _ = searched
    r = run_cli("report", out)
    assert r.code == 0, r.err
    md = (out / "report.md").read_text()
    assert "## Width search" in md and "plots/search.png" in md
    assert (out / "plots" / "search.png").exists()


def test_the_same_seed_gives_the_same_choice(run_cli, tmp_path, searched):
    _, rep = searched
    r = run_cli("prune", *TINY, "--target-speedup", "2", "--search", "10", *DATA, *SEARCH,
                *QUIET, "--out", tmp_path / "again")
    assert r.code == 0, r.err
    again = read_report(tmp_path / "again")["search"]
    strip = lambda rows: [{k: v for k, v in row.items()} for row in rows]  # noqa: E731
    assert strip(again["rows"]) == strip(rep["search"]["rows"])
    assert again["chosen"] == rep["search"]["chosen"]
    r = run_cli("prune", *TINY, "--target-speedup", "2", "--search", "10", *DATA, *SEARCH,
                *QUIET, "--seed", "1", "--out", tmp_path / "other")
    assert r.code == 0, r.err
    other = read_report(tmp_path / "other")["search"]
    assert [x["widths"] for x in other["rows"][1:]] != [x["widths"] for x in rep["search"]["rows"][1:]]


def test_the_heldout_slice_is_disjoint_from_the_test_split_and_the_bn_batches(monkeypatch):
    data = load_data(DataConfig("fake", kwargs={"train_size": 300, "test_size": 50}))
    split = widths.heldout_split(data, 100, seed=0)
    assert len(split.test_labels) == 100 and len(split.train_labels) == 200

    def rows(images):
        return {tuple(x.flatten().tolist()) for x in images}

    held, rest = rows(split.test_images), rows(split.train_images)
    assert not held & rest  # the slice and the images BN statistics come from
    assert held <= rows(data.train_images) and not held & rows(data.test_images)
    # the search re-estimates BN on the split's training images only: its batches are drawn
    # once (cached for every candidate) from the split's training split
    seen = []
    real = type(data).batches

    def spy(self, which, *a, **k):
        seen.append((self, which))
        return real(self, which, *a, **k)

    monkeypatch.setattr(type(data), "batches", spy)
    spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.125).resolved()
    model = tp_vgg.build_model(spec)
    cfg = tp_vgg.PruneConfig(ratio=0.3)
    space, budget = widths.mac_budget(model, spec, cfg, None)
    s = widths.Search(model, spec, cfg, space, budget,
                      widths.SearchConfig(candidates=3, heldout=100, bn_batches=2, finalists=0,
                                          finalist_epochs=0), data,
                      evaluation.resolve_preprocessing(data, spec), tp_vgg.TrainConfig(),
                      log=lambda s: None)
    s.run()
    bn = [d for d, which in seen if which == "train"]
    assert len(bn) == 1 and len(s._bn_batches()) == 2  # drawn once, 2 batches, reused
    assert all(not rows(d.train_images) & held for d in bn)
    assert all(rows(d.test_images) == held for d in bn)


# Models of tests/user_models/ (with BN, without, GroupNorm, a multi-scale head) and their flags.
USER = {
    "vgg_seq_linear": [], "vgg_no_bn": [], "vgg_groupnorm": [], "vgg_multiscale": [],
    "vgg_gray28": ["--in-channels", "1", "--input-size", "28"],
}


@pytest.mark.parametrize("name", sorted(USER))
def test_user_models_search(run_cli, tmp_path, name):
    model = ["--model", f"{USER_MODELS / name}.py:make", *USER[name]]
    data = DATA if name != "vgg_gray28" else [
        "--data", "fake", "--data-kwargs",
        '{"train_size": 400, "test_size": 64, "channels": 1, "image_size": 28}']
    out = tmp_path / "out"
    r = run_cli("prune", *model, "--ratio", "0.4", "--search", "6", *data, *SEARCH, *QUIET,
                "--out", out)
    assert r.code == 0, r.err
    s = read_report(out)["search"]
    lo, hi = s["budget"]["window"]
    assert all(lo <= row["macs"] <= hi for row in s["rows"][1:])
    assert s["budget"]["goal"] == s["rows"][0]["macs"]  # --ratio: uniform's MACs are the budget
    model_out = tp_vgg.load(str(out / "pruned.pt"), trust_model_code=True)
    kept = pruning.out_channels(model_out)
    assert {k: kept[k] for k in s["chosen_widths"]} == s["chosen_widths"]
    bn = name not in ("vgg_no_bn", "vgg_groupnorm")
    assert ("after re-estimating BatchNorm" in s["score"]) == bn
    if not bn:
        assert "no BatchNorm running statistics" in s["score"] and s["bn_batches"] == 0


def test_search_one_is_uniform_alone(run_cli, tmp_path):
    out = tmp_path / "one"
    r = _search(run_cli, out, "--target-speedup", "2", n="1")
    assert r.code == 0, r.err
    s = read_report(out)["search"]
    assert s["scored"] == 1 and s["chosen"] == 0 and s["uniform_rank"] == 1
    r = run_cli("prune", *TINY, "--target-speedup", "2", "--out", tmp_path / "u")
    assert read_report(out)["after"]["macs"] == read_report(tmp_path / "u")["after"]["macs"]


@pytest.mark.parametrize("flags, message", [
    (["--search", "5"], "--search needs data: it scores each candidate on a held-out slice"),
    (["--search", "-1", *DATA], "--search: "),
    (["--search", "5", "--data", "fake", "--data-kwargs", '{"train_size": 100}'],
     "--search-heldout 5000 is not below the 100 training images of fake"),
    (["--search-epochs", "2"], "--search-epochs applies to the width search: add --search N (N >= 1) with --data D"),
    (["--search", "0", "--search-screen", "9", *DATA], "--search-screen applies to the width search"),
    (["--search", "5", "--global", *DATA], "--search chooses every layer's width itself"),
])
def test_bad_search_flags_are_one_line_errors(run_cli, tmp_path, flags, message):
    out = tmp_path / "out"
    r = run_cli("prune", *TINY, "--ratio", "0.5", *flags, *QUIET, "--out", out)
    assert_one_line_error(r, message, out)


@pytest.mark.parametrize("lo, hi", [(2.40e6, 2.42e6), (9.0e5, 1.1e6), (4.2e9, 4.3e9),
                                    (1.0e6, 9.9e6)])
def test_search_plot_mac_ticks_are_distinct(lo, hi):
    """The search's window is narrow (1 %): its MAC tick labels keep enough decimals to differ."""
    import matplotlib.ticker as ticker

    from tp_vgg.report import plots

    ticks = ticker.MaxNLocator().tick_values(lo, hi)
    ticks = [t for t in ticks if lo <= t <= hi]
    fmt = plots.si_over(hi - lo, hi)
    labels = [fmt(t) for t in ticks]
    assert len(set(labels)) == len(labels) >= 3, labels
    assert all(float(label[:-1]) * {"K": 1e3, "M": 1e6, "G": 1e9}[label[-1]] ==
               pytest.approx(t, rel=1e-3) for label, t in zip(labels, ticks))


def test_spearman():
    assert widths.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert widths.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert widths.spearman([1, 2], [1, 2]) is None
    assert widths.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)


@pytest.mark.slow
def test_search_under_a_latency_budget(run_cli, tmp_path):
    """--target-latency X --search N: candidates within the predicted window, finalists
    measured; the chosen widths replay from pruned.pt."""
    from tp_vgg.latency.budget import LatencyBudget, measured_ms

    spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.5).resolved()
    full = measured_ms(tp_vgg.build_model(spec), spec,
                       LatencyBudget(ms=1.0, batch_size=16, threads=1).config(spec, "cpu"))
    out = tmp_path / "lat"
    r = _search(run_cli, out, "--target-latency", f"{0.75 * full:.4f}", "--latency-batch", "16",
                n="6", model=WIDE)
    assert r.code == 0, r.err
    s = read_report(out)["search"]
    assert s["budget"]["kind"] == "ms" and s["budget"]["goal"] == pytest.approx(0.75 * full,
                                                                                 rel=1e-3)
    lo, hi = s["budget"]["window"]
    assert all(lo <= row["predicted_ms"] <= hi for row in s["rows"][1:])
    assert all(f["measured_ms"] > 0 for f in s["finalists"])
    kept = pruning.out_channels(tp_vgg.load(str(out / "pruned.pt")))
    assert {k: kept[k] for k in s["chosen_widths"]} == s["chosen_widths"]


# --------------------------------------------------------------------------------------------
# --target-latency's guard: never a plan that scores below uniform at the same latency.

def _mac_ms(model, spec, cfg):
    """A deterministic stand-in for a measurement: 1 ms per 100K MACs (so the test does not
    depend on the machine's load; the guard's rule is what is tested)."""
    return tp_vgg.count(model, spec).macs / 1e5


def _latency_job(target_ms, tmp, prune=None):
    from tp_vgg.data.datasets import DataConfig as DC
    from tp_vgg.jobs import FinetuneConfig
    from tp_vgg.latency.budget import LatencyBudget
    from tp_vgg.pruning.targets import Target
    from tp_vgg.train.config import finetuning

    spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.125)
    data = DC("fake", kwargs={"train_size": 400, "test_size": 64})
    return tp_vgg.PruneJob(
        tp_vgg.ModelSource(spec=spec), prune or tp_vgg.PruneConfig(round_to=1),  # not the block
        target=Target(latency=LatencyBudget(ms=target_ms, batch_size=2, threads=1,
                                            cache_dir=str(tmp), table_min_ms=0.05)),
        finetune=FinetuneConfig(data, finetuning(device="cpu", progress="none", batch_size=48),
                                bn_batches=2), device="cpu")


@pytest.mark.parametrize("favour", ["uniform", "latency-aware"])
def test_target_latency_keeps_the_better_scoring_of_its_plan_and_uniform(monkeypatch, tmp_path,
                                                                         favour):
    """The guard scores the latency-aware plan and the uniform plan within the same budget alike
    and keeps the better; the returned model, report.json's "latency_guard" and "target" agree."""
    from tp_vgg.latency import budget as lt

    monkeypatch.setattr(lt, "measured_ms", _mac_ms)
    spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.125).resolved()
    full = _mac_ms(tp_vgg.build_model(spec), spec, None)

    def score(self, m, screen=False):  # the favoured plan scores 0.9, the other 0.1
        is_uniform = all(pruning.out_channels(m)[r] == k for r, k in self.budget.uniform.items())
        return 0.9 if is_uniform == (favour == "uniform") else 0.1

    monkeypatch.setattr(widths.Search, "_heldout_top1", score)
    res = tp_vgg.run(_latency_job(0.8 * full, tmp_path), str(tmp_path / "out"),
                     log=lambda s: None)
    g = res.report["latency_guard"]
    assert set(g["plans"]) == {"uniform", "latency-aware"}
    assert g["kept"] == favour
    assert g["plans"][favour]["score"] == 0.9
    assert all(p["measured_ms"] <= 0.8 * full for p in g["plans"].values())
    kept = pruning.out_channels(res.model)
    assert {k: kept[k] for k in g["widths"]} == g["widths"] == g["plans"][favour]["widths"]
    t = res.report["target"]
    assert all(kept[n] == after for n, (_, after) in t["channels"].items())
    assert t["measured_ms"] == pytest.approx(_mac_ms(res.model, spec, None), rel=1e-6)
    assert t["reached"]
    assert t["kept"] == favour
    if favour == "uniform":
        assert any("latency guard: the uniform plan scored" in n for n in t["notes"])
        assert t["prediction_error"] is None and t["latency_aware_predicted_ms"] > 0
        assert "predicted_ms" not in t
    replayed = pruning.out_channels(tp_vgg.load(str(tmp_path / "out" / "pruned.pt")))
    assert replayed == kept
    from tp_vgg.report.markdown import write_report
    write_report(str(tmp_path / "out"))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Latency guard" in md and f"| {favour} | 90.00% |" in md


def test_target_latency_without_data_says_it_was_not_compared(monkeypatch, tmp_path):
    from tp_vgg.latency import budget as lt

    monkeypatch.setattr(lt, "measured_ms", _mac_ms)
    spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.125).resolved()
    job = _latency_job(0.8 * _mac_ms(tp_vgg.build_model(spec), spec, None), tmp_path)
    job.finetune = None
    res = tp_vgg.run(job, None, log=lambda s: None)
    assert res.report["latency_guard"]["kept"] == "latency-aware"
    assert "no --data" in res.report["latency_guard"]["rule"]


def test_target_latency_guard_takes_the_median_of_its_measurements(monkeypatch, tmp_path):
    """One measurement in three is 100 times too slow (a machine that is busy now and then): the
    guard's bisection and its final measurements are medians of three, so its uniform plan and
    the measured ms it reports are those of a quiet machine."""
    from tp_vgg.latency import budget as lt

    spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.125).resolved()
    full = _mac_ms(tp_vgg.build_model(spec), spec, None)
    monkeypatch.setattr(widths.Search, "_heldout_top1", lambda self, m, screen=False: 0.5)
    monkeypatch.setattr(lt, "measured_ms", _mac_ms)
    quiet_guard = tp_vgg.run(_latency_job(0.8 * full, tmp_path / "q"), None,
                             log=lambda s: None).report["latency_guard"]
    quiet = quiet_guard["plans"]["uniform"]
    calls, guard = [], widths.guard_latency_plan

    def busy(model, spec, cfg):  # the latency-aware solve before the guard measures quietly
        calls.append(1)
        return _mac_ms(model, spec, cfg) * (100 if calls[0] is None and len(calls) % 3 == 0
                                            else 1)

    def guarded(*a, **k):
        calls[:] = [None]
        return guard(*a, **k)

    monkeypatch.setattr(lt, "measured_ms", busy)
    monkeypatch.setattr(widths, "guard_latency_plan", guarded)
    g = tp_vgg.run(_latency_job(0.8 * full, tmp_path / "b"), None,
                   log=lambda s: None).report["latency_guard"]
    assert g["plans"]["uniform"]["widths"] == quiet["widths"]
    assert g["kept"] == quiet_guard["kept"]
    for plan in g["plans"].values():  # both plans' final measurements: a quiet machine's
        assert plan["measured_ms"] == pytest.approx(plan["macs"] / 1e5, rel=1e-3)
    assert "median of 3" in g["rule"] and len(calls) > 3 * widths.GUARD_BISECTIONS


def test_latency_search_is_anchored_to_a_uniform_plan_measured_within_the_budget(monkeypatch,
                                                                                  tmp_path):
    """Where the latency table under-predicts the model (here: by 2.5 times), its widest
    uniform plan within the budget measures over it; candidate 0 is then the smallest uniform
    ratio measured within the budget, the candidates are predicted against it, and the model
    handed back measures within the budget (not, as before, a plan predicted within it)."""
    from tp_vgg.latency import budget as lt

    monkeypatch.setattr(lt, "measured_ms", _mac_ms)
    calibrate = lt.calibrate

    def under(pred, *a, **k):
        out = calibrate(pred, *a, **k)
        pred.scale *= 0.4
        pred.offset *= 0.4
        return out

    monkeypatch.setattr(lt, "calibrate", under)
    spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.125).resolved()
    goal = 0.6 * _mac_ms(tp_vgg.build_model(spec), spec, None)
    job = _latency_job(goal, tmp_path)
    job.search = widths.SearchConfig(candidates=6, finalists=2, finalist_epochs=0, bn_batches=2,
                                     heldout=64, batch_size=32)
    lines = []
    res = tp_vgg.run(job, str(tmp_path / "out"), log=lines.append)
    s = res.report["search"]
    assert "candidate 0: uniform --ratio" in s["budget"]["describe"]
    assert any("the latency table predicts uniform" in line for line in lines)
    anchor = s["budget"]["anchor"]
    assert anchor["table_measured_ms"] > goal >= anchor["measured_ms"]
    assert anchor["ratio"] > anchor["table_ratio"]
    # off by 2.5 times: the candidates are held to candidate 0's MACs, not to the table
    assert s["budget"]["proxy"] == "macs" and "held to its MACs" in s["budget"]["describe"]
    lo, hi = s["budget"]["window"]
    assert s["rows"][0]["macs"] == pytest.approx(s["budget"]["uniform"], rel=1e-6)
    assert hi == pytest.approx(s["budget"]["uniform"] * 1.01)
    assert len(s["rows"]) > 1 and all(lo <= r["macs"] <= hi for r in s["rows"][1:])
    assert all("predicted_ms" not in r for r in s["rows"])
    zero = next(f for f in s["finalists"] if f["id"] == 0)
    assert zero["measured_ms"] == pytest.approx(anchor["measured_ms"], rel=1e-3)
    assert all(f["measured_ms"] <= goal for f in s["finalists"] if f["id"] == s["chosen"])
    assert _mac_ms(res.model, spec, None) <= goal
    assert not any("OVER the" in line for line in lines)


def test_target_latency_guard_keeps_the_faster_plan_where_neither_meets_the_budget(monkeypatch,
                                                                                   tmp_path):
    """A machine that turns busy once the guard starts: neither plan measures within the
    budget, so the faster (uniform at --max-layer-ratio) is kept though the other scores higher,
    and the note says why."""
    from tp_vgg.latency import budget as lt

    spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.125).resolved()
    full = _mac_ms(tp_vgg.build_model(spec), spec, None)
    busy, guard = [False], widths.guard_latency_plan

    def measured(model, spec, cfg):
        return _mac_ms(model, spec, cfg) * (100 if busy[0] else 1)

    def guarded(*a, **k):
        busy[0] = True
        return guard(*a, **k)

    def score(self, m, screen=False):  # the latency-aware plan scores higher
        is_uniform = all(pruning.out_channels(m)[r] == k for r, k in self.budget.uniform.items())
        return 0.1 if is_uniform else 0.9

    monkeypatch.setattr(lt, "measured_ms", measured)
    monkeypatch.setattr(widths, "guard_latency_plan", guarded)
    monkeypatch.setattr(widths.Search, "_heldout_top1", score)
    res = tp_vgg.run(_latency_job(0.8 * full, tmp_path), None, log=lambda s: None)
    g = res.report["latency_guard"]
    ms = {name: p["measured_ms"] for name, p in g["plans"].items()}
    assert min(ms.values()) > 0.8 * full and g["kept"] == "uniform" == min(ms, key=ms.get)
    t = res.report["target"]
    assert not t["reached"]
    assert any("measured faster" in n and "neither plan measured within" in n for n in t["notes"])


@pytest.mark.slow  # the latency plan comes from a freshly timed table: failed once in 7 runs
def test_target_latency_guard_keeps_the_fast_width_steps(monkeypatch, tmp_path):
    """With --round-to 8 (or the table's fast-width block) the latency plan moves in whole steps; the guard's
    uniform plan is bisected in the same steps (each width a whole block, or the layer whole
    where one block is all it has), down to --max-layer-ratio, and prunes without error."""
    from tp_vgg.latency import budget as lt

    monkeypatch.setattr(lt, "measured_ms", _mac_ms)
    monkeypatch.setattr(widths.Search, "_heldout_top1", lambda self, m, screen=False: 0.5)
    spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.125).resolved()
    full = _mac_ms(tp_vgg.build_model(spec), spec, None)
    res = tp_vgg.run(_latency_job(0.6 * full, tmp_path, tp_vgg.PruneConfig(round_to=8)), None,
                     log=lambda s: None)
    block = res.report["target"]["round_to"]
    assert block and block > 1
    before = {n: b for n, (b, _) in res.report["target"]["channels"].items()}
    widths_ = res.report["latency_guard"]["plans"]["uniform"]["widths"]
    assert all(k % block == 0 or k == before[n] for n, k in widths_.items()), widths_


def test_under_torchrun_rank_0_measures_and_every_rank_gets_its_figure():
    """The anchor, budget and finalists' times are one measurement shared by all ranks."""
    calls = []
    sent: list = []
    got = [widths._median_measure(lambda m, r=rank: calls.append(r) or 3.0 + r,
                                  SimulatedRank(rank, sent))(None)
           for rank in (0, 1)]
    assert got == [3.0, 3.0]  # every rank holds rank 0's figure
    assert calls == [0] * widths.GUARD_MEASUREMENTS and sent == []  # rank 1 measured nothing


def test_candidates_are_planned_on_widths_screened_then_rescored():
    """Each candidate's MACs are planned from its widths (fvcore agrees); every candidate is
    screened on the first images of the slice, the best few and uniform rescored on all."""
    data = load_data(DataConfig("fake", kwargs={"train_size": 300, "test_size": 20}))
    spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.125).resolved()
    model = tp_vgg.build_model(spec)
    cfg = tp_vgg.PruneConfig(ratio=0.4)
    space, budget = widths.mac_budget(model, spec, cfg, None)
    scfg = widths.SearchConfig(candidates=8, heldout=100, screen=40, rescore=2, bn_batches=2,
                               finalists=1, finalist_epochs=0)
    s = widths.Search(model, spec, cfg, space, budget, scfg, data,
                      evaluation.resolve_preprocessing(data, spec), tp_vgg.TrainConfig(),
                      log=lambda s: None)
    _, rep = s.run()
    for row in rep["rows"]:
        m = copy.deepcopy(model)
        tp_vgg.prune(m, spec, space.config(cfg, row["widths"]))
        assert tp_vgg.count(m, spec).macs == row["macs"]
        assert sum(p.numel() for p in m.parameters()) == row["params"]
    rescored = [r for r in rep["rows"] if r["rescored"]]
    assert rep["screen_images"] == 40 and rep["heldout_images"] == 100
    assert rep["rows"][0]["rescored"] and len(rescored) == 1 + min(2, len(rep["rows"]) - 1)
    best = sorted((r for r in rep["rows"] if r["id"] != 0),
                  key=lambda r: (-r["screen_score"], r["id"]))[:2]
    assert {r["id"] for r in rescored} == {0} | {r["id"] for r in best}
    assert set(rep["stage_s"]) >= {"prune", "bn", "screen", "rescore"}
    assert rep["per_candidate_s"] > 0


# --------------------------------------------------------------------------------------------
# The default: `tp-vgg prune --data D` at a MAC budget searches (widths.DEFAULT_WITH_DATA), as
# the frontier's verdict says (tests/test_frontier.py holds the constant to it).

FT = ["--finetune-epochs", "1"]


@pytest.mark.parametrize("flags, searched", [
    ([*DATA, *FT, "--target-speedup", "2"], True),
    ([*DATA, *FT, "--target-macs", "1M"], True),
    ([*DATA, *FT, "--target-speedup", "2", "--importance", "l1"], True),
    ([*DATA, *FT, "--target-speedup", "2", "--search", "0"], False),   # asked for uniform
    ([*DATA, *FT, "--ratio", "0.5"], False),                            # uniform widths, asked for
    (["--target-speedup", "2"], False),                                 # no data to score on
    ([*DATA, *FT, "--target-speedup", "2", "--global"], False),
    ([*DATA, *FT, "--target-speedup", "2", "--layer-ratios", '{"features.0": 0.2}'], False),
    ([*DATA, *FT, "--target-speedup", "2", "--iterative-steps", "2"], False),
    ([*DATA, *FT, "--target-speedup", "2", "--importance", "taylor"], False),
    ([*DATA, *FT, "--target-speedup", "2", "--recipe", "slimming"], False),
    ([*DATA, *FT, "--target-latency", "1"], False),
])
def test_prune_searches_by_default_with_data_at_a_mac_budget_only(monkeypatch, tmp_path, flags,
                                                                  searched):
    from tp_vgg.cli import build_parser
    from tp_vgg.cli.pruning_cmds import prune_job

    monkeypatch.setattr(widths, "DEFAULT_WITH_DATA", 7)
    job = prune_job(build_parser().parse_args(["prune", *TINY, *flags, "--out",
                                               str(tmp_path / "o")]))
    if searched:
        assert job.search is not None and job.search.candidates == 7 and job.search.default
    else:
        assert job.search is None
    # an explicit --search N is not the default; without a default nothing is searched
    job = prune_job(build_parser().parse_args(["prune", *TINY, *DATA, *FT, "--target-speedup",
                                               "2", "--search", "3", "--out",
                                               str(tmp_path / "o")]))
    assert job.search.candidates == 3 and not job.search.default
    monkeypatch.setattr(widths, "DEFAULT_WITH_DATA", None)
    job = prune_job(build_parser().parse_args(["prune", *TINY, *DATA, *FT, "--target-speedup",
                                               "2", "--out", str(tmp_path / "o")]))
    assert job.search is None


def test_the_default_search_says_so_and_what_it_costs_before_it_starts(monkeypatch, run_cli,
                                                                       tmp_path):
    """The default search is announced (with its cost and --search 0) before the first
    candidate, is recorded as the default, and holds out a fifth of a small data set rather than
    refusing its 5,000 images."""
    monkeypatch.setattr(widths, "DEFAULT_WITH_DATA", 6)
    out = tmp_path / "out"
    r = run_cli("prune", *TINY, "--target-speedup", "2", *DATA, *FT, "--progress", "plain",
                "--threads", "1", "--batch-size", "48", "--out", out)
    assert r.code == 0, r.err
    said = r.out.index("--search 6 is the default with --data at a MAC budget")
    assert "--search 0 prunes uniformly" in r.out and widths.DEFAULT_COST in r.out
    assert said < r.out.index("width search: 80 of the 400 training images held out")
    assert said < r.out.index("search: 6 candidates scored")
    s = read_report(out)["search"]
    assert s["default"] is True and s["heldout_images"] == 80 and s["scored"] >= 1
    # asked for explicitly: not the default, and the held-out size is the user's
    r = run_cli("prune", *TINY, "--target-speedup", "2", "--search", "2", *DATA, *FT, *QUIET,
                "--search-heldout", "128", "--out", tmp_path / "explicit")
    assert r.code == 0, r.err
    s = read_report(tmp_path / "explicit")["search"]
    assert s["default"] is False and s["heldout_images"] == 128
