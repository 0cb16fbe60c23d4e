"""(b, detail) Where a pruned model's time goes, layer by layer, against the original.

Each leaf module is timed with forward hooks (CPU time of the one timing thread, so other jobs
on a shared machine do not inflate it), original and pruned alternating pass by pass, medians.
Per layer: original ms, pruned ms, measured speed-up and the layer's MAC ratio; per module
type: the share of the total. Run in the deployment form (channels_last, BN folded) by default.

    python benchmarks/latency_layers.py --model cifar_vgg16_bn --batch 64 --ratio 0.7 --round-to 16

Writes benchmarks/results/latency_layers_<model>_b<batch>_r<ratio>_k<round_to>.csv and .json.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

import tp_vgg
from tp_vgg.latency import LatencyConfig, prepare
from tp_vgg.models import ModelSpec, build_model

HERE = os.path.dirname(os.path.abspath(__file__))


class LayerTimer:
    def __init__(self, model: torch.nn.Module):
        self.times: Dict[str, List[float]] = {}
        self.start: Dict[str, float] = {}
        self.leaves = {n: m for n, m in model.named_modules() if not list(m.children())}
        for n, m in self.leaves.items():
            self.times[n] = []
            m.register_forward_pre_hook(lambda mod, inp, n=n: self.start.__setitem__(n, time.thread_time()))
            m.register_forward_hook(
                lambda mod, inp, out, n=n: self.times[n].append(time.thread_time() - self.start[n]))

    def medians_ms(self) -> Dict[str, float]:
        return {n: statistics.median(v) * 1e3 for n, v in self.times.items() if v}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cifar_vgg16_bn")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ratio", type=float, default=0.7)
    p.add_argument("--round-to", type=int, default=16)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--eager", action="store_true", help="NCHW with BN (default: channels_last, BN folded)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    spec = ModelSpec(a.model).resolved()
    torch.manual_seed(0)
    original = build_model(spec).eval()
    pruned = copy.deepcopy(original)
    tp_vgg.prune(pruned, spec, tp_vgg.PruneConfig(ratio=a.ratio, round_to=a.round_to if a.round_to > 1 else None))
    macs_o = {l.name: l.macs for l in tp_vgg.count(original, spec).layers}
    macs_p = {l.name: l.macs for l in tp_vgg.count(pruned, spec).layers}
    cfg = LatencyConfig(channels_last=not a.eager, fuse_bn=not a.eager)
    models = {"original": prepare(original, cfg), "pruned": prepare(pruned, cfg)}
    timers = {k: LayerTimer(m) for k, m in models.items()}
    x = spec.example_input(a.batch)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    totals: Dict[str, List[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(x), m(x)
        for t in timers.values():
            for v in t.times.values():
                v.clear()
        for _ in range(a.rounds):
            for k, m in models.items():
                t0 = time.thread_time()
                m(x)
                totals[k].append(time.thread_time() - t0)
    med = {k: t.medians_ms() for k, t in timers.items()}
    rows, by_type = [], {}
    for n, mod in timers["original"].leaves.items():
        typ = type(mod).__name__
        if typ == "Identity":
            continue
        pm = timers["pruned"].leaves[n]
        o, q = med["original"][n], med["pruned"][n]
        shape = ""
        if isinstance(mod, torch.nn.Conv2d):
            shape = f"{mod.in_channels}->{mod.out_channels} | {pm.in_channels}->{pm.out_channels}"
        mr = macs_o.get(n, 0) / macs_p[n] if macs_p.get(n) else None
        rows.append({"layer": n, "type": typ, "channels (original | pruned)": shape,
                     "original_ms": round(o, 3), "pruned_ms": round(q, 3),
                     "speedup": round(o / q, 2) if q else None,
                     "mac_ratio": round(mr, 2) if mr else None,
                     "ideal_pruned_ms": round(o / mr, 3) if mr else None})
        t = by_type.setdefault(typ, [0.0, 0.0])
        t[0] += o
        t[1] += q
    total_o = statistics.median(totals["original"]) * 1e3
    total_p = statistics.median(totals["pruned"]) * 1e3
    mac_ratio = tp_vgg.count(original, spec).macs / tp_vgg.count(pruned, spec).macs
    for r in rows:
        print(f"{r['layer']:14s} {r['type']:17s} {r['channels (original | pruned)']:22s} "
              f"{r['original_ms']:8.3f} -> {r['pruned_ms']:7.3f} ms  speed-up {r['speedup']:6.2f}"
              + (f"  MAC ratio {r['mac_ratio']:6.2f}" if r["mac_ratio"] else ""))
    sum_o, sum_p = sum(v[0] for v in by_type.values()), sum(v[1] for v in by_type.values())
    for typ, (o, q) in by_type.items():
        print(f"{typ:17s} original {o:8.2f} ms ({100 * o / sum_o:4.1f}%)  pruned {q:7.2f} ms "
              f"({100 * q / sum_p:4.1f}%)")
    print(f"whole model (no hooks, {a.rounds} rounds): original {total_o:.2f} ms, pruned "
          f"{total_p:.2f} ms, speed-up {total_o / total_p:.2f}, MAC ratio {mac_ratio:.2f}, "
          f"efficiency {total_o / total_p / mac_ratio:.2f}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    stem = os.path.join(HERE, "results", f"latency_layers_{a.model}_b{a.batch}_r{a.ratio}_k{a.round_to}"
                        + ("_eager" if a.eager else ""))
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(stem + ".json", "w") as f:
        json.dump({"command": "python benchmarks/latency_layers.py " + " ".join(
            sys.argv[1:] if argv is None else argv), "clock": "thread CPU time, 1 thread",
            "whole_model_ms": {"original": total_o, "pruned": total_p}, "mac_ratio": mac_ratio,
            "by_type_ms": by_type, "rows": rows}, f, indent=1)
    print(f"wrote {stem}.csv and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
