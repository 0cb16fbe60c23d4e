"""Accuracy recovery after pruning on CIFAR-10 (JPEG set), CPU: plain fine-tuning, BatchNorm
recalibration, distillation from the unpruned model, both, and the scratch control.

Base: ``cifar_vgg11_bn --width 0.25`` trained ``--base-epochs`` epochs with tp-vgg's default
recipe (SGD 0.05 Nesterov, cosine, 1 warm-up epoch, batch 64, crop+flip, seed 0), or
``--base CKPT``. For each target speed-up (MACs before / after, L1, uniform ``--target-speedup``):

* ``plain``      prune, fine-tune ``--epochs`` epochs (tp-vgg's fine-tuning recipe: a fifth of the
                 training LR, no warm-up, cosine, label smoothing 0);
* ``recal``      prune, re-estimate BN statistics on 50 training batches, fine-tune;
* ``distill``    prune, fine-tune with KL distillation from the unpruned model (T 4, alpha 0.9);
* ``recal+distill``  both;
* ``hilr``       plain fine-tuning at the training LR (0.05) with 1 warm-up epoch instead of a
                 fifth of it: whether a 4x cut needs the weights to move further;
* ``scratch``    the pruned architecture from a random initialization, trained
                 ``--base-epochs + --epochs`` epochs with the training recipe (Liu et al. 2019).

Each run is the library calls that ``tp-vgg prune``/``finetune --scratch`` make; the equivalent
command line is stored with its result. Runs go in the order given by ``--plan`` and the JSON is
written after every run (a rerun skips finished runs), so a partial run still reports.

    python benchmarks/recovery_cifar.py --data-dir data/cifar10-jpeg --threads 1

Writes benchmarks/results/recovery_cifar.json and recovery_cifar.md (table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
VARIANTS = ["plain", "recal", "distill", "recal+distill", "hilr", "scratch"]
BN_BATCHES = 50


def cli_command(a, base: str, speedup: float, variant: str, seed: int) -> str:
    out = f"runs/recovery/{speedup:g}x_{variant}_s{seed}"
    data = ["--data", "imagefolder", "--data-dir", a.data_dir, "--threads", str(a.threads),
            "--device", "cpu", "--seed", str(seed)]
    prune = ["tp-vgg", "prune", "--checkpoint", base, "--target-speedup", f"{speedup:g}",
             "--importance", "l1"]
    if variant == "scratch":
        return (shlex.join(prune + ["--out", out]) + " && " + shlex.join(
            ["tp-vgg", "finetune", "--checkpoint", f"{out}/pruned.pt", "--scratch", "--epochs",
             str(a.base_epochs + a.epochs)] + data + ["--out", f"{out}/scratch"]))
    cmd = prune + ["--finetune-epochs", str(a.epochs), "--bn-recalibrate",
                   str(BN_BATCHES if "recal" in variant else 0)]
    if "distill" in variant:
        cmd += ["--distill"]
    if variant == "hilr":
        cmd += ["--lr", "0.05", "--warmup-epochs", "1"]
    return shlex.join(cmd + data + ["--out", out])


def plan(text: str):
    """'4:0,2:0,4:1' -> [(4.0, 0), (2.0, 0), (4.0, 1)]: (speed-up, seed) rows in order."""
    out = []
    for item in text.split(","):
        s, seed = item.split(":")
        out.append((float(s), int(seed)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data/cifar10-jpeg")
    ap.add_argument("--base", default=None, help="a trained checkpoint (default: train one)")
    ap.add_argument("--base-epochs", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs per run")
    ap.add_argument("--plan", default="4:0,2:0,4:1",
                    help="speed-up:seed rows, run in this order (default 4:0,2:0,4:1)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-images", type=int, default=None, help="smoke runs: a sample")
    ap.add_argument("--work", default="runs/recovery", help="where the base model is trained")
    ap.add_argument("--tag", default="")
    ap.add_argument("--replot", action="store_true", help="only rewrite the table from the JSON")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out_json = os.path.join(RESULTS, f"recovery_cifar{a.tag}.json")
    out_md = os.path.join(RESULTS, f"recovery_cifar{a.tag}.md")
    from tp_vgg.files import write_json, write_text

    done = json.load(open(out_json)) if os.path.exists(out_json) else {}
    if a.replot:
        write_text(out_md, table(done))
        return 0

    from tp_vgg import count
    from tp_vgg.checkpoint import store as checkpoint
    from tp_vgg.data.datasets import DataConfig, load_data
    from tp_vgg.models.zoo import ModelSpec, build_model
    from tp_vgg.pruning import graph as pruning
    from tp_vgg.pruning import targets
    from tp_vgg.train import evaluation
    from tp_vgg.train import loop as train

    os.makedirs(RESULTS, exist_ok=True)
    runs = done.setdefault("runs", [])
    finished = {(r["speedup"], r["variant"], r["seed"]) for r in runs}
    log = lambda s: print("    " + s, flush=True)  # noqa: E731

    t0 = time.time()
    data_cfg = DataConfig("imagefolder", data_dir=a.data_dir)
    data = load_data(data_cfg)
    if a.train_images:
        idx = torch.randperm(len(data.train_labels),
                             generator=torch.Generator().manual_seed(0))[:a.train_images]
        data = dataclasses.replace(data, train_images=data.train_images[idx],
                                   train_labels=data.train_labels[idx])
    print(f"data loaded in {time.time() - t0:.0f}s", flush=True)

    base_path = a.base
    if base_path is None:  # train the base (resumable: its last.pt holds the training state)
        base_dir = os.path.join(a.work, "base")
        base_path = os.path.join(base_dir, "last.pt")
        cfg = train.TrainConfig(epochs=a.base_epochs, device="cpu", progress="plain", seed=0)
        t = time.time()
        if os.path.exists(base_path):
            point = train.ResumePoint.read(base_path)
            train.resume(point, data, base_dir, log=log)
        else:
            spec = ModelSpec("cifar_vgg11_bn", width=0.25, num_classes=data.num_classes)
            train.seed_everything(0)
            train.fit(build_model(spec), spec, data, cfg, base_dir, data_cfg=data_cfg, log=log)
        done.setdefault("base_train_s", time.time() - t)
    ck = checkpoint.load_checkpoint(base_path)
    spec = ck.spec
    pre = train.resolve_preprocessing(data, spec, ck.preprocessing)
    base = ck.build()
    base_counts = count(base, spec)
    if "unpruned" not in done:
        done["unpruned"] = {"top1": evaluation.evaluate_on(base, spec, data, pre, device="cpu").top1,
                            "macs": base_counts.macs, "params": base_counts.params,
                            "base": base_path, "base_epochs": ck.meta.get("epoch")}
    ft_cfg = train.TrainConfig(epochs=a.epochs, lr=train.OPTIMIZERS.get("sgd").lr * 0.2,
                               warmup_epochs=0.0, device="cpu", progress="plain")
    scratch_cfg = train.TrainConfig(epochs=a.base_epochs + a.epochs, device="cpu",
                                    progress="plain")
    done["setup"] = {
        "data": dataclasses.asdict(data_cfg), "train_images": len(data.train_labels),
        "test_images": len(data.test_labels), "finetune": ft_cfg.resolved().to_dict(),
        "scratch": scratch_cfg.resolved().to_dict(), "bn_batches": BN_BATCHES,
        "threads": a.threads, "torch": torch.__version__, "machine": platform.machine(),
        "cpus": os.cpu_count(), "argv": sys.argv}
    write_json(out_json, done)

    for speedup, seed in plan(a.plan):
        for variant in a.variants.split(","):
            if (speedup, variant, seed) in finished:
                continue
            t = time.time()
            model = ck.build()
            cfg, _ = targets.solve(model, spec, pruning.PruneConfig(importance="l1", seed=seed),
                                   targets.Target(speedup=speedup))
            result = pruning.prune(model, spec, cfg)
            c = count(model, spec)
            history = ck.history + result.history
            rec = {"speedup": speedup, "variant": variant, "seed": seed, "ratio": cfg.ratio,
                   "macs": c.macs, "params": c.params,
                   "reached_speedup": base_counts.macs / c.macs,
                   "command": cli_command(a, base_path, speedup, variant, seed)}
            print(f"{speedup:g}x {variant} seed {seed}: ratio {cfg.ratio}, {c.macs} MACs", flush=True)
            if variant == "scratch":
                pruned_ck = checkpoint.Checkpoint(spec, history, model.state_dict(), pre)
                res = train.finetune(pruned_ck, data, dataclasses.replace(scratch_cfg, seed=seed),
                                     scratch=True, preprocessing=pre, log=log)
            else:
                rec["top1_pruned"] = evaluation.evaluate_on(model, spec, data, pre, device="cpu").top1
                if "recal" in variant:
                    evaluation.recalibrate_on(model, spec, data, pre, BN_BATCHES, ft_cfg.batch_size,
                                         "cpu", seed)
                    rec["top1_recalibrated"] = evaluation.evaluate_on(model, spec, data, pre,
                                                                 device="cpu").top1
                teacher = None
                if "distill" in variant:
                    teacher = train.Teacher(ck.build(), spec, ck.history)
                cfg_v = dataclasses.replace(ft_cfg, seed=seed, distill="distill" in variant)
                if variant == "hilr":
                    cfg_v = dataclasses.replace(cfg_v, lr=train.OPTIMIZERS.get("sgd").lr,
                                                warmup_epochs=1.0)
                res = train.fit(model, spec, data, cfg_v, None, history=history, preprocessing=pre,
                                command="finetune", teacher=teacher, log=log)
            rec["top1"] = res.final.top1
            rec["best_top1"] = res.best_top1
            rec["epoch_s_median"] = statistics.median(r["epoch_s"] for r in res.records)
            if "distill" in variant:
                rec["teacher_s_median"] = statistics.median(r["teacher_s"] for r in res.records)
            rec["seconds"] = time.time() - t
            print(f"  -> top-1 {100 * rec['top1']:.2f}% ({rec['seconds']:.0f}s)", flush=True)
            runs.append(rec)
            write_json(out_json, done)
            write_text(out_md, table(done))
    print(table(done))
    return 0


def table(done: dict) -> str:
    base = done["unpruned"]
    b = base["top1"]
    lines = [f"Unpruned base: top-1 {100 * b:.2f}% ({base.get('base_epochs')} epochs), "
             f"{base['macs'] / 1e6:.2f}M MACs (fvcore flop = one multiply-add), "
             f"{base['params'] / 1e6:.3f}M params.", "",
             "| target | variant | MACs | seeds | top-1 pruned | recalibrated | fine-tuned (mean) | "
             "spread | gap to base |", "|---|---|---|---|---|---|---|---|---|"]
    rows = {}
    for r in done.get("runs", []):
        rows.setdefault((r["speedup"], r["variant"]), []).append(r)
    order = {v: i for i, v in enumerate(VARIANTS)}
    for (s, v), rs in sorted(rows.items(), key=lambda kv: (-kv[0][0], order.get(kv[0][1], 9))):
        t = [r["top1"] for r in rs]
        mean = statistics.mean(t)
        pct = lambda key: ", ".join(f"{100 * r[key]:.2f}" for r in rs if key in r) or "–"  # noqa: E731
        lines.append(f"| {s:g}× ({rs[0]['reached_speedup']:.2f}×) | {v} | "
                     f"{rs[0]['macs'] / 1e6:.2f}M | {','.join(str(r['seed']) for r in rs)} | "
                     f"{pct('top1_pruned')} | {pct('top1_recalibrated')} | {100 * mean:.2f} | "
                     f"{100 * (max(t) - min(t)):.2f} | {100 * (mean - b):+.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
