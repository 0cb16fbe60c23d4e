"""What ``--search N`` costs per candidate, and how well the cheap screen ranks them.

On a base checkpoint (default: the VGG-16 w0.5 frontier base) at ``--speedup`` fewer MACs:

1. the search as ``tp-vgg prune --search N`` runs it (``tp_vgg.search.widths.Search.run``
   without finalists: candidates planned on width vectors, pruned unchecked, BN re-estimated on
   one cached batch set, screened on ``--screen`` held-out images, the best ``--rescore`` and
   uniform rescored on the whole slice), timed, with the per-stage seconds;
2. on ``--agreement K`` of its candidates (spread over the screen ranking), the full-slice
   score as well: the Spearman correlation of the screen with the full-slice score, and
   whether the screen's top ``--rescore`` hold the full-slice best (the reference: the score
   before screening, ``--reference-bn`` BN batches on the whole slice).

    python benchmarks/search_cost.py --base runs/frontier_cifar_vgg16_bn_w0.5/base/last.pt \\
        --data-dir data/cifar10-jpeg --threads 2

Writes benchmarks/results/search_cost.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="runs/frontier_vgg16_w05/base/last.pt")
    ap.add_argument("--data-dir", default="data/cifar10-jpeg")
    ap.add_argument("--speedup", type=float, default=4.0)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--screen", type=int, default=None, help="default: the search's")
    ap.add_argument("--rescore", type=int, default=None, help="default: the search's")
    ap.add_argument("--bn-batches", type=int, default=None, help="default: the search's")
    ap.add_argument("--agreement", type=int, default=40)
    ap.add_argument("--reference-bn", type=int, default=20,
                    help="the reference score's BN batches (on the whole slice)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=None, help="smoke runs: a sample")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "search_cost.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from tp_vgg.checkpoint import store
    from tp_vgg.data.datasets import DataConfig, load_data
    from tp_vgg.files import write_json
    from tp_vgg.models import counting
    from tp_vgg.pruning import graph as pruning
    from tp_vgg.pruning import targets
    from tp_vgg.search import widths
    from tp_vgg.train import evaluation
    from tp_vgg.train.config import finetuning

    ck = store.load_checkpoint(a.base)
    spec, model = ck.spec, ck.build().eval()
    data = load_data(DataConfig("imagefolder", data_dir=a.data_dir, train_images=a.train_images,
                                test_images=100))
    pre = evaluation.resolve_preprocessing(data, spec, ck.preprocessing)
    cfg, _ = targets.solve(model, spec, pruning.PruneConfig(importance="l1"),
                           targets.Target(speedup=a.speedup))
    goal = targets.Target(speedup=a.speedup).goal(counting.count(model, spec).macs)
    space, budget = widths.mac_budget(model, spec, cfg, goal)
    given = {k: v for k, v in (("screen", a.screen), ("rescore", a.rescore),
                               ("bn_batches", a.bn_batches)) if v is not None}
    scfg = widths.SearchConfig(candidates=a.candidates, finalists=0, finalist_epochs=0,
                               seed=0, **given)
    s = widths.Search(model, spec, cfg, space, budget, scfg, data, pre,
                      finetuning(device="cpu"), device="cpu", log=print)
    t = time.perf_counter()
    _, rep = s.run()
    total = time.perf_counter() - t
    rows = sorted(s.rows, key=lambda r: (-r.screen, r.id))
    k = min(a.agreement, len(rows))
    pick = [rows[round(i * (len(rows) - 1) / max(k - 1, 1))] for i in range(k)]
    # the reference: the search's score before screening (--reference-bn batches, the whole
    # slice), on the same held-out slice
    ref = widths.Search(model, spec, cfg, space, budget, widths.SearchConfig(
        candidates=1, bn_batches=a.reference_bn, screen=0, seed=0), data, pre,
        finetuning(device="cpu"), device="cpu", log=print)
    t = time.perf_counter()
    full = [ref._heldout_top1(ref._adapt(ref._prune(r.kept, check=False))) for r in pick]
    agreement_s = time.perf_counter() - t
    best_full = max(range(k), key=lambda i: full[i])
    top = {r.id for r in rows[:scfg.rescore]}
    out = {
        "base": a.base, "base_epoch": ck.meta.get("epoch"), "model": spec.name, "width": spec.width, "speedup": a.speedup,
        "candidates": a.candidates, "scored": rep["scored"], "rejected": rep["rejected"],
        "heldout_images": rep["heldout_images"], "screen_images": rep["screen_images"],
        "rescore": scfg.rescore, "bn_batches": scfg.bn_batches, "batch_size": scfg.batch_size,
        "search_s": round(total, 1), "candidates_s": rep["seconds"]["candidates"],
        "per_candidate_s": rep["per_candidate_s"], "stage_s": rep["stage_s"],
        "agreement": {"candidates": k, "reference": f"{a.reference_bn} BN batches, the whole "
                      "slice", "spearman": widths.spearman([r.screen for r in pick], full),
                      "full_best_in_screen_top": pick[best_full].id in top,
                      "seconds": round(agreement_s, 1)},
        "uniform_rank": rep["uniform_rank"], "chosen": rep["chosen"],
        "threads": a.threads, "torch": torch.__version__, "machine": platform.machine(),
        "cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "argv": sys.argv,
        "date": time.strftime("%Y-%m-%d %H:%M")}
    write_json(a.out, out)
    print({k: v for k, v in out.items() if k not in ("argv",)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
