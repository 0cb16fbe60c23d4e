"""(b, detail) Deployment-form efficiency of uniform pruning, per runtime, batch size and
``--round-to``: how much of the MAC reduction turns into speed.

For each runtime and batch size, the original and every (ratio, round-to) pruned copy are timed
together, interleaved, medians (:func:`tp_vgg.latency.timing.measure`), BN folded and channels-last;
``--round-to auto`` is the multiple learned from the latency table's width scan for that device,
runtime and batch (:func:`tp_vgg.latency.budget.learn_round_to`, cached). With ``--predict``, the
latency table (:mod:`tp_vgg.latency.budget`, calibrated on the original and the uniform 0.5 copy)
also predicts each model: the error of the 0.5 round-to-1 copy is 0 by construction, the others
are out of sample.

    python benchmarks/latency_efficiency.py --model cifar_vgg16_bn --batches 1,64
    python benchmarks/latency_efficiency.py --model vgg16_bn --batches 1,8 --repeats 5

Writes benchmarks/results/latency_efficiency_<model>[_<tag>].json and .csv.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import sys
import time
from typing import Dict, List, Optional

import torch

import tp_vgg
from tp_vgg.latency import budget as latency_target
from tp_vgg.latency import timing as latency
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.pruning import graph as pruning

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cifar_vgg16_bn")
    p.add_argument("--width", type=float)
    p.add_argument("--batches", default="1,64")
    p.add_argument("--ratios", default="0.3,0.5,0.7")
    p.add_argument("--round-to", default="1,8,auto")
    p.add_argument("--runtimes", default="torch,onnxruntime")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--predict", action="store_true",
                   help="also predict the round-to-1 models from the latency table")
    p.add_argument("--cache", help="latency table folder (default: tp-vgg's)")
    p.add_argument("--tag", default="")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    spec = ModelSpec(a.model, width=a.width).resolved()
    torch.manual_seed(0)
    original = build_model(spec).eval()
    macs0 = tp_vgg.count(original, spec).macs
    narrowest = min(m.out_channels for m in original.modules() if isinstance(m, torch.nn.Conv2d))
    ratios = [float(r) for r in a.ratios.split(",")]
    rows: List[Dict] = []
    learned_all: Dict[str, Dict] = {}
    for runtime in a.runtimes.split(","):
        for b in (int(x) for x in a.batches.split(",")):
            cfg = latency.LatencyConfig(batch_sizes=(b,), device=a.device, threads=a.threads,
                                        channels_last=True, fuse_bn=True, warmup=a.warmup,
                                        repeats=a.repeats, runtime=runtime)
            t0 = time.perf_counter()
            table = latency_target.open_table(original, spec, cfg, a.cache)
            block, info = latency_target.learn_round_to(table)
            learned_all[f"{runtime}/b{b}"] = dict(info, round_to=block)
            models = {"original": original}
            used: Dict[str, int] = {}
            macs = {"original": macs0}
            for r in ratios:
                for k in a.round_to.split(","):
                    kk = block if k == "auto" else int(k)
                    if k == "auto":  # halved until every conv keeps one, as tp-vgg does
                        while kk > 1 and int(narrowest * (1 - r)) < kk:
                            kk //= 2
                    m = copy.deepcopy(original)
                    tp_vgg.prune(m, spec, tp_vgg.PruneConfig(ratio=r, round_to=kk if kk > 1 else None))
                    name = f"r{r}_k{k}"
                    models[name], macs[name] = m, tp_vgg.count(m, spec).macs
                    used[name] = kk
            timings = latency.measure(models, spec, cfg)[b]
            predicted = {}
            if a.predict:
                pc = pruning.PruneConfig(max_layer_ratio=0.75)
                ranked, _, pred, _, _ = latency_target.build_predictor(
                    original, spec, pc, cfg, cache_dir=a.cache, log=print)
                anchor = timings[f"r{latency_target.ANCHOR_RATIO}_k1"].median_ms \
                    if f"r{latency_target.ANCHOR_RATIO}_k1" in timings else None
                pred.calibrate(timings["original"].median_ms,
                               latency_target.uniform_kept(pred, ranked, latency_target.ANCHOR_RATIO),
                               anchor)
                for name, kk in used.items():
                    r = float(name[1:].split("_k")[0])
                    predicted[name] = pred.predict(latency_target.uniform_kept(
                        pred, ranked, r, kk if kk > 1 else None))
            o = timings["original"].median_ms
            for name, t in timings.items():
                if name == "original":
                    continue
                r, k = name[1:].split("_k")
                speed, mac_ratio = o / t.median_ms, macs0 / macs[name]
                row = {"runtime": runtime, "batch": b, "ratio": float(r), "round_to": k,
                       "round_to_used": used[name],
                       "original_ms": round(o, 3), "pruned_ms": round(t.median_ms, 3),
                       "speedup": round(speed, 3), "mac_ratio": round(mac_ratio, 3),
                       "efficiency": round(speed / mac_ratio, 3)}
                if name in predicted:
                    row["predicted_ms"] = round(predicted[name], 3)
                    row["prediction_error"] = round((predicted[name] - t.median_ms) / t.median_ms, 4)
                rows.append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            print(f"-- {runtime} b{b}: {time.perf_counter() - t0:.0f} s; round-to auto = {block}",
                  flush=True)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    stem = os.path.join(HERE, "results", f"latency_efficiency_{a.model}"
                        + (f"_w{a.width:g}" if a.width else "") + (f"_{a.tag}" if a.tag else ""))
    env = latency.environment(torch.device(a.device))
    env.update(threads=a.threads, machine=platform.node(), date=time.strftime("%Y-%m-%d"))
    with open(stem + ".json", "w") as f:
        json.dump({"command": "python benchmarks/latency_efficiency.py " + " ".join(
            sys.argv[1:] if argv is None else argv), "environment": env,
            "units": "ms per forward pass of a batch, median of interleaved runs; efficiency = "
                     "speed-up / MAC ratio (fvcore MACs, 1 multiply-add = 1)",
            "round_to_auto": learned_all, "rows": rows}, f, indent=1)
    with open(stem + ".csv", "w", newline="") as f:
        fields: List[str] = []
        for r in rows:
            fields += [k for k in r if k not in fields]
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {stem}.json and .csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
