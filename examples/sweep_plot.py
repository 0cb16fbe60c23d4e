"""Accuracy against MACs: prune one trained model at several ratios and plot the trade-off.

Each ratio prunes a copy of the same model (``tp_vgg.prune`` on ``copy.deepcopy``), counts it and,
with data, fine-tunes it briefly and scores its test top-1; ``--no-data`` plots params against
MACs instead. The model is a ``--checkpoint`` or a 1/4-width VGG-11 trained here first. Library
calls only (``tp_vgg.sweep(job, ratios, out_dir)`` is the whole job per ratio, as `tp-vgg sweep`).

    python examples/sweep_plot.py --smoke                          # seconds, digits
    python examples/sweep_plot.py --data-dir data/cifar10-jpeg     # 5,000 CIFAR images, minutes
    python examples/sweep_plot.py --no-data --ratios 0.2,0.4,0.6,0.8

Prints one line per ratio; writes OUT/sweep.csv and OUT/sweep.png (OUT: --out, default
runs/examples/sweep_plot).
"""

import argparse
import copy
import csv
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

import tp_vgg  # noqa: E402
from tp_vgg.data.datasets import load_data  # noqa: E402
from tp_vgg.train import evaluation, loop  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--smoke", action="store_true", help="tiny model and data: seconds")
ap.add_argument("--checkpoint", help="a trained tp-vgg checkpoint (default: train one here)")
ap.add_argument("--data-dir", help="an image folder (train/<class>/, test/<class>/); "
                                   "default: the bundled digits")
ap.add_argument("--no-data", action="store_true", help="count only: params against MACs")
ap.add_argument("--ratios", default="0.25,0.5,0.75", help="comma-separated pruning ratios")
ap.add_argument("--train-epochs", type=int, default=5, help="training the model, no --checkpoint")
ap.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs per ratio")
ap.add_argument("--out", default="runs/examples/sweep_plot")
args = ap.parse_args()
os.makedirs(args.out, exist_ok=True)
ratios = [float(r) for r in args.ratios.split(",")]

data = None
if not args.no_data:
    if args.data_dir and not args.smoke:
        cfg = tp_vgg.DataConfig("imagefolder", data_dir=args.data_dir, train_images=5000,
                                test_images=1000)
    else:
        cfg = tp_vgg.DataConfig("digits")  # 1,438 training images, seconds an epoch
    data = load_data(cfg)

if args.checkpoint:
    base = tp_vgg.load(args.checkpoint)
else:
    base = tp_vgg.build_model(tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.125 if args.smoke else 0.25))
    if data is not None:  # a trained model to prune (a random one's accuracy says nothing)
        spec = base.tp_vgg_record.spec
        epochs = 2 if args.smoke else args.train_epochs
        loop.fit(base, spec, data, tp_vgg.TrainConfig(epochs=epochs, warmup_epochs=0,
                                                      progress="none"))
        base.tp_vgg_record.preprocessing = evaluation.resolve_preprocessing(data, spec)
spec = base.tp_vgg_record.spec


def top1(model):
    return evaluation.top1(model, spec, data, model.tp_vgg_record.preprocessing)


full = tp_vgg.count(base)
rows = [dict(ratio=0.0, macs=full.macs, params=full.params,
             top1=top1(base) if data is not None else None)]
for ratio in ratios:
    model = copy.deepcopy(base)  # the copy carries its own spec and history
    tp_vgg.prune(model, tp_vgg.PruneConfig(ratio=ratio))
    c = tp_vgg.count(model)
    acc = None
    if data is not None:
        acc = (tp_vgg.finetune(model, data, epochs=args.epochs, log=lambda s: None).final.top1
               if args.epochs else top1(model))
    rows.append(dict(ratio=ratio, macs=c.macs, params=c.params, top1=acc))

print(f"{'ratio':>5}  {'MACs':>12}  {'params':>10}  {'speed-up':>8}  top-1")
for r in rows:
    r["macs_reduction"] = round(full.macs / r["macs"], 3)
    print(f"{r['ratio']:>5.2f}  {r['macs']:>12,}  {r['params']:>10,}  {r['macs_reduction']:>7.2f}x  "
          + (f"{r['top1']:.2%}" if r["top1"] is not None else "-"))
print("MACs: 1 MAC = one multiply-add (fvcore's 'flop'), at batch 1")

csv_path = os.path.join(args.out, "sweep.csv")
with open(csv_path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["ratio", "macs", "params", "macs_reduction", "top1"])
    w.writeheader()
    w.writerows(rows)

fig, ax = plt.subplots(figsize=(5.5, 3.8))
xs = [r["macs"] / 1e6 for r in rows]
ys = [r["top1"] * 100 for r in rows] if data is not None else [r["params"] / 1e6 for r in rows]
ax.plot(xs, ys, "o-")
for r, x, y in zip(rows, xs, ys):
    ax.annotate(f"ratio {r['ratio']:g}" if r["ratio"] else "unpruned", (x, y),
                textcoords="offset points", xytext=(4, 4), fontsize=8)
ax.set_xlabel("MMACs per image (1 MAC = one multiply-add)")
ax.set_ylabel("test top-1 (%)" if data is not None else "parameters (M)")
ax.set_title(f"{spec.name.rpartition('/')[2]} pruned at each ratio"
             + (f", {args.epochs} fine-tuning epoch(s)" if data is not None and args.epochs else ""),
             fontsize=10)
ax.grid(alpha=0.3)
ax.margins(x=0.15, y=0.1)
fig.tight_layout()
png_path = os.path.join(args.out, "sweep.png")
fig.savefig(png_path, dpi=120)
print(f"wrote {csv_path} and {png_path}")
