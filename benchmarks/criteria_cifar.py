"""Pruning criteria on CIFAR-10 (JPEG set) on CPU, at equal MACs: one-shot vs iterative.

Base: the trained ``cifar_vgg11_bn --width 0.25`` of the training-engine benchmark
(benchmarks/cifar_cpu.py). For every criterion and every target speed-up (MACs before / after),
the base is pruned with ``--target-speedup X`` -- uniform pruning, so every criterion keeps
exactly the same channel counts and MACs -- then fine-tuned with one fixed short schedule:

* one-shot: prune, fine-tune ``--epochs`` epochs;
* iterative: ``--steps`` pruning steps with 1 epoch of fine-tuning after each step but the last,
  then ``epochs - (steps - 1)`` epochs -- the same number of fine-tuning epochs in total.

Fine-tuning is tp-vgg's default fine-tuning recipe (SGD, Nesterov momentum 0.9, lr 0.01 cosine,
no warm-up, weight decay 5e-4, batch 128, crop+flip, seed 0). Each run is the library calls that
``tp-vgg prune`` makes; its equivalent command line is stored with the result.

    python benchmarks/criteria_cifar.py --checkpoint /tmp/tpvgg-bench/cifar10_vgg11bn_w025/last.pt \\
        --data-dir data/cifar10-jpeg

Writes benchmarks/results/criteria_cifar.json (after every run; a rerun skips finished runs),
criteria_cifar.md (table) and criteria_cifar.png (top-1 vs MACs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
CRITERIA = ["l1", "l2", "fpgm", "lamp", "taylor", "bn-scale", "random"]


def cli_command(a, criterion: str, speedup: float, mode: str) -> str:
    cmd = ["tp-vgg", "prune", "--checkpoint", a.checkpoint, "--target-speedup", f"{speedup:g}",
           "--importance", criterion]
    if mode == "iterative":
        cmd += ["--iterative-steps", str(a.steps), "--finetune-epochs-per-step", "1",
                "--finetune-epochs", str(a.epochs - (a.steps - 1))]
    else:
        cmd += ["--finetune-epochs", str(a.epochs)]
    if criterion == "taylor":
        cmd += ["--taylor-batches", str(a.taylor_batches)]
    cmd += ["--seed", str(a.seed), "--data", "imagefolder", "--data-dir", a.data_dir,
            "--threads", str(a.threads),
            "--device", "cpu", "--out", f"runs/criteria/{criterion}_{speedup:g}x_{mode}"]
    return shlex.join(cmd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="/tmp/tpvgg-bench/cifar10_vgg11bn_w025/last.pt")
    ap.add_argument("--data-dir", default="data/cifar10-jpeg")
    ap.add_argument("--criteria", default=",".join(CRITERIA))
    ap.add_argument("--speedups", default="4,2")
    ap.add_argument("--modes", default="one-shot,iterative")
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs per run (total)")
    ap.add_argument("--steps", type=int, default=3, help="iterative pruning steps")
    ap.add_argument("--taylor-batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine, 2 threads "
                         "oversubscribe and run several times slower)")
    ap.add_argument("--train-images", type=int, default=None,
                    help="smoke runs: use only this many training images")
    ap.add_argument("--seed", type=int, default=0,
                    help="seeds fine-tuning, the random criterion and the Taylor batches")
    ap.add_argument("--base", default=None,
                    help="label of a base other than the plain trained model (e.g. after "
                         "sparsity training), recorded in the results")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--replot", action="store_true",
                    help="only rewrite the table and plot from the results JSON")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.replot:
        with open(os.path.join(RESULTS, f"criteria_cifar{a.tag}.json")) as f:
            done = json.load(f)
        from tp_vgg.files import write_text

        write_text(os.path.join(RESULTS, f"criteria_cifar{a.tag}.md"), table(done))
        plot(done, os.path.join(RESULTS, f"criteria_cifar{a.tag}.png"))
        return 0

    from tp_vgg import count
    from tp_vgg.checkpoint import store as checkpoint
    from tp_vgg.data.datasets import DataConfig, load_data
    from tp_vgg.files import write_json, write_text
    from tp_vgg.pruning import graph as pruning
    from tp_vgg.pruning import iterative, targets
    from tp_vgg.pruning.criteria import training_gradients as _gradients
    from tp_vgg.train import loop as train
    from tp_vgg.train.evaluation import evaluate_on

    os.makedirs(RESULTS, exist_ok=True)
    out_json = os.path.join(RESULTS, f"criteria_cifar{a.tag}.json")
    done = json.load(open(out_json)) if os.path.exists(out_json) else {}
    runs = done.setdefault("runs", [])
    finished = {(r["criterion"], r["speedup"], r["mode"]) for r in runs}

    t0 = time.time()
    ck = checkpoint.load_checkpoint(a.checkpoint)
    data_cfg = DataConfig("imagefolder", data_dir=a.data_dir)
    data = load_data(data_cfg)
    if a.train_images:  # a seeded sample (the folders are sorted by class)
        idx = torch.randperm(len(data.train_labels),
                             generator=torch.Generator().manual_seed(0))[:a.train_images]
        data = dataclasses.replace(data, train_images=data.train_images[idx],
                                   train_labels=data.train_labels[idx])
    pre = train.resolve_preprocessing(data, ck.spec, ck.preprocessing)
    print(f"data loaded in {time.time() - t0:.0f}s", flush=True)
    base = ck.build()
    spec = ck.spec
    base_counts = count(base, spec)
    if "unpruned" not in done:
        t = time.time()
        done["unpruned"] = {"top1": evaluate_on(base, spec, data, pre, device="cpu").top1,
                            "macs": base_counts.macs, "params": base_counts.params,
                            "eval_s": time.time() - t}
    base.to("cpu")
    ft_cfg = train.TrainConfig(lr=train.OPTIMIZERS.get("sgd").lr * 0.2, warmup_epochs=0.0,
                               device="cpu", progress="plain", seed=a.seed)
    done["setup"] = {
        "checkpoint": a.checkpoint, "checkpoint_meta": {k: ck.meta.get(k) for k in
                                                        ("epoch", "test_top1", "dataset")},
        "data": dataclasses.asdict(data_cfg), "train_images": len(data.train_labels),
        "test_images": len(data.test_labels), "finetune": ft_cfg.resolved().to_dict(),
        "epochs": a.epochs, "steps": a.steps, "taylor_batches": a.taylor_batches,
        "threads": a.threads, "seed": a.seed, "base": a.base, "torch": torch.__version__, "machine": platform.machine(),
        "cpus": os.cpu_count(), "argv": sys.argv,
    }

    def evaluate(m):
        top1 = evaluate_on(m, spec, data, pre, device="cpu").top1
        m.to("cpu", memory_format=torch.contiguous_format)
        return top1

    def finetune(m, epochs):
        res = train.fit(m, spec, data, dataclasses.replace(ft_cfg, epochs=epochs), None,
                        preprocessing=pre, command="finetune",
                        log=lambda s: print("    " + s, flush=True))
        m.to("cpu", memory_format=torch.contiguous_format)
        return res.final.top1

    for speedup in [float(s) for s in a.speedups.split(",")]:
        for mode in a.modes.split(","):
            for criterion in a.criteria.split(","):
                if (criterion, speedup, mode) in finished:
                    continue
                t = time.time()
                model = ck.build()
                grads = (_gradients(data, pre, spec, a.taylor_batches, a.seed)
                         if criterion == "taylor" else None)
                cfg, plan = targets.solve(model, spec,
                                          pruning.PruneConfig(importance=criterion, seed=a.seed),
                                          targets.Target(speedup=speedup), gradients=grads)
                print(f"{criterion} {speedup:g}x {mode}: ratio {cfg.ratio}", flush=True)
                sched = None
                if mode == "iterative":
                    cfg = dataclasses.replace(cfg, iterative_steps=a.steps)
                    sched = iterative.Schedule(spec, a.steps, 1, finetune=finetune,
                                               evaluate=evaluate,
                                               log=lambda s: print("  " + s, flush=True))
                result = pruning.prune(model, spec, cfg, between_steps=sched, gradients=grads)
                c = count(model, spec)
                pruned = evaluate(model)
                final_epochs = a.epochs - (a.steps - 1 if mode == "iterative" else 0)
                top1 = finetune(model, final_epochs)
                if sched is not None:
                    sched.finish(model, pruned, final_epochs, top1)
                rec = {"criterion": criterion, "speedup": speedup, "mode": mode,
                       "ratio": cfg.ratio, "macs": c.macs, "params": c.params,
                       "reached_speedup": base_counts.macs / c.macs,
                       "top1_pruned": pruned, "top1": top1,
                       "finetune_epochs_total": a.epochs, "seconds": time.time() - t,
                       "threads": a.threads, "seed": a.seed,
                       "notes": result.notes, "command": cli_command(a, criterion, speedup, mode)}
                if sched is not None:
                    rec["schedule"] = sched.to_dict()
                print(f"  -> {c.macs} MACs ({rec['reached_speedup']:.2f}x), top-1 pruned "
                      f"{100 * pruned:.2f}%, fine-tuned {100 * top1:.2f}% "
                      f"({rec['seconds']:.0f}s)", flush=True)
                runs.append(rec)
                write_json(out_json, done)
                write_text(os.path.join(RESULTS, f"criteria_cifar{a.tag}.md"), table(done))
                plot(done, os.path.join(RESULTS, f"criteria_cifar{a.tag}.png"))
    print(table(done))
    return 0


def table(done: dict) -> str:
    base = done["unpruned"]
    lines = [f"Unpruned: top-1 {100 * base['top1']:.2f}%, {base['macs'] / 1e6:.2f}M MACs, "
             f"{base['params'] / 1e6:.3f}M params.", "",
             "| criterion | target | MACs | one-shot top-1 (pruned -> fine-tuned) | "
             "iterative top-1 (last step -> fine-tuned) |",
             "|---|---|---|---|---|"]
    by = {(r["criterion"], r["speedup"], r["mode"]): r for r in done["runs"]}
    for speedup in sorted({r["speedup"] for r in done["runs"]}, reverse=True):
        for criterion in CRITERIA:
            cells = []
            macs = None
            for mode in ("one-shot", "iterative"):
                r = by.get((criterion, speedup, mode))
                if r is None:
                    cells.append("-")
                    continue
                macs = r["macs"]
                cells.append(f"{100 * r['top1_pruned']:.2f} -> **{100 * r['top1']:.2f}** "
                             f"({100 * (r['top1'] - base['top1']):+.2f})")
            if macs is None:
                continue
            lines.append(f"| {criterion} | {speedup:g}x | {macs / 1e6:.2f}M "
                         f"({base['macs'] / macs:.2f}x) | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def plot(done: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = dict(zip(CRITERIA, plt.get_cmap("tab10").colors))
    base = done["unpruned"]
    ax.scatter([base["macs"] / 1e6], [100 * base["top1"]], marker="*", s=160, color="black",
               label="unpruned", zorder=3)
    for criterion in CRITERIA:
        for mode, marker, fill in (("one-shot", "o", True), ("iterative", "s", False)):
            rs = sorted((r for r in done["runs"] if r["criterion"] == criterion and r["mode"] == mode),
                        key=lambda r: r["macs"])
            if not rs:
                continue
            # iterative points sit slightly right of their (equal) MACs so both stay visible
            dx = 1.015 if mode == "iterative" else 1.0
            ax.plot([r["macs"] / 1e6 * dx for r in rs], [100 * r["top1"] for r in rs],
                    marker=marker, linestyle="-" if fill else ":", color=colors[criterion],
                    markerfacecolor=colors[criterion] if fill else "white",
                    label=f"{criterion} {mode}")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v in (2, 3, 5) else ""))
    ax.set_xlabel("MACs (millions, log scale; 1 MAC = one multiply-add = fvcore's 'flop')")
    ax.set_ylabel("CIFAR-10 test top-1 after fine-tuning (%)")
    s = done.get("setup", {})
    ax.set_title(f"cifar_vgg11_bn --width 0.25: criteria at equal MACs, "
                 f"{s.get('epochs', '?')} fine-tuning epochs", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    fig.tight_layout()
    from tp_vgg.files import write_with

    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
