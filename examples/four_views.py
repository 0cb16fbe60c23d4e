"""The four views of pruning on one model, with measured numbers (docs/tutorial.md).

Train a small CIFAR VGG, then from the same weights: structured L1, L2 and random pruning at one
ratio; unstructured magnitude pruning at the same parameter count; one-shot against iterative at
the same final widths. Every run is re-estimated (BatchNorm), fine-tuned the same epochs, counted
(fvcore: 1 MAC = one multiply-add) and timed interleaved in one session. Library calls only.

    python examples/four_views.py --data-dir data/cifar10-jpeg       # ~15 min on 2 cores
    python examples/four_views.py --smoke                            # digits, ~20 s

Writes OUT/four_views.json and OUT/four_views.png; ``--page docs/tutorial.md`` also rewrites the
page's generated part (between its ``four_views`` markers): what ``make tutorial`` runs.
"""

import argparse
import copy
import json
import os
import platform
import time

import torch
import torch.nn as nn

import tp_vgg
from tp_vgg.data.datasets import load_data
from tp_vgg.latency import timing
from tp_vgg.pruning.graph import output_layer_names
from tp_vgg.pruning import unstructured
from tp_vgg.report.summary import removed_channels
from tp_vgg.train import evaluation, loop

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--data-dir", help="CIFAR-10 as train/<class>/ and test/<class>/ image folders")
ap.add_argument("--smoke", action="store_true", help="tiny sizes on the bundled digits")
ap.add_argument("--ratio", type=float, default=0.5, help="channels removed per layer")
ap.add_argument("--base-epochs", type=int, default=15)
ap.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs of every run")
ap.add_argument("--train-images", type=int, default=25000)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--out", default="runs/examples/four_views")
ap.add_argument("--page", help="rewrite this markdown page's generated part")
a = ap.parse_args()
if a.smoke:
    a.base_epochs, a.epochs, a.train_images = 2, 1, 500
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
os.makedirs(a.out, exist_ok=True)
quiet = lambda s: None  # noqa: E731
t_start = time.time()

# 1. Data and a trained base model.
data_cfg = (tp_vgg.DataConfig("imagefolder", data_dir=a.data_dir, train_images=a.train_images,
                              subset_seed=a.seed)
            if a.data_dir and not a.smoke else
            tp_vgg.DataConfig("digits", train_images=a.train_images if a.smoke else None,
                              test_images=200 if a.smoke else None))
data = load_data(data_cfg)
spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.25, num_classes=data.num_classes)
base = tp_vgg.build_model(spec)
pre = evaluation.resolve_preprocessing(data, spec)
loop.fit(base, spec, data, tp_vgg.TrainConfig(epochs=a.base_epochs, seed=a.seed, progress="none"),
         preprocessing=pre, log=quiet)
base.to("cpu").eval()
base.tp_vgg_record.preprocessing = pre
top1 = lambda m: evaluation.top1(m, spec, data, pre, "cpu")  # noqa: E731
runs = {"base": {"model": base, "top1": top1(base)}}


def recover(model, after_step=None):
    """BN statistics re-estimated, then the same fine-tuning for every run."""
    evaluation.recalibrate_on(model, spec, data, pre, 5 if a.smoke else 50, device="cpu",
                              seed=a.seed)
    res = tp_vgg.finetune(model, data, a.epochs, seed=a.seed, log=quiet, after_step=after_step)
    return res.final.top1


# 2. Structured: the same ratio in every layer, three ways of choosing the channels.
for crit in ("l1", "l2", "random"):
    m = copy.deepcopy(base)
    res = tp_vgg.prune(m, tp_vgg.PruneConfig(ratio=a.ratio, importance=crit, seed=a.seed))
    runs[crit] = {"model": m, "top1_pruned": top1(m), "removed": removed_channels(res.history)}
    runs[crit]["top1"] = recover(m)

# 3. Unstructured: zero single weights, as many as structured L1 removed parameters.
l1 = runs["l1"]["model"]
sparsity = 1 - tp_vgg.count(l1).params / tp_vgg.count(base).params
m = copy.deepcopy(base)
mask = unstructured.magnitude_prune(m, sparsity, exclude=output_layer_names(m, spec, None))
runs["unstructured"] = {"model": m, "top1_pruned": top1(m), "sparsity": sparsity}
runs["unstructured"]["top1"] = recover(m, after_step=mask)
sp = unstructured.sparsity_report(m, tp_vgg.count(m))
runs["unstructured"].update(macs_nonzero=sp["macs_nonzero"], params_nonzero=sp["params_nonzero"])

# 4. Iterative: three steps to the same final widths, one fine-tuning epoch between steps.
m = copy.deepcopy(base)
tp_vgg.prune(m, tp_vgg.PruneConfig(ratio=a.ratio, importance="l1", iterative_steps=3),
             between_steps=lambda step, model: tp_vgg.finetune(model, data, 1, log=quiet))
assert tp_vgg.count(m).macs == tp_vgg.count(l1).macs  # the same final widths as one-shot
runs["iterative"] = {"model": m, "top1_pruned": top1(m)}
runs["iterative"]["top1"] = recover(m)

# 5. The transplant, checked: the pruned L1 model computes what the original computes with the
# removed channels zeroed (each conv's BatchNorm output, each hidden linear's output).
masked, hooks = copy.deepcopy(base).eval(), []
pruned_l1 = copy.deepcopy(base).eval()
res = tp_vgg.prune(pruned_l1, tp_vgg.PruneConfig(ratio=a.ratio, importance="l1"))
layers = dict(masked.named_modules())
for name, gone in removed_channels(res.history).items():
    idx = int(name.split(".")[1])
    after = layers[f"{name.split('.')[0]}.{idx + 1}"] if name.startswith("features") else layers[name]
    hooks.append(after.register_forward_hook(
        lambda mod, inp, out, g=torch.tensor(gone): out.index_fill(1, g, 0.0)))
