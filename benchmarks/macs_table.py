"""(a) MACs and parameters before/after pruning for every zoo VGG at 32x32 and 224x224.

MACs are fvcore's (one multiply-add = 1; conv + linear), counted at batch 1 in eval mode, and
cross-checked against PyTorch's FlopCounterMode (FLOPs / 2). Pruning: tp_vgg.prune, L1,
uniform ratio per layer (the logits layer is never pruned).

    python benchmarks/macs_table.py [--ratios 0.5] [--sizes 32,224]

Writes benchmarks/results/macs_table.csv and .json.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import sys
import time
from typing import List, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

import tp_vgg
from tp_vgg.models.zoo import CIFAR_VGGS, TORCHVISION_VGGS, ModelSpec, build_model

HERE = os.path.dirname(os.path.abspath(__file__))


def torch_macs(model, spec) -> float:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(spec.example_input(batch=1))
    return fc.get_total_flops() / 2


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratios", default="0.5")
    p.add_argument("--sizes", default="32,224")
    p.add_argument("--models", default=",".join(TORCHVISION_VGGS + CIFAR_VGGS))
    a = p.parse_args(argv)
    rows = []
    for size in [int(s) for s in a.sizes.split(",")]:
        for name in a.models.split(","):
            spec = ModelSpec(name, input_size=size).resolved()
            torch.manual_seed(0)
            original = build_model(spec).eval()
            before = tp_vgg.count(original, spec)
            pt_before = torch_macs(original, spec)
            for r in [float(x) for x in a.ratios.split(",")]:
                pruned = copy.deepcopy(original)
                t0 = time.perf_counter()
                tp_vgg.prune(pruned, spec, tp_vgg.PruneConfig(ratio=r))
                secs = time.perf_counter() - t0
                after = tp_vgg.count(pruned, spec)
                pt_after = torch_macs(pruned, spec)
                row = {"model": name, "input": size, "ratio": r,
                       "macs_before": before.macs, "macs_after": after.macs,
                       "macs_reduction": round(before.macs / after.macs, 3),
                       "params_before": before.params, "params_after": after.params,
                       "params_reduction": round(before.params / after.params, 3),
                       "torch_vs_fvcore_before": round(pt_before / before.macs, 6),
                       "torch_vs_fvcore_after": round(pt_after / after.macs, 6),
                       "prune_s": round(secs, 2)}
                rows.append(row)
                print(f"{name:15s} @{size:<3d} r={r}: MACs {tp_vgg.models.counting.human(before.macs):>8s} -> "
                      f"{tp_vgg.models.counting.human(after.macs):>8s} ({row['macs_reduction']:.2f}x)  params "
                      f"{tp_vgg.models.counting.human(before.params):>8s} -> "
                      f"{tp_vgg.models.counting.human(after.params):>8s} ({row['params_reduction']:.2f}x)  "
                      f"torch/fvcore {row['torch_vs_fvcore_before']:.4f} "
                      f"{row['torch_vs_fvcore_after']:.4f}", flush=True)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    stem = os.path.join(HERE, "results", "macs_table")
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(stem + ".json", "w") as f:
        json.dump({"units": "MACs = multiply-adds of conv + linear layers (fvcore's 'flop'), "
                            "batch 1, eval mode",
                   "command": "python benchmarks/macs_table.py " + " ".join(
                       sys.argv[1:] if argv is None else argv),
                   "rows": rows}, f, indent=1)
    print(f"wrote {stem}.csv and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
