"""Printed remedies of the width search (``--search N``, ``tp_vgg/search/``), applied to the
failing case (issue 19 item 5's catalogue: ``tests/test_remedies.py``)."""

from __future__ import annotations

import pytest
from methods_util import QUIET, TINY
from remedies_util import Remedy, run_remedy

import tp_vgg
from tp_vgg.checkpoint.source import ModelSource
from tp_vgg.data.datasets import DataConfig
from tp_vgg.jobs import FinetuneConfig, PruneJob
from tp_vgg.models.zoo import ModelSpec
from tp_vgg.search.widths import SearchConfig

DATA = ["--data", "fake", "--data-kwargs", '{"train_size": 300, "test_size": 32}',
        "--search-heldout", "64", "--search-bn-batches", "1", "--search-epochs", "0"]


def _prune(*flags):
    return lambda c: ["prune", *TINY, "--ratio", "0.5", *flags, *QUIET, "--out", c.path("out")]


RECIPE_DATA = ["--data", "fake", "--data-kwargs", '{"train_size": 96, "test_size": 32}',
               "--sparse-epochs", "1", "--bn-recalibrate", "1"]


def _target(*flags):
    return lambda c: ["prune", *TINY, "--target-speedup", "2", *flags, *QUIET, "--out",
                      c.path("out")]


REMEDIES = [
    Remedy("recipe-needs-data", "trains with a regularizer before pruning; pass --data D",
           _target("--recipe", "depgraph"), _target("--recipe", "depgraph", *RECIPE_DATA)),
    Remedy("recipe-sets-its-importance", " prunes with --importance ",
           _target("--recipe", "depgraph", "--importance", "l2", *RECIPE_DATA),
           _target("--recipe", "depgraph", *RECIPE_DATA)),
    Remedy("recipe-not-with-search",
           "ends in global channel pruning under a MAC budget or --ratio; it does not apply to --",
           _target("--recipe", "depgraph", "--search", "3", *RECIPE_DATA),
           _target("--recipe", "depgraph", *RECIPE_DATA)),
    Remedy("sparse-flag-needs-recipe", " applies to a recipe: add --recipe NAME",
           _target("--sparse-epochs", "1"), _target("--recipe", "depgraph", *RECIPE_DATA)),
    Remedy("search-cli-needs-data",
           "--search needs data: it scores each candidate on a held-out slice of the training "
           "data; pass --data D",
           _prune("--search", "3"), _prune("--search", "3", *DATA)),
    Remedy("search-flag-needs-search",
           " applies to the width search: add --search N (N >= 1) with --data D",
           _prune("--search-finalists", "1"), _prune("--search-finalists", "1", "--search", "3",
                                                     *DATA)),
    Remedy("search-not-global",
           "--search chooses every layer's width itself: it does not combine with --global",
           _prune("--search", "3", "--global", *DATA), _prune("--search", "3", *DATA)),
]

ELSEWHERE = {
    "is the default with --data at a MAC budget":
    "tests/test_search.py::test_prune_searches_by_default_with_data_at_a_mac_budget_only",
    "regularizes BatchNorm gammas but the model has no affine BatchNorm layer; use --recipe "
    "depgraph": "tests/test_remedies_search.py::test_slimming_without_bn_runs_as_depgraph",
    "trains with a regularizer before pruning; pass --data D (PruneJob.finetune.data)":
        "tests/test_remedies_search.py::test_the_library_recipe_needs_data_and_its_prune_config",
    " --global (PruneJob.prune: SparseLearning.prune_config)":
        "tests/test_remedies_search.py::test_the_library_recipe_needs_data_and_its_prune_config",
    "is predicted at {} ms; raise --max-layer-ratio or the target":
        "tests/test_remedies_search.py::"
        "test_a_latency_budget_uniform_cannot_reach_suggests_a_larger_target",
    "--search needs data: it scores each candidate on a held-out slice of the training data; "
    "pass --data D (PruneJob.finetune.data)":
        "tests/test_remedies_search.py::test_the_library_search_needs_data_and_runs_with_it",
}

