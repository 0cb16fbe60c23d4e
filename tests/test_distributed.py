"""torchrun + DistributedDataParallel on CPU (gloo): 2 processes reach the weights of 1 process
with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import tp_vgg
from tp_vgg.checkpoint import store as checkpoint
from tp_vgg.data.datasets import DataConfig, load_data
from tp_vgg.errors import UserError
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.train import distributed
from tp_vgg.train.loop import TrainConfig, fit, seed_everything

DATA_KWARGS = {"train_size": 128, "test_size": 33}  # test shards of 17 and 16: 2 and 1 batches




def test_from_env_reads_torchrun_variables():
    ctx = distributed.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.enabled, ctx.is_main) == (1, 2, 1, True, False)
    single = distributed.from_env({})
    assert single.world_size == 1 and single.is_main and not single.enabled
    with pytest.raises(UserError, match="RANK/WORLD_SIZE"):
        distributed.from_env({"WORLD_SIZE": "two"})


def test_device_names_are_checked():
    assert distributed.resolve_device("cpu").type == "cpu"
    with pytest.raises(UserError, match="--device 'gpu0' is not a device"):
        distributed.resolve_device("gpu0")


def _launcher():
    bindir = os.path.dirname(sys.executable)
    torchrun = os.path.join(bindir, "torchrun")
    if not os.path.exists(torchrun):
        torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    entry = os.path.join(bindir, "tp-vgg")  # the documented `torchrun ... $(which tp-vgg) train`
    return [torchrun], ([entry] if os.path.exists(entry) else ["-m", "tp_vgg"])


def _torchrun2(cwd, argv):
    """`torchrun --standalone --nproc_per_node=2 tp-vgg ARGV` with one thread per process;
    asserts it exits 0."""
    launcher, script = _launcher()
    root = os.path.dirname(os.path.dirname(os.path.abspath(tp_vgg.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    cmd = launcher + ["--standalone", "--nproc_per_node=2"] + script + argv
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_torchrun_two_cpu_processes_match_one_process(tmp_path):
    # A model without BatchNorm: per-process BN statistics would differ by design.
    spec = ModelSpec("cifar_vgg11", width=0.125, num_classes=10).resolved()
    data_cfg = DataConfig("fake", kwargs=DATA_KWARGS)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.02, warmup_epochs=0.5, progress="none",
                      device="cpu")
    seed_everything(cfg.seed)  # what `tp-vgg train` does before building the model
    one = fit(build_model(spec), spec, load_data(data_cfg), cfg, str(tmp_path / "one"), data_cfg=data_cfg)

    out = tmp_path / "two"
    r = _torchrun2(tmp_path, [
        "train", "--model", "cifar_vgg11", "--width", "0.125", "--data", "fake",
        "--data-kwargs", json.dumps(DATA_KWARGS), "--epochs", "2", "--batch-size", "16",
        "--lr", "0.02", "--warmup-epochs", "0.5", "--device", "cpu", "--progress", "plain",
        "--out", str(out)])
    assert r.stdout.count("epoch 2/2") == 1  # rank 0 alone prints

    two = checkpoint.load_checkpoint(str(out / "last.pt"))
    seed_everything(cfg.seed)
    init = build_model(spec).state_dict()
    assert any(not torch.allclose(init[k], v, atol=1e-3) for k, v in two.state_dict.items())  # it trained
    for k, v in one.model.state_dict().items():
        assert torch.allclose(v.cpu(), two.state_dict[k], rtol=1e-4, atol=1e-5), k
    cfg2 = json.loads((out / "config.json").read_text())
    assert cfg2["runtime"]["world_size"] == 2 and cfg2["runtime"]["backend"] == "gloo"
    rec1 = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[-1])
    rec2 = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    # test metrics reduced over both ranks' shards: every one of the 33 test images counted once
    assert rec2["test_top1"] == pytest.approx(rec1["test_top1"])
    assert rec2["test_loss"] == pytest.approx(rec1["test_loss"], rel=1e-4)
    assert rec2["train_loss"] == pytest.approx(rec1["train_loss"], rel=1e-4)


def test_torchrun_prune_recalibrates_and_distills_on_two_cpu_processes(tmp_path):
    spec = ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=10).resolved()
    data_cfg = DataConfig("fake", kwargs=DATA_KWARGS)
    seed_everything(0)
    fit(build_model(spec), spec, load_data(data_cfg), TrainConfig(epochs=1, batch_size=32,
        progress="none", device="cpu"), str(tmp_path / "base"), data_cfg=data_cfg)

    out = tmp_path / "p"
    r = _torchrun2(tmp_path, [
        "prune", "--checkpoint", str(tmp_path / "base" / "last.pt"), "--ratio", "0.5",
        "--data", "fake", "--data-kwargs", json.dumps(DATA_KWARGS), "--finetune-epochs", "2",
        "--distill", "--bn-recalibrate", "2", "--batch-size", "16", "--device", "cpu",
        "--progress", "plain", "--out", str(out)])
    assert r.stdout.count("top-1: before") == 1 and r.stdout.count("epoch 2/2") == 1  # rank 0
    rep = json.loads((out / "report.json").read_text())
    assert list(rep["accuracy"]) == ["before", "pruned", "recalibrated", "finetuned"]
    cfg = json.loads((out / "finetune" / "config.json").read_text())
    assert cfg["runtime"]["world_size"] == 2 and cfg["runtime"]["backend"] == "gloo"
    assert cfg["train"]["distill"] and (out / "finetune" / "teacher.pt").exists()
    # pruned.pt holds the fine-tuned weights of rank 0, which DDP kept equal on both ranks
    pruned = checkpoint.load_checkpoint(str(out / "pruned.pt"))
    tuned = checkpoint.load_checkpoint(str(out / "finetune" / "last.pt"))
    assert pruned.history == tuned.history
    assert all(torch.equal(v, tuned.state_dict[k]) for k, v in pruned.state_dict.items())
    assert sorted(os.listdir(out)) == ["finetune", "pruned.pt", "report.json"]


def test_torchrun_round_to_auto_is_learned_by_rank_0_for_both_ranks(tmp_path):
    """--round-to auto times a width scan: rank 0 alone times it and broadcasts the multiple
    (DistContext.share); DDP would refuse the fine-tuning if the two ranks pruned to other
    widths."""
    out = tmp_path / "p"
    _torchrun2(tmp_path, [
        "prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--ratio", "0.5",
        "--round-to", "auto", "--latency-batch", "2", "--latency-cache", str(tmp_path / "cache"),
        "--data", "fake", "--data-kwargs", json.dumps(DATA_KWARGS), "--finetune-epochs", "1",
        "--batch-size", "16", "--device", "cpu", "--progress", "none", "--out", str(out)])
    rep = json.loads((out / "report.json").read_text())
    k = rep["round_to_auto"]["round_to"]
    assert k >= 1 and rep["config"]["round_to"] in (k, k // 2)
    kept = [x["out_channels_after"] for x in rep["layers"]
            if x["type"] == "Conv2d"]  # the kept widths: multiples of the learned one
    assert kept and all(c % rep["config"]["round_to"] == 0 for c in kept)
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 1  # one table, written by rank 0


def test_torchrun_prune_refuses_latency(tmp_path):
    from tp_vgg.checkpoint.source import ModelSource
    from tp_vgg.jobs import PruneJob, run
    from tp_vgg.latency.timing import LatencyConfig
    from tp_vgg.pruning.graph import PruneConfig

    job = PruneJob(ModelSource(spec=ModelSpec("cifar_vgg11_bn", width=0.125)), PruneConfig(ratio=0.5),
                   latency=LatencyConfig())
    with pytest.raises(UserError, match="--latency and --unstructured run in one process"):
        run(job, None, log=lambda s: None, dist=distributed.DistContext(rank=0, world_size=2))


def test_torchrun_search_splits_the_candidates_and_matches_one_process(tmp_path, run_cli):
    """--search under torchrun: the two ranks score disjoint halves of each wave and share the
    scores, so the candidates, their scores and the choice are those of one process."""
    flags = ["prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--target-speedup", "2",
             "--search", "8", "--search-epochs", "0", "--search-heldout", "64",
             "--search-bn-batches", "2", "--data", "fake", "--data-kwargs",
             json.dumps({"train_size": 256, "test_size": 32}), "--bn-recalibrate", "0",
             "--device", "cpu", "--threads", "1", "--progress", "none"]
    r = run_cli(*flags, "--out", tmp_path / "one")
    assert r.code == 0, r.err
    _torchrun2(tmp_path, flags + ["--out", str(tmp_path / "two")])
    one, two = (json.loads((tmp_path / d / "report.json").read_text())["search"]
                for d in ("one", "two"))
    assert [(x["widths"], x["macs"], x["score"]) for x in two["rows"]] == \
        [(x["widths"], x["macs"], x["score"]) for x in one["rows"]]
    assert two["chosen"] == one["chosen"] and two["scored"] == 8
