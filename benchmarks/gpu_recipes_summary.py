"""Collect benchmarks/gpu_recipes.sh's figures into OUT_DIR/recipes.json and a markdown table.

    python benchmarks/gpu_recipes_summary.py RUN_DIR OUT_DIR
"""

from __future__ import annotations

import glob
import json
import os
import sys

from gpu_summary import _json, _json_in_log, _jsonl, epochs


def main(run: str, out: str) -> int:
    result = {"env": _json(os.path.join(out, "env.json")), "bases": {}, "pruned": {},
              "latency": {}}
    rows = []
    for name in ("base_b256", "base_b128"):
        ep = epochs(_jsonl(os.path.join(run, name, "metrics.jsonl")))
        if ep:
            result["bases"][name] = ep
            rows.append([name, "", f"{100 * ep['final_top1']:.2f}", "", "", "",
                         f"{ep['median_epoch_s']:.2f}"])
    for d in sorted(glob.glob(os.path.join(run, "pruned_*"))):
        rep = _json(os.path.join(d, "report.json"))
        if rep is None:
            continue
        name = os.path.basename(d)
        ft = epochs(_jsonl(os.path.join(d, "finetune", "metrics.jsonl")))
        acc = rep.get("accuracy") or {}
        result["pruned"][name] = {"macs_before": rep["before"]["macs"],
                                  "macs_after": rep["after"]["macs"],
                                  "macs_reduction": rep["macs_reduction"], "accuracy": acc,
                                  "finetune": ft}
        gap = acc.get("finetuned", float("nan")) - acc.get("before", float("nan"))
        rows.append([name, f"{rep['macs_reduction']:.2f}x", f"{100 * acc.get('before', float('nan')):.2f}",
                     f"{100 * acc.get('recalibrated', float('nan')):.2f}",
                     f"{100 * acc.get('finetuned', float('nan')):.2f}", f"{100 * gap:+.2f}",
                     f"{ft.get('median_epoch_s', float('nan')):.2f}"])
    for log in sorted(glob.glob(os.path.join(out, "logs", "latency_*.log"))):
        lat = _json_in_log(log)
        if lat and "latency" in lat:
            result["latency"][os.path.basename(log)[len("latency_"):-len(".log")]] = lat["latency"]
    with open(os.path.join(out, "recipes.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    header = ["run", "MACs reduction (fvcore flop = 1 multiply-add)", "top-1 base", "recalibrated",
              "final top-1", "gap", "s/epoch (shared GPU)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(json.dumps(result["latency"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