NOT_SUGGESTIONS = {
    "epoch(s) of sparse learning with --sparsity ": "report.md's account of what a recipe ran, "
    "not a fix",
    "not compared with the uniform plan: no --data to score them on": "report.json's record "
    "of why the latency guard did not run; tests/test_search.py checks it is written",
    "DepGraph: sparse learning with --sparsity group-norm": "a recipe's help text: what "
    "--recipe depgraph does, not a fix",
    "Network Slimming: sparse learning with --sparsity bn-l1": "a recipe's help text: what "
    "--recipe slimming does, not a fix",
    "--search: no layer is left to choose a width for": "says why nothing can be searched (the "
    "layers are all fixed); it names --layer-ratios as the cause, not as a flag to add",
}


@pytest.mark.parametrize("remedy", [pytest.param(r, id=r.id, marks=r.marks) for r in REMEDIES])
def test_remedy(remedy, run_cli, tmp_path):
    run_remedy(remedy, run_cli, tmp_path)


def test_the_library_search_needs_data_and_runs_with_it(tmp_path):
    job = PruneJob(ModelSource(spec=ModelSpec("cifar_vgg11_bn", width=0.125)),
                   tp_vgg.PruneConfig(ratio=0.5),
                   search=SearchConfig(candidates=3, heldout=64, bn_batches=1,
                                       finalist_epochs=0))
    with pytest.raises(tp_vgg.UserError, match="pass --data D"):
        tp_vgg.jobs.run(job, log=lambda s: None)
    job.finetune = FinetuneConfig(DataConfig("fake", kwargs={"train_size": 300,
                                                             "test_size": 32}), bn_batches=0)
    res = tp_vgg.jobs.run(job, str(tmp_path / "out"), log=lambda s: None)
    assert res.report["search"]["scored"] == 3


@pytest.mark.slow
def test_a_latency_budget_uniform_cannot_reach_suggests_a_larger_target(run_cli, tmp_path):
    """A twentieth of the time is out of reach even at --max-layer-ratio; the larger target the
    message asks for is searched."""
    from tp_vgg.latency.budget import LatencyBudget, measured_ms

    wide = ["--model", "cifar_vgg11_bn", "--width", "0.5"]
    spec = ModelSpec("cifar_vgg11_bn", width=0.5).resolved()
    cfg = LatencyBudget(ms=1.0, batch_size=16, threads=1).config(spec, "cpu")
    model = tp_vgg.build_model(spec)
    full = min(measured_ms(model, spec, cfg) for _ in range(3))  # warm, as the job measures
    flags = ["--latency-batch", "16", "--search", "3", *DATA, *QUIET]
    r = run_cli("prune", *wide, "--target-latency", f"{0.05 * full:.4f}", *flags,
                "--out", tmp_path / "a")
    assert r.code == 2 and "is predicted at" in r.err
    assert "raise --max-layer-ratio or the target" in r.err
    r = run_cli("prune", *wide, "--target-latency", f"{0.8 * full:.4f}", *flags,
                "--out", tmp_path / "b")
    assert r.code == 0, r.err


def test_slimming_without_bn_runs_as_depgraph(run_cli, tmp_path):
    from methods_util import assert_one_line_error, user_model

    flags = [*user_model(tmp_path, bn=False), "--target-speedup", "2", *RECIPE_DATA, *QUIET]
    out = tmp_path / "out"
    r = run_cli("prune", *flags, "--recipe", "slimming", "--out", out)
    assert_one_line_error(r, "use --recipe depgraph", out)
    r = run_cli("prune", *flags, "--recipe", "depgraph", "--out", out)
    assert r.code == 0, r.err


def test_the_library_recipe_needs_data_and_its_prune_config(tmp_path):
    from tp_vgg.pruning.recipes import SparseLearning

    stage = SparseLearning("depgraph", epochs=1)
    job = PruneJob(ModelSource(spec=ModelSpec("cifar_vgg11_bn", width=0.125)),
                   tp_vgg.PruneConfig(ratio=0.3), sparse=stage)
    with pytest.raises(tp_vgg.UserError, match="pass --data D"):
        tp_vgg.jobs.run(job, log=lambda s: None)
    job.finetune = FinetuneConfig(DataConfig("fake", kwargs={"train_size": 96,
                                                             "test_size": 32}), bn_batches=0)
    with pytest.raises(tp_vgg.UserError, match="SparseLearning.prune_config"):
        tp_vgg.jobs.run(job, log=lambda s: None)
    job.prune = stage.prune_config(job.prune, max_layer_ratio_given=False)
    res = tp_vgg.jobs.run(job, str(tmp_path / "out"), log=lambda s: None)
    assert res.report["sparse_learning"]["recipe"] == "depgraph"
    assert res.report["config"]["importance"] == "group-norm"
