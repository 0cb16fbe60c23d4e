"""Engine overhead: training images/s of tp_vgg's loop vs a minimal hand-written PyTorch loop.

Same process, same model (cifar_vgg11_bn --width 0.25, channels_last), same in-memory uint8 data
(synthetic CIFAR-shaped, 32x32x3), same SGD settings. The two loops alternate epoch by epoch
(interleaved, so a load change on the machine hits both), after one warm-up epoch each; the figure
is the ratio of median images/s (and the median of the per-round paired ratios). tp_vgg's loop is measured as it trains by default (random crop +
flip, per-step LR schedule, loss/accuracy accounting, NaN guard) and with --no-augment.

    python benchmarks/engine_overhead.py [--rounds 7] [--images 4096] [--threads 2]

Writes benchmarks/results/engine_overhead.json and .csv.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn

from tp_vgg.data.batches import Batches, BatchTransform
from tp_vgg.data.datasets import DataConfig, load_data
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.train.loop import OPTIMIZERS, Engine, TrainConfig, lr_lambda, train_one_epoch

HERE = os.path.dirname(os.path.abspath(__file__))


def minimal_epoch(model, opt, images, labels, mean255, inv_std255, batch_size, gen) -> float:
    """The hand-written loop: shuffle, slice, normalize, forward, loss, backward, step."""
    crit = nn.CrossEntropyLoss()
    model.train()
    t = time.perf_counter()
    perm = torch.randperm(len(labels), generator=gen)
    for i in range(0, len(perm), batch_size):
        idx = perm[i:i + batch_size]
        x = ((images[idx].float() - mean255) * inv_std255).contiguous(memory_format=torch.channels_last)
        loss = crit(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return len(perm) / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "engine_overhead"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    data = load_data(DataConfig("fake", kwargs={"train_size": a.images, "test_size": 16}))
    spec = ModelSpec("cifar_vgg11_bn", width=0.25, num_classes=10).resolved()
    base = build_model(spec).to(memory_format=torch.channels_last)
    mean, std = data.stats()
    cfg = TrainConfig(epochs=1000, batch_size=a.batch_size, lr=0.01, warmup_epochs=0).resolved()

    def make_opt(model):
        return OPTIMIZERS.get(cfg.optimizer).build(model.parameters(), cfg)

    bare_model = copy.deepcopy(base)
    bare_opt = make_opt(bare_model)
    mean255 = torch.tensor([m * 255 for m in mean]).view(1, -1, 1, 1)
    inv_std255 = torch.tensor([1 / (s * 255) for s in std]).view(1, -1, 1, 1)
    gen = torch.Generator().manual_seed(0)

    engines = {}
    for name, augment in (("tp_vgg", True), ("tp_vgg_no_augment", False)):
        model = copy.deepcopy(base)
        opt = make_opt(model)
        batches = Batches(data.train_images, data.train_labels, a.batch_size,
                          BatchTransform(mean, std, 32, channels_last=True), "cpu", train=True,
                          augment=augment, seed=0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, len(batches)))
        engines[name] = (Engine(model, opt, sched), batches)

    def tp_epoch(name, epoch):
        engine, batches = engines[name]
        batches.set_epoch(epoch)
        return train_one_epoch(engine, batches, epoch).images_per_s

    rows = []
    methods = ["minimal", "tp_vgg", "tp_vgg_no_augment"]
    for r in range(a.rounds + 1):  # round 0 is warm-up
        order = methods if r % 2 == 0 else methods[::-1]
        for m in order:
            ips = (minimal_epoch(bare_model, bare_opt, data.train_images, data.train_labels,
                                 mean255, inv_std255, a.batch_size, gen)
                   if m == "minimal" else tp_epoch(m, r))
            if r > 0:
                rows.append({"round": r, "method": m, "images_per_s": round(ips, 1)})
        print(f"round {r}: " + ", ".join(f"{x['method']} {x['images_per_s']:.0f}"
                                          for x in rows if x["round"] == r), flush=True)
    med = {m: statistics.median(x["images_per_s"] for x in rows if x["method"] == m) for m in methods}
    def paired(m: str) -> float:
        by = {(x["round"], x["method"]): x["images_per_s"] for x in rows}
        return statistics.median(by[(r, m)] / by[(r, "minimal")] for r in range(1, a.rounds + 1))

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()}-core CPU ({platform.machine()}), torch threads {a.threads}",
        "torch": torch.__version__,
        "command": "python benchmarks/engine_overhead.py " + " ".join(sys.argv[1:]),
        "model": "cifar_vgg11_bn width 0.25, channels_last", "images": a.images,
        "batch_size": a.batch_size, "rounds": a.rounds,
        "median_images_per_s": med,
        "ratio_tp_vgg_vs_minimal": med["tp_vgg"] / med["minimal"],
        "ratio_tp_vgg_no_augment_vs_minimal": med["tp_vgg_no_augment"] / med["minimal"],
        # the same round's epochs ran back to back: the paired ratio cancels slow load changes
        "median_paired_ratio_tp_vgg": paired("tp_vgg"),
        "median_paired_ratio_tp_vgg_no_augment": paired("tp_vgg_no_augment"),
        "goal": ">= 0.95",
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["round", "method", "images_per_s"])
        w.writeheader()
        w.writerows(rows)
    os.replace(a.out + ".csv.tmp", a.out + ".csv")
    with open(a.out + ".json.tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(a.out + ".json.tmp", a.out + ".json")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
