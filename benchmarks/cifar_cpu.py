"""CIFAR-10 (JPEG set) on CPU: train cifar_vgg11_bn --width 0.25 to >= 80 % top-1, prune 50 % of
the channels with L1 (about 4x fewer MACs), fine-tune, and compare top-1.

Every stage is a plain `tp-vgg` command (printed, and saved in the results JSON), so the trained
checkpoint can be re-made without this script. Stages whose outputs exist are skipped.

    python benchmarks/cifar_cpu.py --data-dir data/cifar10-jpeg --runs /tmp/tpvgg-bench [--stage train|prune|all]

Writes benchmarks/results/cifar_cpu.json (and the runs' metrics.jsonl/report.json under --runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "cifar_cpu.json")

TRAIN_EPOCHS = 30
FINETUNE_EPOCHS = 20


def commands(data_dir: str, runs: str, threads: int) -> dict:
    run = os.path.join(runs, "cifar10_vgg11bn_w025")
    data = ["--data", "imagefolder", "--data-dir", data_dir]
    common = ["--threads", str(threads), "--progress", "plain", "--device", "cpu"]
    return {
        "run": run,
        "train": ["tp-vgg", "train", "--model", "cifar_vgg11_bn", "--width", "0.25", *data,
                  "--epochs", str(TRAIN_EPOCHS), "--batch-size", "128", "--optimizer", "sgd",
                  "--lr", "0.1", "--momentum", "0.9", "--nesterov", "--weight-decay", "5e-4",
                  "--schedule", "cosine", "--warmup-epochs", "1", "--seed", "0", *common,
                  "--out", run],
        "prune": ["tp-vgg", "prune", "--checkpoint", os.path.join(run, "last.pt"), "--ratio", "0.5",
                  "--importance", "l1", "--finetune-epochs", str(FINETUNE_EPOCHS), *data,
                  "--batch-size", "128", "--lr", "0.02", "--weight-decay", "5e-4",
                  "--schedule", "cosine", "--seed", "0", *common,
                  "--out", os.path.join(run, "pruned50")],
    }


def _epochs_done(run: str) -> int:
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return len(f.read().splitlines())


def sh(cmd: list) -> float:
    exe = os.path.join(os.path.dirname(sys.executable), "tp-vgg")
    argv = ([exe] if os.path.exists(exe) else [sys.executable, "-m", "tp_vgg"]) + cmd[1:]
    print("+ " + shlex.join(cmd), flush=True)
    t = time.time()
    subprocess.run(argv, check=True)
    return time.time() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data/cifar10-jpeg")
    ap.add_argument("--runs", default="/tmp/tpvgg-bench")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine two threads stall each other)")
    ap.add_argument("--stage", choices=["train", "prune", "all"], default="all")
    a = ap.parse_args()
    cmds = commands(a.data_dir, a.runs, a.threads)
    run = cmds["run"]
    timings = {}
    done = _epochs_done(run)
    if a.stage in ("train", "all") and done < TRAIN_EPOCHS:
        timings["train_s"] = sh(cmds["train"] if done == 0 else
                                ["tp-vgg", "train", "--resume", os.path.join(run, "last.pt"),
                                 "--threads", str(a.threads), "--progress", "plain"])
    if a.stage in ("prune", "all"):
        timings["prune_finetune_s"] = sh(cmds["prune"])
        with open(os.path.join(run, "pruned50", "report.json")) as f:
            rep = json.load(f)
        with open(os.path.join(run, "metrics.jsonl")) as f:
            train_records = [json.loads(l) for l in f]
        with open(os.path.join(run, "pruned50", "finetune", "metrics.jsonl")) as f:
            ft_records = [json.loads(l) for l in f]
        acc = rep["accuracy"]
        out = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
                       f"torch threads {a.threads}, shared with other jobs",
            "commands": {k: shlex.join(v) for k, v in cmds.items() if k != "run"},
            "train_epochs": TRAIN_EPOCHS, "finetune_epochs": FINETUNE_EPOCHS,
            "top1_trained": acc["before"], "top1_pruned_no_finetune": acc["pruned"],
            "top1_finetuned": acc["finetuned"],
            "gap_points": 100 * (acc["before"] - acc["finetuned"]),
            "macs_before": rep["before"]["macs"], "macs_after": rep["after"]["macs"],
            "params_before": rep["before"]["params"], "params_after": rep["after"]["params"],
            "macs_reduction": rep["macs_reduction"], "params_reduction": rep["params_reduction"],
            "train_epoch_s_median": sorted(r["epoch_s"] for r in train_records)[len(train_records) // 2],
            "finetune_epoch_s_median": sorted(r["epoch_s"] for r in ft_records)[len(ft_records) // 2],
            "train_records": train_records, "finetune_records": ft_records, **timings,
        }
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        tmp = RESULTS + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2)
        os.replace(tmp, RESULTS)
        print(json.dumps({k: v for k, v in out.items() if not k.endswith("records")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
