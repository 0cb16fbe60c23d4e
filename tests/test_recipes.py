"""The anchors' recipes as one flag (issue 20 item 3): ``--recipe depgraph|slimming`` runs sparse
learning with the recipe's regularizer, then global pruning with its criterion; the pruned model
replays, the report names the stage; bad combinations are one-line errors."""

from __future__ import annotations

import pytest
import torch
from methods_util import QUIET, TINY, assert_one_line_error, read_report, user_model

import tp_vgg
from tp_vgg.pruning import graph as pruning
from tp_vgg.jobs import UnstructuredConfig
from tp_vgg.jobs.stages import sparse_learning
from tp_vgg.pruning import recipes

DATA = ["--data", "fake", "--data-kwargs", '{"train_size": 192, "test_size": 48}']


@pytest.mark.parametrize("name", ["depgraph", "slimming"])
@pytest.mark.parametrize("which", ["zoo", "user"])
def test_a_recipe_learns_sparse_then_prunes_globally(run_cli, tmp_path, name, which):
    model = TINY if which == "zoo" else user_model(tmp_path)
    out = tmp_path / "out"
    r = run_cli("prune", *model, "--recipe", name, "--sparse-epochs", "1", "--target-speedup",
                "2", *DATA, "--bn-recalibrate", "2", *QUIET, "--out", out)
    assert r.code == 0, r.err
    rep = read_report(out)
    recipe = recipes.RECIPES.get(name)
    assert rep["config"]["importance"] == recipe.importance
    assert rep["config"]["global_pruning"] is True
    assert rep["config"]["max_layer_ratio"] == recipe.max_layer_ratio
    s = rep["sparse_learning"]
    assert (s["recipe"], s["sparsity"], s["reg"], s["epochs"]) == (name, recipe.sparsity,
                                                                    recipe.reg, 1)
    assert 0.0 <= s["top1"] <= 1.0 and rep["accuracy"]["sparse_learned"] == s["top1"]
    assert f"recipe {name}: sparse learning" in r.out
    assert rep["after"]["macs"] <= rep["before"]["macs"] / 2
    pruned = tp_vgg.load(str(out / "pruned.pt"), trust_model_code=which == "user")
    after = {l["name"]: l["out_channels_after"] for l in rep["layers"]}
    before = {l["name"]: l["out_channels_before"] for l in rep["layers"]}
    kept = pruning.out_channels(pruned)
    assert all(after[k] == v for k, v in kept.items())
    # global ranking: the layers lose different shares (a uniform cut would not)
    shares = {round(kept[k] / before[k], 2) for k in kept if k not in rep["output_layers"]}
    assert len(shares) > 1
    r = run_cli("report", out)
    assert r.code == 0, r.err
    assert f"## Recipe {name}" in (out / "report.md").read_text()


def test_sparse_learning_moves_the_weights_the_recipe_regularizes(tmp_path):
    """The stage trains the model in place with the regularizer: the BN gammas change, and
    a stronger bn-l1 pulls them lower than a weak one."""
    from tp_vgg.data.datasets import DataConfig, load_data
    from tp_vgg.train import evaluation
    from tp_vgg.train.config import finetuning

    spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.125).resolved()
    data = load_data(DataConfig("fake", kwargs={"train_size": 192, "test_size": 48}))
    pre = evaluation.resolve_preprocessing(data, spec)
    gammas = {}
    for reg in (1e-6, 1e-1):
        torch.manual_seed(0)
        m = tp_vgg.build_model(spec)
        rep = sparse_learning(m, spec, data, pre, recipes.SparseLearning("slimming", 2,
                                                                                  reg),
                                      finetuning(device="cpu", progress="none", batch_size=48),
                                      log=lambda s: None)
        assert rep["reg"] == reg and rep["gamma_before"] and rep["gamma_after"]
        gammas[reg] = sum(float(b.weight.detach().abs().sum()) for b in m.modules()
                          if isinstance(b, torch.nn.BatchNorm2d))
    assert gammas[1e-1] < gammas[1e-6]


@pytest.mark.parametrize("flags,message", [
    (["--recipe", "depgraph"], "--recipe depgraph trains with a regularizer before pruning; "
                               "pass --data D"),
    (["--recipe", "depgraph", "--importance", "l2", *DATA],
     "--recipe depgraph prunes with --importance group-norm; leave out --importance l2"),
    (["--sparse-epochs", "3"], "--sparse-epochs applies to a recipe: add --recipe NAME"),
    (["--recipe", "depgraph", "--sparse-epochs", "0", *DATA], "--sparse-epochs"),
    (["--recipe", "bogus", *DATA], "--recipe"),
    (["--recipe", "depgraph", "--search", "3", *DATA], "it does not apply to --search"),
])
def test_bad_recipe_flags_are_one_line_errors(run_cli, tmp_path, flags, message):
    out = tmp_path / "out"
    r = run_cli("prune", *TINY, "--target-speedup", "2", *flags, *QUIET, "--out", out)
    assert_one_line_error(r, message, out)


def test_slimming_on_a_model_without_bn_names_the_recipe_that_works(run_cli, tmp_path):
    out = tmp_path / "out"
    r = run_cli("prune", *user_model(tmp_path, bn=False), "--recipe", "slimming",
                "--target-speedup", "2", *DATA, *QUIET, "--out", out)
    assert_one_line_error(r, "no affine BatchNorm layer; use --recipe depgraph", out)


def test_a_recipe_does_not_apply_to_latency_unstructured_or_sweep(run_cli, tmp_path):
    out = tmp_path / "out"
    r = run_cli("prune", *TINY, "--target-latency", "1", "--recipe", "slimming", *DATA, *QUIET,
                "--out", out)
    assert_one_line_error(r, "it does not apply to --target-latency", out)
    r = run_cli("prune", *TINY, "--unstructured", "--ratio", "0.5", "--recipe", "depgraph",
                *DATA, *QUIET, "--out", out)
    assert_one_line_error(r, "it does not apply to --unstructured", out)
    r = run_cli("sweep", *TINY, "--ratios", "0.3,0.5", "--recipe", "depgraph", *DATA,
                "--finetune-epochs", "1", *QUIET, "--out", out)
    assert_one_line_error(r, "--recipe is not a sweep option", out)
    job = tp_vgg.PruneJob(tp_vgg.ModelSource(spec=tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.125)),
                          tp_vgg.PruneConfig(ratio=0.5),
                          unstructured=UnstructuredConfig(),
                          sparse=recipes.SparseLearning("depgraph"))
    with pytest.raises(tp_vgg.UserError, match="PruneJob.sparse needs PruneJob.unstructured None"):
        job.validate()
