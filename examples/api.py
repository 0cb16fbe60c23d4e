"""The 10-line API: build (or load) a VGG, prune half its channels, count, fine-tune, save, load.

A model tp-vgg built or loaded keeps its spec and pruning history (``model.tp_vgg_record``), so
``prune``, ``count``, ``finetune`` and ``save`` need nothing but the model. Library calls only.

    python examples/api.py --smoke                     # seconds: 1/8-width VGG-11 on digits
    python examples/api.py                             # 1/4-width VGG-11 on all of digits
    python examples/api.py --data-dir data/cifar10-jpeg --checkpoint runs/base/best.pt

Prints MACs and params before/after and the fine-tuned top-1; writes OUT/pruned.pt
(OUT: --out, default runs/examples/api), loads it back and checks MACs and weights are equal.
"""

import argparse
import os

import torch

import tp_vgg

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--smoke", action="store_true", help="tiny model and data: runs in seconds")
ap.add_argument("--checkpoint", help="a tp-vgg checkpoint to prune instead of a new model")
ap.add_argument("--data-dir", help="an image folder (train/<class>/, test/<class>/); "
                                   "default: the bundled digits")
ap.add_argument("--ratio", type=float, default=0.5, help="channels removed per layer")
ap.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs")
ap.add_argument("--out", default="runs/examples/api")
args = ap.parse_args()

if args.data_dir and not args.smoke:  # a seeded sample of the folder keeps it modest
    data = tp_vgg.DataConfig("imagefolder", data_dir=args.data_dir, train_images=5000,
                             test_images=1000)
else:
    data = tp_vgg.DataConfig("digits", **(dict(train_images=256, test_images=128)
                                          if args.smoke else {}))

# --- the API --------------------------------------------------------------------------------
model = (tp_vgg.load(args.checkpoint) if args.checkpoint else
         tp_vgg.build_model(tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.125 if args.smoke else 0.25)))
before = tp_vgg.count(model)
tp_vgg.prune(model, tp_vgg.PruneConfig(ratio=args.ratio))
after = tp_vgg.count(model)
fit = tp_vgg.finetune(model, data, epochs=args.epochs)
path = os.path.join(args.out, "pruned.pt")
os.makedirs(args.out, exist_ok=True)
tp_vgg.save(path, model)
loaded = tp_vgg.load(path)
# ---------------------------------------------------------------------------------------------

print(f"MACs   {before.macs:>13,} -> {after.macs:>13,}  ({before.macs / after.macs:.2f}x fewer; "
      "1 MAC = one multiply-add, fvcore's 'flop')")
print(f"params {before.params:>13,} -> {after.params:>13,}  "
      f"({before.params / after.params:.2f}x fewer)")
print(f"top-1 after {args.epochs} fine-tuning epoch(s) on {data.name}: {fit.final.top1:.2%}"
      + ("" if args.checkpoint else " (a new model starts from random weights: --checkpoint "
                                    "prunes a trained one)"))

assert tp_vgg.count(loaded).macs == after.macs
mine, theirs = model.state_dict(), loaded.state_dict()
assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
print(f"wrote {path}; loaded back: same MACs and the same {len(mine)} tensors")