x = spec.example_input(batch=8)
with torch.no_grad():
    diff = (masked(x) - pruned_l1(x)).abs().max().item()
kept = [i for i in range(base.features[0].out_channels) if i not in removed_channels(
    res.history)["features.0"]]  # the seed's hand transplant, done by the DependencyGraph:
copied = torch.equal(pruned_l1.features[0].weight, base.features[0].weight[kept])

# 6. Count and time every run in one interleaved session (BN folded, channels-last).
names = [n for n in runs if n != "base"]
lat = timing.compare_each(
    base, {n: runs[n]["model"] for n in names}, spec,
    tp_vgg.LatencyConfig(batch_sizes=(64,), channels_last=True, fuse_bn=True,
                         repeats=3 if a.smoke else 10,
                         threads=a.threads),
    tp_vgg.count(base).macs, {n: tp_vgg.count(runs[n]["model"]).macs for n in names})
for n, r in runs.items():
    c = tp_vgg.count(r.pop("model"))
    r.update(macs=c.macs, params=c.params)
    if n == "base":
        r["ms"] = next(iter(lat.values())).comparisons[0].original.median_ms
    else:
        r["ms"] = lat[n].comparisons[0].pruned.median_ms
out = {"runs": runs, "masked_max_abs_diff": diff, "first_conv_copied": copied,
       "ratio": a.ratio, "epochs": a.epochs, "base_epochs": a.base_epochs, "data": data.name,
       "train_images": len(data.train_labels), "test_images": len(data.test_labels),
       "seed": a.seed, "threads": a.threads, "seconds": round(time.time() - t_start),
       "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
       "date": time.strftime("%Y-%m-%d"), "command": "python examples/four_views.py " + (
           "--smoke" if a.smoke else f"--data-dir {a.data_dir} --threads {a.threads}") + (
           f" --out {a.out} --page {a.page}" if a.page else "")}
with open(os.path.join(a.out, "four_views.json"), "w") as f:
    json.dump(out, f, indent=1)

# 7. One plot: top-1 against measured latency; and how alike the structured choices were.
import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
for n, r in runs.items():
    ax.scatter(r["ms"], 100 * r["top1"], s=40)
    ax.annotate(n, (r["ms"], 100 * r["top1"]), textcoords="offset points", xytext=(5, 3))
ax.set(xlabel="measured ms per batch of 64 (CPU)", ylabel="test top-1 %",
       title=f"after {a.epochs} fine-tuning epochs each")
layer_names = [n for n, _ in base.named_modules() if n in runs["l1"]["removed"]]
jac = lambda p, q: len(set(p) & set(q)) / max(len(set(p) | set(q)), 1)  # noqa: E731
for k, other in enumerate(("l2", "random")):
    bx.bar([i + 0.4 * k for i in range(len(layer_names))],
           [jac(runs["l1"]["removed"][l], runs[other]["removed"][l]) for l in layer_names],
           width=0.4, label=f"{other} vs l1")
bx.set_xticks(range(len(layer_names)), layer_names, rotation=60, fontsize=7)
bx.set(ylabel="Jaccard overlap of removed channels", title="which channels went")
bx.legend()
fig.tight_layout()
fig.savefig(os.path.join(a.out, "four_views.png"), dpi=110)

# 8. The page's generated part (make tutorial).
pct = lambda v: f"{100 * v:.2f} %"  # noqa: E731
rows = ["| run | top-1 pruned | top-1 fine-tuned (base: trained) | MACs | params | ms (batch 64) |",
        "|---|---|---|---|---|---|"]
for n, r in runs.items():
    macs = f"{r['macs'] / 1e6:.2f} M" + (f" dense ({r['macs_nonzero'] / 1e6:.2f} M nonzero)"
                                          if "macs_nonzero" in r else "")
    rows.append(f"| {n} | {pct(r['top1_pruned']) if 'top1_pruned' in r else '-'} | "
                f"{pct(r['top1'])} | {macs} | {r['params'] / 1e3:.1f} K" + (
                    f" ({r['params_nonzero'] / 1e3:.1f} K nonzero)" if "params_nonzero" in r
                    else "") + f" | {r['ms']:.2f} |")
rows += ["", "| layer | removed | l1 ∩ l2 | l1 ∩ random |", "|---|---|---|---|"]
for l in layer_names:
    g = set(runs["l1"]["removed"][l])
    rows.append(f"| {l} | {len(g)} | {len(g & set(runs['l2']['removed'][l]))} | "
                f"{len(g & set(runs['random']['removed'][l]))} |")
rows += ["", f"Masked-equivalence check: the pruned L1 model against the original with the "
         f"removed channels zeroed, max |difference| of the logits {diff:.1e}; first conv's "
         f"kept filters copied exactly: {copied}.", "",
         f"Command: `{out['command']}` ({out['machine']}, torch {out['torch']}, "
         f"{out['date']}, seed {a.seed}, {out['seconds']} s). {data.name}: "
         f"{out['train_images']} training / {out['test_images']} test images; base "
         f"{a.base_epochs} epochs; every run fine-tuned {a.epochs} epochs (iterative: 1 more "
         "between each of its 3 steps). MACs: fvcore, "
         "1 MAC = one multiply-add."]
if a.page:
    text = open(a.page).read()
    begin, end = "<!-- four_views:begin -->", "<!-- four_views:end -->"
    head, rest = text.split(begin)
    with open(a.page + ".tmp", "w") as f:
        f.write(head + begin + "\n" + "\n".join(rows) + "\n" + end + rest.split(end)[1])
    os.replace(a.page + ".tmp", a.page)
print("\n".join(rows))
