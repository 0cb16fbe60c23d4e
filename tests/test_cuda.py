"""The CUDA path: GPU-resident data, bf16 and fp16 autocast (GradScaler), channels_last,
distillation, exact resume, and CUDA-trained checkpoints loading on the CPU.

Skipped on a machine without CUDA; ``benchmarks/gpu.sh`` runs this file on a GPU machine."""

from __future__ import annotations

import json

import pytest
import torch
from resume_util import assert_same_weights, cut_and_resume

from tp_vgg.checkpoint import store as checkpoint
from tp_vgg.data.batches import Batches, BatchTransform
from tp_vgg.data.datasets import DataConfig, load_data
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.train.loop import TrainConfig, fit, seed_everything

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

FAKE = ["--data", "fake", "--data-kwargs", '{"train_size": 256, "test_size": 64}']
SPEC = ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=10).resolved()
DATA = DataConfig("fake", kwargs={"train_size": 128, "test_size": 32})


def test_data_live_on_the_gpu():
    data = load_data(DATA)
    t = BatchTransform(*data.stats(), 32)
    b = Batches(data.train_images, data.train_labels, 32, t, "cuda", train=True)
    assert b.on_device and b.images.is_cuda
    x, y = next(iter(b))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_train_prune_distill_finetune_eval_on_cuda(run_cli, tmp_path, amp):
    dev = ["--device", "cuda", "--amp", amp, "--progress", "plain"]
    r = run_cli("train", "--model", "cifar_vgg11_bn", "--width", "0.25", *FAKE, "--epochs", "2",
                "--batch-size", "64", *dev, "--out", tmp_path / "base")
    assert r.code == 0, r.err
    cfg = json.loads((tmp_path / "base" / "config.json").read_text())
    assert cfg["runtime"]["device"].startswith("cuda") and cfg["runtime"]["amp"] == amp
    recs = [json.loads(l) for l in (tmp_path / "base" / "metrics.jsonl").read_text().splitlines()]
    assert all(r_["peak_gpu_mem_mb"] > 0 for r_ in recs)
    r = run_cli("prune", "--checkpoint", tmp_path / "base" / "last.pt", "--target-speedup", "2",
                *FAKE, "--finetune-epochs", "2", "--distill", "--batch-size", "64", *dev,
                "--out", tmp_path / "p")
    assert r.code == 0, r.err
    rep = json.loads((tmp_path / "p" / "report.json").read_text())
    assert rep["macs_reduction"] >= 2 and list(rep["accuracy"]) == ["before", "pruned", "recalibrated", "finetuned"]
    # The CUDA-trained, pruned checkpoint loads on the CPU and evaluates the same on both devices.
    ck = checkpoint.load_checkpoint(str(tmp_path / "p" / "pruned.pt"))
    assert all(not v.is_cuda for v in ck.state_dict.values())
    res = {}
    for d in ("cpu", "cuda"):
        e = run_cli("eval", "--checkpoint", tmp_path / "p" / "pruned.pt", *FAKE, "--device", d, "--json")
        assert e.code == 0, e.err
        res[d] = json.loads(e.out.strip().splitlines()[-1])
    assert abs(res["cpu"]["top1"] - res["cuda"]["top1"]) <= 1 / 64 + 1e-9  # bf16 eval may flip one


def test_resume_on_cuda_gives_the_same_weights(tmp_path):
    data = load_data(DATA)
    cfg = TrainConfig(epochs=3, batch_size=32, progress="plain", device="cuda", amp="bf16")

    def run(out, log=lambda s: None):
        seed_everything(cfg.seed)
        return fit(build_model(SPEC), SPEC, data, cfg, str(out), data_cfg=DATA, log=log)

    w = cut_and_resume(run, tmp_path, data)
    assert_same_weights(w["full"], w["cut"])
