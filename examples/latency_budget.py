"""Prune to a measured latency budget: "make this VGG run in X ms on this machine".

The job times the original in its deployment form (BN folded, channels-last) with the runtime,
batch size and threads asked for, builds a per-layer latency table (cached under
OUT/latency_cache), removes channels by importance per predicted millisecond saved, and measures
the result -- ``tp_vgg.PruneJob(..., target=tp_vgg.Target(latency=tp_vgg.LatencyBudget(ms=...)))``
run by ``tp_vgg.run``. The budget is ``--ms``, or ``--fraction`` of the original's measured
latency. Library calls only.

    python examples/latency_budget.py --smoke                       # seconds, no data
    python examples/latency_budget.py                               # 1/2-width VGG-11, digits
    python examples/latency_budget.py --checkpoint runs/base/best.pt --data-dir data/cifar10-jpeg

Prints the measured ms before/after and MACs; writes OUT/run/pruned.pt and OUT/run/report.json
(OUT: --out, default runs/examples/latency_budget). Timings vary with the machine's load.
"""

import argparse
import os

import tp_vgg
from tp_vgg.latency.budget import measured_ms

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--smoke", action="store_true", help="tiny model, few repeats, no data")
ap.add_argument("--checkpoint", help="a trained tp-vgg checkpoint (default: a new 1/2-width VGG-11)")
ap.add_argument("--ms", type=float, help="the budget in ms per batch (default: --fraction)")
ap.add_argument("--fraction", type=float,
                help="budget = this x the original's ms (default 0.5; 0.8 with --smoke, whose tiny "
                     "model's fastest plan is near 0.6x, so a loaded machine still reaches it)")
ap.add_argument("--batch", type=int, default=8, help="batch size the latency is measured at")
ap.add_argument("--threads", type=int, default=1, help="CPU threads the latency is measured with")
ap.add_argument("--runtime", default="torch", help="torch or onnxruntime")
ap.add_argument("--data-dir", help="an image folder (train/<class>/, test/<class>/) to fine-tune "
                                   "on; default: the bundled digits")
ap.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs (not with --smoke)")
ap.add_argument("--out", default="runs/examples/latency_budget")
args = ap.parse_args()

if args.checkpoint:
    source = tp_vgg.ModelSource(checkpoint=args.checkpoint)
    original_model = tp_vgg.load(args.checkpoint)
    spec = original_model.tp_vgg_record.spec
else:
    spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.25 if args.smoke else 0.5).resolved()
    source = tp_vgg.ModelSource(spec=spec)
    original_model = tp_vgg.build_model(spec)
# --smoke: few repeats, a coarse table (enough for a batch big enough to be more than overhead)
fast = dict(repeats=5, warmup=1, table_min_ms=0.5) if args.smoke else {}
budget = tp_vgg.LatencyBudget(ms=1.0, runtime=args.runtime, batch_size=args.batch,
                              threads=args.threads, device="cpu",
                              cache_dir=os.path.join(args.out, "latency_cache"), **fast)
if args.fraction is None:
    args.fraction = 0.8 if args.smoke else 0.5
if args.ms is None:  # measure the original first, as the job will, and ask for a fraction of it
    original = measured_ms(original_model, spec, budget.config(spec))
    budget.ms = round(args.fraction * original, 4)
    print(f"original: {original:.3f} ms per batch of {budget.config(spec).batch_sizes[0]}; "
          f"budget {budget.ms:g} ms ({args.fraction:g}x)")
else:
    budget.ms = args.ms

finetune = None
if not args.smoke:  # recover accuracy: BN re-estimated, then a short fine-tuning
    data = (tp_vgg.DataConfig("imagefolder", data_dir=args.data_dir, train_images=5000,
                              test_images=1000) if args.data_dir else tp_vgg.DataConfig("digits"))
    finetune = tp_vgg.FinetuneConfig(data=data, epochs=args.epochs,
                                     train=tp_vgg.finetuning(progress="none"))

job = tp_vgg.PruneJob(source=source, prune=tp_vgg.PruneConfig(),
                      target=tp_vgg.Target(latency=budget), finetune=finetune, device="cpu")
result = tp_vgg.run(job, out_dir=os.path.join(args.out, "run"), log=lambda s: None)

t = result.report["target"]
print(f"measured: {t['original_ms']:.3f} ms -> {t['measured_ms']:.3f} ms per batch of "
      f"{t['batch_size']} ({t['runtime']}, {t['threads']} thread(s)): {t['speedup']:.2f}x faster, "
      f"budget {t['target_ms']:g} ms {'reached' if t['reached'] else 'NOT reached'}")
print(f"MACs {result.before.macs:,} -> {result.after.macs:,} (1 MAC = one multiply-add), "
      f"params {result.before.params:,} -> {result.after.params:,}")
if result.accuracy:  # test top-1 at each stage: before, pruned, BN re-estimated, fine-tuned
    print("top-1: " + ", ".join(f"{k} {v:.2%}" for k, v in result.accuracy.items() if v is not None)
          + ("" if args.checkpoint else " (a new model's weights are random: --checkpoint "
                                        "prunes a trained one)"))
print(f"wrote {os.path.join(args.out, 'run', 'pruned.pt')} and report.json")
