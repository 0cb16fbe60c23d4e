"""Your own VGG file with your own weights: prune it, save it, and load it back with consent.

The model is ``examples/my_vgg.py:my_vgg`` (``path/to/file.py:factory``), the weights a plain
``state_dict`` file as your own training leaves it (``--weights``; without it this script makes
one: trained a few epochs, or random weights with ``--smoke``). Library calls only.

    python examples/own_vgg.py --smoke                          # seconds, random weights, digits
    python examples/own_vgg.py                                  # trains 3 epochs on digits first
    python examples/own_vgg.py --weights my_weights.pt --data-dir data/cifar10-jpeg

Prints MACs/params before and after, what ``tp_vgg.load`` says without consent; writes
OUT/my_vgg_weights.pt (when made here) and OUT/my_vgg_pruned.pt (OUT: --out, default
runs/examples/own_vgg).
"""

import argparse
import os

import torch

import tp_vgg
from tp_vgg.data.datasets import load_data
from tp_vgg.train import loop

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--smoke", action="store_true", help="random weights, tiny data: seconds")
ap.add_argument("--weights", help="a state_dict of my_vgg (torch.save(model.state_dict(), PATH))")
ap.add_argument("--data-dir", help="an image folder (train/<class>/, test/<class>/); "
                                   "default: the bundled digits")
ap.add_argument("--train-epochs", type=int, default=3, help="training epochs without --weights")
ap.add_argument("--ratio", type=float, default=0.5, help="channels removed per layer")
ap.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs after pruning")
ap.add_argument("--out", default="runs/examples/own_vgg")
args = ap.parse_args()
os.makedirs(args.out, exist_ok=True)

if args.data_dir and not args.smoke:
    data = tp_vgg.DataConfig("imagefolder", data_dir=args.data_dir, train_images=5000,
                             test_images=1000)
else:
    data = tp_vgg.DataConfig("digits", **(dict(train_images=256, test_images=128)
                                          if args.smoke else {}))

# "examples/my_vgg.py:my_vgg" from the repository root; given here as an absolute path, so that
# this script runs from any folder (tp-vgg's ModelSource and the CLI make a file path absolute
# themselves: a checkpoint then names the file wherever it is read).
factory = os.path.join(os.path.dirname(os.path.abspath(__file__)), "my_vgg.py") + ":my_vgg"
spec = tp_vgg.ModelSpec(factory, num_classes=10)  # a user factory's input: 32x32 RGB by default

weights = args.weights
if weights is None:  # stand in for the weights your own training wrote
    weights = os.path.join(args.out, "my_vgg_weights.pt")
    model = tp_vgg.build_model(spec)
    if not args.smoke:
        loop.fit(model, spec, load_data(data), tp_vgg.TrainConfig(epochs=args.train_epochs,
                                                                  progress="none"))
    torch.save(model.state_dict(), weights)
    print(f"wrote {weights} ({'random' if args.smoke else f'{args.train_epochs} epochs'})")

# Your file, your weights. build_model runs my_vgg.py: you named it, so that is your call. (In a
# whole prune job the same is tp_vgg.ModelSource(spec=spec, weights_file=weights).)
model = tp_vgg.build_model(spec)
model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
before = tp_vgg.count(model)
tp_vgg.prune(model, tp_vgg.PruneConfig(ratio=args.ratio))
after = tp_vgg.count(model)
print(f"MACs {before.macs:,} -> {after.macs:,} (1 MAC = one multiply-add), "
      f"params {before.params:,} -> {after.params:,}")
if args.epochs:
    fit = tp_vgg.finetune(model, data, epochs=args.epochs)
    print(f"top-1 after {args.epochs} fine-tuning epoch(s): {fit.final.top1:.2%}")
path = os.path.join(args.out, "my_vgg_pruned.pt")
tp_vgg.save(path, model)  # records the factory, the file's SHA-256 and the pruning history

# Loading rebuilds the model by running the factory the checkpoint names -- code. A checkpoint
# from someone else could name any file or module, so tp_vgg.load runs none without consent (a
# zoo model's checkpoint needs none), and refuses a file changed since the checkpoint was written
# unless allow_changed_model_code=True.
try:
    tp_vgg.load(path)
    raise SystemExit("expected tp_vgg.load to ask for consent")
except tp_vgg.UserError as e:
    print(f"tp_vgg.load(path) without consent: {e}")
loaded = tp_vgg.load(path, trust_model_code=True)  # I wrote my_vgg.py: run it
assert tp_vgg.count(loaded).macs == after.macs
mine, theirs = model.state_dict(), loaded.state_dict()
assert all(torch.equal(mine[k], theirs[k]) for k in mine) and mine.keys() == theirs.keys()
print(f"wrote {path}; tp_vgg.load(path, trust_model_code=True) gives the same pruned model")
