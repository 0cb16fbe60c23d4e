"""(b, detail) Where a pruned model's time goes, layer by layer, against the original: what
`tp-vgg profile --checkpoint pruned.pt --latency --layers` prints, for a model pruned here
(:func:`tp_vgg.latency.layers.layer_times`: forward hooks, original and pruned alternating pass by
pass, medians; one thread's CPU time with ``--threads 1``). Deployment form (channels_last, BN
folded) unless ``--eager``.

    python benchmarks/latency_layers.py --model cifar_vgg16_bn --batch 64 --ratio 0.7 --round-to 16

Writes benchmarks/results/latency_layers_<model>_b<batch>_r<ratio>_k<round_to>[_t<threads>].csv
and .json.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import os
import sys
from typing import List, Optional

import torch

import tp_vgg
from tp_vgg.latency.layers import format_layer_times, layer_times
from tp_vgg.latency.timing import LatencyConfig, measure
from tp_vgg.models.zoo import ModelSpec, build_model

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cifar_vgg16_bn")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ratio", type=float, default=0.7)
    p.add_argument("--round-to", type=int, default=16)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eager", action="store_true", help="NCHW with BN (default: channels_last, BN folded)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    spec = ModelSpec(a.model).resolved()
    torch.manual_seed(0)
    original = build_model(spec).eval()
    pruned = copy.deepcopy(original)
    tp_vgg.prune(pruned, spec, tp_vgg.PruneConfig(ratio=a.ratio, round_to=a.round_to if a.round_to > 1 else None))
    cfg = LatencyConfig(batch_sizes=(a.batch,), channels_last=not a.eager, fuse_bn=not a.eager,
                        repeats=a.rounds, threads=a.threads)
    lt = layer_times(pruned, spec, cfg, unpruned=original)
    print(format_layer_times(lt))
    whole = measure({"original": original, "pruned": pruned}, spec, cfg)[a.batch]
    total_o, total_p = whole["original"].median_ms, whole["pruned"].median_ms
    mac_ratio = tp_vgg.count(original, spec).macs / tp_vgg.count(pruned, spec).macs
    print(f"whole model (no hooks, {a.rounds} interleaved rounds): original {total_o:.2f} ms, "
          f"pruned {total_p:.2f} ms, speed-up {total_o / total_p:.2f}, MAC ratio {mac_ratio:.2f}, "
          f"efficiency {total_o / total_p / mac_ratio:.2f}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    stem = os.path.join(HERE, "results", f"latency_layers_{a.model}_b{a.batch}_r{a.ratio}_k{a.round_to}"
                        + ("_eager" if a.eager else "") + (f"_t{a.threads}" if a.threads != 1 else ""))
    rows = [dataclasses.asdict(r) for r in lt.rows]
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(stem + ".json", "w") as f:
        json.dump({"command": "python benchmarks/latency_layers.py " + " ".join(
            sys.argv[1:] if argv is None else argv), "clock": lt.clock,
            "whole_model_ms": {"original": total_o, "pruned": total_p}, "mac_ratio": mac_ratio,
            "by_type_ms": lt.by_type, "rows": rows}, f, indent=1)
    print(f"wrote {stem}.csv and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
