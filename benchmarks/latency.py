"""(b) Measured speed-up vs MAC reduction: does removing MACs remove latency?

For each model, the original and every pruned variant (ratio x --round-to) are timed in ONE
process, interleaved pass by pass (tp_vgg.latency.timing.measure), at each batch size and in each
execution form:

* ``eager``  -- NCHW (contiguous) fp32, BN as a separate op: what a user gets by default;
* ``cl``     -- channels_last;
* ``cl+fuse`` -- channels_last with BatchNorm folded into the convs (tp-vgg export --fuse-bn):
  the CPU deployment form tp-vgg recommends.

efficiency = (original ms / pruned ms) / (original MACs / pruned MACs), each model timed in the
same form. Interleaving makes load changes on a shared machine hit every model alike; the load
average before/after is recorded with the results.

    python benchmarks/latency.py                      # the goal grid (about 30 min on 2 cores)
    python benchmarks/latency.py --models cifar_vgg16_bn --batch-sizes 64 --repeats 10

Writes benchmarks/results/latency_<device>.csv and .json.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import json
import os
import platform
import sys
import time
from typing import Dict, List, Optional

import torch

import tp_vgg
from tp_vgg.latency import timing as latency
from tp_vgg.models.zoo import ModelSpec, build_model

HERE = os.path.dirname(os.path.abspath(__file__))
FORMS = {"eager": dict(channels_last=False, fuse_bn=False),
         "cl": dict(channels_last=True, fuse_bn=False),
         "cl+fuse": dict(channels_last=True, fuse_bn=True)}
DEFAULT_BATCHES = {"cifar_vgg16_bn": "1,64", "vgg16_bn": "1,8"}


def variants(spec: ModelSpec, ratios: List[float], round_tos: List[int]):
    torch.manual_seed(0)
    original = build_model(spec).eval()
    macs = {"original": tp_vgg.count(original, spec).macs}
    models = {"original": original}
    meta = {"original": {"ratio": 0.0, "round_to": None}}
    for r in ratios:
        for k in round_tos:
            name = f"r{r}_k{k}"
            m = copy.deepcopy(original)
            tp_vgg.prune(m, spec, tp_vgg.PruneConfig(ratio=r, round_to=k if k > 1 else None))
            models[name], macs[name] = m, tp_vgg.count(m, spec).macs
            meta[name] = {"ratio": r, "round_to": k,
                          "channels": ",".join(str(c) for c in tp_vgg.pruning.graph.out_channels(m).values())}
    return models, macs, meta


def run(model_name: str, batch_sizes, ratios, round_tos, forms, repeats, warmup, device, threads,
        clock, log) -> List[Dict]:
    spec = ModelSpec(model_name).resolved()
    models, macs, meta = variants(spec, ratios, round_tos)
    rows = []
    for form in forms:
        for b in batch_sizes:
            cfg = latency.LatencyConfig(batch_sizes=(b,), device=device, warmup=warmup,
                                        repeats=repeats, threads=threads, clock=clock,
                                        **FORMS[form])
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            timings = latency.measure(models, spec, cfg)[b]
            secs = time.perf_counter() - t0
            orig = timings["original"]
            for name, t in timings.items():
                if name == "original":
                    continue
                c = latency.Comparison.of(b, orig, t, macs["original"] / macs[name])
                row = {"model": model_name, "input": spec.input_size, "form": form, "batch": b,
                       "ratio": meta[name]["ratio"], "round_to": meta[name]["round_to"],
                       "orig_ms": round(orig.median_ms, 3), "pruned_ms": round(t.median_ms, 3),
                       "orig_iqr_ms": f"{orig.p25_ms:.2f}-{orig.p75_ms:.2f}",
                       "pruned_iqr_ms": f"{t.p25_ms:.2f}-{t.p75_ms:.2f}",
                       "speedup": round(c.speedup, 3), "mac_ratio": round(c.mac_ratio, 3),
                       "efficiency": round(c.efficiency, 3), "repeats": repeats,
                       "threads": threads or torch.get_num_threads(), "clock": clock,
                       "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2),
                       "channels": meta[name]["channels"]}
                rows.append(row)
                log(f"{model_name}@{spec.input_size} {form:8s} b{b:<3d} r={row['ratio']} "
                    f"k={row['round_to']:<2d} orig {row['orig_ms']:9.2f} ms  pruned "
                    f"{row['pruned_ms']:9.2f} ms  speed-up {row['speedup']:6.2f}  MAC ratio "
                    f"{row['mac_ratio']:6.2f}  efficiency {row['efficiency']:.2f}")
            log(f"  ({secs:.0f} s, load {load0:.1f} -> {os.getloadavg()[0]:.1f})")
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cifar_vgg16_bn,vgg16_bn")
    p.add_argument("--batch-sizes", default=None,
                   help="for every model (default: cifar_vgg16_bn 1,64; vgg16_bn 1,8)")
    p.add_argument("--ratios", default="0.3,0.5,0.7")
    p.add_argument("--round-to", default="1,8,16", help="1 = no rounding")
    p.add_argument("--forms", default="eager,cl,cl+fuse", help=", ".join(FORMS))
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", default="wall", choices=latency.CLOCKS,
                   help="thread: CPU time of the one timing thread (needs --threads 1); not "
                        "slowed by other jobs on a shared machine")
    p.add_argument("--tag", default="", help="suffix for the result files")
    a = p.parse_args(argv)
    ratios = [float(x) for x in a.ratios.split(",")]
    round_tos = [int(x) for x in a.round_to.split(",")]
    forms = a.forms.split(",")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    rows: List[Dict] = []
    started = datetime.datetime.now().isoformat(timespec="seconds")
    for name in a.models.split(","):
        bs = latency.parse_batch_sizes(a.batch_sizes or DEFAULT_BATCHES.get(name, "1"))
        rows += run(name, bs, ratios, round_tos, forms, a.repeats, a.warmup, a.device, a.threads,
                    a.clock, lambda s: print(s, flush=True))
    dev = torch.device(a.device).type
    stem = os.path.join(HERE, "results", f"latency_{dev}{a.tag}")
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    env = latency.environment(torch.device(a.device))
    env.update(threads=a.threads or torch.get_num_threads(), clock=a.clock,
               platform=platform.platform(), cpus=os.cpu_count(), started=started,
               finished=datetime.datetime.now().isoformat(timespec="seconds"),
               command="python benchmarks/latency.py " + " ".join(sys.argv[1:] if argv is None else argv))
    with open(stem + ".json", "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=1)
    print(f"wrote {stem}.csv and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
