"""Fine-tune a pruned model in your own plain PyTorch loop, then save it as a tp-vgg checkpoint.

tp-vgg's pruned model is an ordinary ``nn.Module``: train it with any optimizer and loss. The
data here are tp-vgg's in-memory uint8 tensors (``load_data``: N x C x H x W, no torchvision
transforms), normalized by hand with the mean/std the model is recorded with (or the data's).
``tp_vgg.save(path, model, preprocessing=...)`` keeps that normalization with the weights, and
``tp_vgg.load`` gives back the same model. Library calls only.

    python examples/own_training_loop.py --smoke                   # seconds: 10 steps on digits
    python examples/own_training_loop.py                           # 5 epochs on digits
    python examples/own_training_loop.py --checkpoint runs/examples/api/pruned.pt \\
        --data-dir data/cifar10-jpeg                               # a pruned checkpoint, CIFAR

Prints the loss and test top-1 per epoch; writes OUT/finetuned.pt (OUT: --out, default
runs/examples/own_training_loop).
"""

import argparse
import os

import torch
import torch.nn as nn

import tp_vgg
from tp_vgg.data.datasets import load_data
from tp_vgg.train.evaluation import resolve_preprocessing

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--smoke", action="store_true", help="a few batches of digits: seconds")
ap.add_argument("--checkpoint", help="a (pruned) tp-vgg checkpoint; default: build and prune one")
ap.add_argument("--data-dir", help="an image folder (train/<class>/, test/<class>/); "
                                   "default: the bundled digits")
ap.add_argument("--epochs", type=int, default=5)
ap.add_argument("--lr", type=float, default=0.05)
ap.add_argument("--batch-size", type=int, default=64)
ap.add_argument("--out", default="runs/examples/own_training_loop")
args = ap.parse_args()
steps = 10 if args.smoke else None  # --smoke: 10 batches in all
epochs = 1 if args.smoke else args.epochs

if args.checkpoint:
    model = tp_vgg.load(args.checkpoint)
else:
    model = tp_vgg.build_model(tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.125 if args.smoke else 0.25))
    tp_vgg.prune(model, tp_vgg.PruneConfig(ratio=0.5))
spec = model.tp_vgg_record.spec

cfg = (tp_vgg.DataConfig("imagefolder", data_dir=args.data_dir, loader="memory",
                         train_images=5000, test_images=1000)
       if args.data_dir and not args.smoke else tp_vgg.DataConfig("digits"))
data = load_data(cfg)  # ImageData: .train_images uint8 N x C x H x W, .train_labels int64 N
# the mean/std the checkpoint records, else the training images' (in [0, 1] units)
pre = resolve_preprocessing(data, spec, model.tp_vgg_record.preprocessing)
device = "cuda" if torch.cuda.is_available() else "cpu"
mean = torch.tensor(pre.mean, device=device).view(1, -1, 1, 1)
std = torch.tensor(pre.std, device=device).view(1, -1, 1, 1)


def inputs(images):  # uint8 -> normalized float, on the device
    return (images.to(device).float() / 255 - mean) / std


@torch.no_grad()
def top1(m):
    m.eval()
    hits = sum((m(inputs(data.test_images[i:i + 256])).argmax(1).cpu()
                == data.test_labels[i:i + 256]).sum().item()
               for i in range(0, len(data.test_labels), 256))
    return hits / len(data.test_labels)


# --- your loop ---------------------------------------------------------------------------------
model.to(device)
opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
loss_fn = nn.CrossEntropyLoss()
gen = torch.Generator().manual_seed(0)
print(f"top-1 before: {top1(model):.2%} ({len(data.test_labels)} test images)")
done = 0
for epoch in range(epochs):
    model.train()
    order = torch.randperm(len(data.train_labels), generator=gen)
    for i in range(0, len(order), args.batch_size):
        idx = order[i:i + args.batch_size]
        x, y = inputs(data.train_images[idx]), data.train_labels[idx].to(device)
        if data.flip:  # random horizontal flips, where the data allow them (not digits)
            x = torch.where(torch.rand(len(x), 1, 1, 1, device=device) < 0.5, x.flip(3), x)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += 1
        if steps and done >= steps:
            break
    print(f"epoch {epoch + 1}: loss {loss.item():.3f}, top-1 {top1(model):.2%}")
# -----------------------------------------------------------------------------------------------

model.cpu().eval()
os.makedirs(args.out, exist_ok=True)
path = os.path.join(args.out, "finetuned.pt")
tp_vgg.save(path, model, preprocessing=pre)  # spec and pruning history from the model
loaded = tp_vgg.load(path)
mine, theirs = model.state_dict(), loaded.state_dict()
assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
x = (data.test_images[:8].float() / 255 - mean.cpu()) / std.cpu()
with torch.no_grad():
    assert torch.equal(model(x), loaded(x))
print(f"wrote {path}: loads back with the same {len(mine)} tensors, the same outputs, "
      f"{len(loaded.tp_vgg_record.history)} pruned layers in its history, normalization mean "
      f"{[round(m, 4) for m in loaded.tp_vgg_record.preprocessing.mean]}")
