"""The frontier's outputs (issue 31): docs/pruning.md's advice table and README.md's short
form are what the frontier JSON gives, the prune defaults follow its verdict, and
benchmarks/gpu_frontier.sh dry-runs on CPU at tiny sizes (with the shared CIFAR-10 archive;
skipped without it)."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tp_vgg.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _advice():
    return runpy.run_path(str(ROOT / "benchmarks" / "advice.py"), run_name="advice")


def test_the_advice_table_is_generated_from_the_frontier_json():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "advice.py"), "--check"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    adv = _advice()
    page = (ROOT / "docs" / "pruning.md").read_text()
    table = adv["markdown"](adv["load"]())
    assert adv["BEGIN"] + "\n" + table + adv["END"] in page
    readme = (ROOT / "README.md").read_text()
    assert adv["BEGIN"] + "\n" + adv["summary"](adv["load"]()) + adv["END"] in readme
    # every figure in it comes from a run: uniform's 4x mean of the first base, recomputed
    first = json.loads((ROOT / "benchmarks" / "results" / "frontier_cifar.json").read_text())
    t = [100 * r["top1"] for r in first["runs"] if r["row"] == "uniform" and r["speedup"] == 4]
    assert f"| {sum(t) / len(t):.2f} ({len(t)}) |" in table


def test_a_changed_readme_figure_makes_the_check_fail(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text().replace(" (3) |", " (4) |", 1))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "advice.py"), "--check",
                        "--readme", str(readme)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "README.md: the advice table is not what" in r.stderr


def test_a_changed_figure_makes_the_check_fail(tmp_path):
    page = tmp_path / "pruning.md"
    text = (ROOT / "docs" / "pruning.md").read_text()
    page.write_text(text.replace(" (3) |", " (4) |", 1))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "advice.py"), "--check",
                        "--page", str(page)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "not what benchmarks/results give" in r.stderr


def test_the_prune_defaults_follow_the_verdict(tmp_path):
    """The verdict names a method or none; `tp-vgg prune --data D --target-speedup X` (nothing
    else asked for) runs exactly that: the search with the candidates the frontier measured, or
    uniform L1 with no search, no global ranking and no recipe."""
    from tp_vgg.cli.pruning_cmds import prune_job
    from tp_vgg.search import widths

    adv = _advice()
    method, why = adv["verdict"](adv["load"]())
    args = build_parser().parse_args(["prune", "--model", "cifar_vgg11_bn", "--data", "digits",
                                      "--target-speedup", "4", "--finetune-epochs", "1",
                                      "--out", str(tmp_path / "o")])
    job = prune_job(args)
    chosen = (job.prune.importance or "l1", job.prune.global_pruning, job.sparse)
    if method is None:  # uniform L1 stays: no search, no global ranking, no recipe
        assert widths.DEFAULT_WITH_DATA is None and job.search is None
        assert chosen == ("l1", False, None), chosen
        assert "uniform L1 stays the default" in why
    else:
        assert method == "search", f"{method} won: make it the default, then this test"
        assert adv["LABELS"]["search"] == f"`--search {widths.DEFAULT_WITH_DATA}`"
        assert job.search is not None and job.search.default
        assert job.search.candidates == widths.DEFAULT_WITH_DATA
        assert chosen == ("l1", False, None), chosen
        assert "default with --data at a MAC budget" in why


def test_the_verdict_needs_two_bases_and_two_budgets_over_two_seeds():
    adv = _advice()

    def base(delta, seeds=2, budgets=(4.0, 8.0)):
        runs = [{"speedup": b, "row": row, "seed": s, "top1": 0.8 + (delta if row == "x" else 0),
                 "macs": 1} for b in budgets for row in ("uniform", "x") for s in range(seeds)]
        return {"runs": runs, "unpruned": {"top1": 0.9, "macs": 4}}

    assert adv["verdict"]([("a", base(0.01))])[0] is None             # one base
    assert adv["verdict"]([("a", base(0.01)), ("b", base(0.01))])[0] == "x"
    assert adv["verdict"]([("a", base(0.01)), ("b", base(-0.01))])[0] is None
    assert adv["verdict"]([("a", base(0.01, seeds=1)), ("b", base(0.01))])[0] is None
    # each base needs two budgets: a second base measured at one budget decides nothing
    assert adv["verdict"]([("a", base(0.01)), ("b", base(0.01, budgets=(4.0,)))])[0] is None


@pytest.mark.skipif(not ARCHIVE.is_file(), reason="needs ../shared/data/cifar10-jpeg.tar.gz")
def test_gpu_frontier_dry_runs_on_cpu_at_tiny_sizes(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), RUN=str(tmp_path / "run"),
               DATA_DIR=str(tmp_path / "none"), OMP_NUM_THREADS="1", PY=sys.executable)
    r = subprocess.run(["bash", "benchmarks/gpu_frontier.sh", "--device", "cpu", "--tiny"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    tag = "_cifar_vgg16_bn_w0.125"
    done = json.loads((tmp_path / "out" / f"frontier_cifar{tag}.json").read_text())
    assert {x["row"] for x in done["runs"]} == {"uniform", "search", "global-group-norm"}
    assert all(x["speedup"] == 4 and x["seed"] == 0 for x in done["runs"])
    assert (tmp_path / "out" / f"frontier_cifar{tag}_widths.png").is_file()
    assert json.loads((tmp_path / "out" / "env.json").read_text())["device"] == "cpu"


def test_a_stopped_scratch_row_continues_exactly_from_its_run_directory(tmp_path):
    """The scratch control trains for the base's epochs plus the fine-tuning's, longer than a
    session: its row trains in a run directory, and a second invocation continues the cut run
    from its last.pt to the weights of the uninterrupted one (a finished one is read, not
    trained again; another recipe there is refused)."""
    import dataclasses

    from resume_util import Stop, assert_same_weights

    from tp_vgg.checkpoint import store as checkpoint
    from tp_vgg.data.datasets import DataConfig, load_data
    from tp_vgg.models.zoo import ModelSpec, build_model
    from tp_vgg.pruning import graph as pruning
    from tp_vgg.train import loop as train

    fr = runpy.run_path(str(ROOT / "benchmarks" / "frontier_cifar.py"), run_name="frontier")
    spec = ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=10).resolved()
    data_cfg = DataConfig("fake", kwargs={"train_size": 64, "test_size": 32})
    data = load_data(data_cfg)
    model = build_model(spec)
    result = pruning.prune(model, spec, pruning.PruneConfig(ratio=0.5))
    checkpoint.save(str(tmp_path / "p.pt"), model, spec, result.history)
    ck = checkpoint.load_checkpoint(str(tmp_path / "p.pt"))
    cfg = train.TrainConfig(epochs=2, batch_size=32, device="cpu", progress="plain", seed=3)

    def row(run_dir, log=lambda s: None, c=cfg):
        rec = {}
        res = fr["scratch"](ck, spec, ck.history, data, data_cfg, None, c, log, str(run_dir), rec)
        return res, rec

    full, rec = row(tmp_path / "full")
    assert "resumed_after_epoch" not in rec

    def stop(line):
        if line.startswith("epoch 1/"):
            raise Stop
    with pytest.raises(Stop):
        row(tmp_path / "cut", stop)
    cut, rec = row(tmp_path / "cut")
    assert rec["resumed_after_epoch"] == 1
    assert cut.final.top1 == full.final.top1
    assert_same_weights(*(checkpoint.load_checkpoint(str(tmp_path / d / "last.pt")).state_dict
                          for d in ("full", "cut")))
    again, rec = row(tmp_path / "full")  # finished: its last epoch, nothing trained
    assert rec["resumed_after_epoch"] == 2 and again.final.top1 == full.final.top1
    with pytest.raises(SystemExit, match="another recipe"):
        row(tmp_path / "full", c=dataclasses.replace(cfg, lr=0.01))
