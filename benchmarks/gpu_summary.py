"""Collect the GPU check's figures (benchmarks/gpu.sh) into one JSON file and a markdown table.

    python benchmarks/gpu_summary.py RUN_DIR OUT_DIR

Reads RUN_DIR/base/metrics.jsonl, RUN_DIR/pruned_*/report.json and their finetune/metrics.jsonl,
OUT_DIR/env.json and OUT_DIR/steps.jsonl; writes OUT_DIR/gpu_check.json. Medians over epochs
(the first epoch, which includes cuDNN autotuning and warm-up, is left out when there are more).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from typing import Any, Dict, List, Optional


def _jsonl(path: str) -> List[Dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _json(path: str) -> Optional[Dict[str, Any]]:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_in_log(path: str) -> Optional[Dict[str, Any]]:
    """The JSON object a command printed (``profile --json``), from its first ``{``."""
    if not os.path.exists(path):
        return None
    text = open(path, encoding="utf-8").read()
    try:
        return json.loads(text[text.index("{"):text.rindex("}") + 1])
    except ValueError:
        return None


def epochs(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    if not records:
        return {}
    steady = records[1:] if len(records) > 1 else records
    out = {"epochs": len(records),
           "median_epoch_s": statistics.median(r["epoch_s"] for r in steady),
           "median_images_per_s": statistics.median(r["images_per_s"] for r in steady),
           "first_epoch_s": records[0]["epoch_s"],
           "final_top1": records[-1]["test_top1"], "best_top1": records[-1]["best_top1"]}
    if "peak_gpu_mem_mb" in records[-1]:
        out["peak_gpu_mem_mb"] = max(r["peak_gpu_mem_mb"] for r in records)
    if "teacher_s" in records[-1]:
        out["median_teacher_s"] = statistics.median(r["teacher_s"] for r in steady)
    return out


def main(run: str, out: str) -> int:
    steps = _jsonl(os.path.join(out, "steps.jsonl"))
    result: Dict[str, Any] = {"env": _json(os.path.join(out, "env.json")),
                              "steps": steps,
                              "train": epochs(_jsonl(os.path.join(run, "base", "metrics.jsonl")))}
    rows = []
    base = result["train"]
    if base:
        rows.append(["base (train)", "", f"{100 * base['final_top1']:.2f}", "", "", "",
                     f"{base['median_epoch_s']:.2f}", f"{base['median_images_per_s']:.0f}",
                     f"{base.get('peak_gpu_mem_mb', 0):.0f}"])
    for name in sorted(os.listdir(run)) if os.path.isdir(run) else []:
        rep = _json(os.path.join(run, name, "report.json"))
        if not name.startswith("pruned_") or rep is None:
            continue
        ft = epochs(_jsonl(os.path.join(run, name, "finetune", "metrics.jsonl")))
        acc = rep.get("accuracy") or {}
        result[name] = {"macs_before": rep["before"]["macs"], "macs_after": rep["after"]["macs"],
                        "macs_reduction": rep["macs_reduction"],
                        "params_reduction": rep["params_reduction"], "accuracy": acc, "finetune": ft}
        rows.append([name, f"{rep['macs_reduction']:.2f}x",
                     f"{100 * acc.get('before', float('nan')):.2f}",
                     f"{100 * acc.get('pruned', float('nan')):.2f}",
                     f"{100 * acc.get('recalibrated', float('nan')):.2f}",
                     f"{100 * acc.get('finetuned', float('nan')):.2f}",
                     f"{ft.get('median_epoch_s', float('nan')):.2f}",
                     f"{ft.get('median_images_per_s', float('nan')):.0f}",
                     f"{ft.get('peak_gpu_mem_mb', 0):.0f}"])
    scratch = epochs(_jsonl(os.path.join(run, "scratch", "metrics.jsonl")))
    if scratch:
        result["scratch"] = scratch
        rows.append(["scratch control", "", "", "", "", f"{100 * scratch['final_top1']:.2f}",
                     f"{scratch['median_epoch_s']:.2f}", f"{scratch['median_images_per_s']:.0f}",
                     f"{scratch.get('peak_gpu_mem_mb', 0):.0f}"])
    lat = _json_in_log(os.path.join(out, "logs", "latency.log"))
    if lat and "latency" in lat:
        result["latency"] = lat["latency"]
    result["script_seconds"] = sum(s["seconds"] for s in steps)
    with open(os.path.join(out, "gpu_check.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    header = ["run", "MACs (fvcore flop = 1 multiply-add) reduction", "top-1 before", "pruned",
              "recalibrated", "fine-tuned", "s/epoch", "img/s", "peak GPU MB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"env: {json.dumps(result['env'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
