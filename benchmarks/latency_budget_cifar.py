"""Latency budget against MAC budget at equal *measured* latency, CIFAR-10 (JPEG set), CPU.

Base: the recovery benchmark's ``cifar_vgg11_bn --width 0.25`` (30 epochs; benchmarks/
recovery_cifar.py). ``uniform``: ``--ratio 0.5`` (every layer loses half its channels, L1).
Its latency L is measured (torch, BN folded, channels-last, batch 64, ``--threads``).
``latency``: ``--target-latency L`` on the same device and runtime (L1 scores, importance per
predicted ms; :mod:`tp_vgg.latency.budget`). Both are fine-tuned identically (tp-vgg's
fine-tuning recipe, ``--epochs``, BN recalibration first) for each seed, through the library's
prune job (:func:`tp_vgg.jobs.prune.run`, what ``tp-vgg prune`` runs). At the end both pruned models are
timed together, interleaved, medians.

    python benchmarks/latency_budget_cifar.py --base runs/recovery/base/last.pt \\
        --data-dir data/cifar10-jpeg --epochs 15 --seeds 0,1

Writes benchmarks/results/latency_budget_cifar.json (after every run) and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="runs/recovery/base/last.pt")
    ap.add_argument("--data-dir", default="data/cifar10-jpeg")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="runs/latency_budget")
    ap.add_argument("--methods", default="uniform,latency")
    ap.add_argument("--max-layer-ratio", type=float,
                    help="--max-layer-ratio of the latency-aware search (default tp-vgg's 0.75)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--device", default="cpu", help="where latency is measured and fine-tuning runs")
    ap.add_argument("--importance", default="l1", help="criterion of both methods (default l1)")
    ap.add_argument("--target-ms", type=float,
                    help="the latency budget (default: the uniform model's, measured here)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from tp_vgg.checkpoint.source import ModelSource
    from tp_vgg.checkpoint.store import load_checkpoint
    from tp_vgg.data.datasets import DataConfig
    from tp_vgg.files import write_json, write_text
    from tp_vgg.jobs import FinetuneConfig, PruneJob, run
    from tp_vgg.latency import budget as latency_target
    from tp_vgg.latency import timing as latency
    from tp_vgg.models.counting import count
    from tp_vgg.pruning import graph as pruning
    from tp_vgg.pruning.targets import Target
    from tp_vgg.train.config import finetuning

    out_json = os.path.join(HERE, "results", "latency_budget_cifar"
                            + (f"_{a.tag}" if a.tag else "") + ".json")
    ck = load_checkpoint(a.base)
    spec = ck.spec
    mcfg = latency.LatencyConfig(batch_sizes=(a.batch,), device=a.device, threads=a.threads,
                                 channels_last=True, fuse_bn=True)
    base = ck.build()
    uniform = ck.build()
    pruning.prune(uniform, spec, pruning.PruneConfig(ratio=a.ratio))
    target_ms = a.target_ms or latency_target.measured_ms(uniform, spec, mcfg)
    print(f"uniform --ratio {a.ratio}: {target_ms:.2f} ms at batch {a.batch}"
          + (" (given)" if a.target_ms else ""), flush=True)
    done = {"command": "python benchmarks/latency_budget_cifar.py " + " ".join(sys.argv[1:]),
            "base": a.base, "base_epochs": ck.meta.get("epoch"), "ratio": a.ratio,
            "target_ms": target_ms, "batch": a.batch, "threads": a.threads,
            "finetune_epochs": a.epochs, "device": a.device, "importance": a.importance,
            "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None,
            "max_layer_ratio": a.max_layer_ratio, "torch": torch.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"), "runs": []}
    data = DataConfig("imagefolder", data_dir=a.data_dir)
    models = {}
    for seed in (int(s) for s in a.seeds.split(",")):
        for method in a.methods.split(","):
            t0 = time.time()
            train_cfg = dataclasses.replace(finetuning(), device=a.device, progress="plain",
                                            seed=seed)
            ft = FinetuneConfig(data, train=train_cfg, epochs=a.epochs)
            prune_cfg = pruning.PruneConfig(importance=a.importance, seed=seed,
                                            ratio=a.ratio if method == "uniform" else 0.0,
                                            max_layer_ratio=None if method == "uniform"
                                            else a.max_layer_ratio)
            target = None if method == "uniform" else Target(latency=latency_target.LatencyBudget(
                ms=target_ms, batch_size=a.batch, threads=a.threads, device=a.device))
            job = PruneJob(ModelSource(checkpoint=a.base), prune_cfg, target=target,
                           finetune=ft, device=a.device)
            out = os.path.join(a.work, f"{method}{a.tag}_seed{seed}")
            res = run(job, out, log=lambda s: print("    " + s, flush=True))
            rec = {"method": method, "seed": seed, "macs": res.after.macs,
                   "params": res.after.params, "accuracy": res.accuracy,
                   "seconds": round(time.time() - t0, 1)}
            if target is not None:
                t = res.report["target"]
                rec.update(predicted_ms=t["predicted_ms"], measured_ms=t["measured_ms"],
                           prediction_error=t["prediction_error"], rounds=len(t["rounds"]))
            done["runs"].append(rec)
            models.setdefault(method, res.model)
            print(f"{method} seed {seed}: top-1 {100 * res.accuracy['finetuned']:.2f}% "
                  f"({rec['seconds']:.0f} s)", flush=True)
            write_json(out_json, done)
    timings = latency.measure({"original": base, **models}, spec,
                              dataclasses.replace(mcfg, repeats=30))[a.batch]
    done["interleaved_ms"] = {k: t.median_ms for k, t in timings.items()}
    done["macs"] = {"original": count(base, spec).macs,
                    **{k: count(m, spec).macs for k, m in models.items()}}
    write_json(out_json, done)
    lines = ["| method | MACs | measured ms (b{}) | top-1 after pruning | after BN recal. | "
             "fine-tuned (per seed) |".format(a.batch), "|---|---|---|---|---|---|"]
    for method in a.methods.split(","):
        rs = [r for r in done["runs"] if r["method"] == method]
        lines.append(f"| {method} | {done['macs'][method] / 1e6:.2f}M | "
                     f"{done['interleaved_ms'][method]:.2f} | "
                     + " / ".join(f"{100 * r['accuracy']['pruned']:.2f}" for r in rs) + " | "
                     + " / ".join(f"{100 * r['accuracy'].get('recalibrated', 0):.2f}" for r in rs)
                     + " | " + " / ".join(f"{100 * r['accuracy']['finetuned']:.2f}" for r in rs)
                     + " |")
    write_text(out_json[:-5] + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
