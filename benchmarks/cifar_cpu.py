"""CIFAR-10 (JPEG set) on CPU: train cifar_vgg11_bn --width 0.25 to >= 80 % top-1, prune 50 % of
the channels with L1 (about 4x fewer MACs), fine-tune, and compare top-1.

Every stage is a plain `tp-vgg` command (printed, and saved in the results JSON), so the trained
checkpoint can be re-made without this script. The training stage is skipped when the run has all
its epochs, and resumed (`tp-vgg train --resume`) when it has some.

    python benchmarks/cifar_cpu.py --data-dir data/cifar10-jpeg --runs /tmp/tpvgg-bench \\
        [--stage train|prune|all] [--finetune-epochs 20 --finetune-lr 0.02 --finetune-warmup 0]

Writes benchmarks/results/cifar_cpu.json: the training run and one entry per fine-tuning recipe
(merged with the entries already there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "cifar_cpu.json")

TRAIN_EPOCHS = 30


def train_command(data: list, common: list, run: str) -> list:
    return ["tp-vgg", "train", "--model", "cifar_vgg11_bn", "--width", "0.25", *data,
            "--epochs", str(TRAIN_EPOCHS), "--batch-size", "128", "--optimizer", "sgd",
            "--lr", "0.1", "--momentum", "0.9", "--nesterov", "--weight-decay", "5e-4",
            "--schedule", "cosine", "--warmup-epochs", "1", "--seed", "0", *common, "--out", run]


def prune_command(data: list, common: list, run: str, epochs: int, lr: float, warmup: float,
                  out: str) -> list:
    return ["tp-vgg", "prune", "--checkpoint", os.path.join(run, "last.pt"), "--ratio", "0.5",
            "--importance", "l1", "--finetune-epochs", str(epochs), *data, "--batch-size", "128",
            "--lr", str(lr), "--warmup-epochs", str(warmup), "--weight-decay", "5e-4",
            "--schedule", "cosine", "--seed", "0", *common, "--out", out]


def _records(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def sh(cmd: list) -> float:
    exe = os.path.join(os.path.dirname(sys.executable), "tp-vgg")
    argv = ([exe] if os.path.exists(exe) else [sys.executable, "-m", "tp_vgg"]) + cmd[1:]
    print("+ " + shlex.join(cmd), flush=True)
    t = time.time()
    subprocess.run(argv, check=True)
    return time.time() - t


def _write(results: dict) -> None:
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    tmp = RESULTS + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, RESULTS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data/cifar10-jpeg")
    ap.add_argument("--runs", default="/tmp/tpvgg-bench")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine two threads stall each other)")
    ap.add_argument("--stage", choices=["train", "prune", "all"], default="all")
    ap.add_argument("--finetune-epochs", type=int, default=20)
    ap.add_argument("--finetune-lr", type=float, default=0.02)
    ap.add_argument("--finetune-warmup", type=float, default=0.0)
    a = ap.parse_args()
    run = os.path.join(a.runs, "cifar10_vgg11bn_w025")
    data = ["--data", "imagefolder", "--data-dir", a.data_dir]
    common = ["--threads", str(a.threads), "--progress", "plain", "--device", "cpu"]
    results = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            results = json.load(f)
    results.setdefault("finetune_runs", {})
    machine = (f"{os.cpu_count()}-core CPU ({platform.machine()}), shared with other jobs")

    if a.stage in ("train", "all"):
        done = len(_records(os.path.join(run, "metrics.jsonl")))
        cmd = train_command(data, common, run)
        if done == 0:
            sh(cmd)
        elif done < TRAIN_EPOCHS:
            sh(["tp-vgg", "train", "--resume", os.path.join(run, "last.pt"), *common[:4]])
        recs = _records(os.path.join(run, "metrics.jsonl"))
        results["train"] = {
            "date": time.strftime("%Y-%m-%d"), "machine": machine, "command": shlex.join(cmd),
            "epochs": len(recs), "top1": recs[-1]["test_top1"], "top5": recs[-1]["test_top5"],
            "epoch_s_median": statistics.median(r["epoch_s"] for r in recs), "records": recs}
        _write(results)

    if a.stage in ("prune", "all"):
        tag = f"ft{a.finetune_epochs}_lr{a.finetune_lr:g}_warmup{a.finetune_warmup:g}"
        out = os.path.join(run, f"pruned50_{tag}")
        cmd = prune_command(data, common, run, a.finetune_epochs, a.finetune_lr,
                            a.finetune_warmup, out)
        seconds = sh(cmd)
        with open(os.path.join(out, "report.json")) as f:
            rep = json.load(f)
        ft = _records(os.path.join(out, "finetune", "metrics.jsonl"))
        acc = rep["accuracy"]
        entry = {
            "date": time.strftime("%Y-%m-%d"), "machine": machine + f", torch threads {a.threads}",
            "command": shlex.join(cmd),
            "top1_trained": acc["before"], "top1_pruned_no_finetune": acc["pruned"],
            "top1_finetuned": acc["finetuned"], "gap_points": 100 * (acc["before"] - acc["finetuned"]),
            "macs_before": rep["before"]["macs"], "macs_after": rep["after"]["macs"],
            "params_before": rep["before"]["params"], "params_after": rep["after"]["params"],
            "macs_reduction": rep["macs_reduction"], "params_reduction": rep["params_reduction"],
            "finetune_epoch_s_median": statistics.median(r["epoch_s"] for r in ft),
            "prune_finetune_wall_s": seconds, "finetune_records": ft}
        results["finetune_runs"][tag] = entry
        _write(results)
        print(json.dumps({k: v for k, v in entry.items() if k != "finetune_records"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
