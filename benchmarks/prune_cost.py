"""(c) What pruning costs: wall time and peak memory of one prune at ratio 0.5, for every
torchvision VGG at 224x224 and every CIFAR-form VGG at 32x32.

Two ways to prune the same model:

* ``raw``    -- torch-pruning as a user would write it::

      imp = tp.importance.GroupMagnitudeImportance(p=1)
      pruner = tp.pruner.BasePruner(model, example, importance=imp, pruning_ratio=0.5,
                                    ignored_layers=[last_linear])
      pruner.step()

* ``tp_vgg`` -- ``tp_vgg.prune(model, spec, PruneConfig(ratio=0.5))`` (finds the logits layer,
  checks the ratio, records the history, L1 filter norms).

Each (model, method) runs in a fresh subprocess: the model is built, the peak-RSS counter is
reset (/proc/self/clear_refs), then ``--repeats`` prunes of fresh copies are timed (wall and
process CPU time: the latter counts both threads' work, not waiting for other jobs); peak memory
is the growth of the process's peak RSS over its RSS before the first prune. ``--profile`` adds
where the time goes in one prune of vgg16_bn@224 per method: the exclusive CPU time of each
stage, from timing wrappers around torch-pruning's and tp_vgg's functions (cProfile would slow
the pure-Python stages several-fold). Set PRUNE_COST_THREADS (default 2) for torch's threads;
with 1, CPU time is not inflated by other jobs on a shared machine.

    python benchmarks/prune_cost.py [--repeats 3] [--profile]

Writes benchmarks/results/prune_cost.csv and .json (and prune_cost_profile.json).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _setup(name: str, size: int):
    import torch
    import torch.nn as nn

    from tp_vgg.models.zoo import ModelSpec, build_model

    torch.set_num_threads(int(os.environ.get("PRUNE_COST_THREADS", "2")))
    spec = ModelSpec(name, input_size=size).resolved()
    torch.manual_seed(0)
    model = build_model(spec).eval()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return spec, model, last


def prune_once(method: str, model, spec, ratio: float):
    import torch.nn as nn
    import torch_pruning as tp

    if method == "raw":
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        example = spec.example_input(batch=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = tp.importance.GroupMagnitudeImportance(p=1)
            pruner = tp.pruner.BasePruner(model, example, importance=imp, pruning_ratio=ratio,
                                          ignored_layers=[last])
            pruner.step()
    else:
        import tp_vgg
        tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=ratio))


def one(name: str, size: int, method: str, repeats: int, ratio: float) -> Dict:
    """Runs in the child process."""
    spec, template, _ = _setup(name, size)
    rss0 = _status_kb("VmRSS")
    ok = _reset_peak()
    times, cpu = [], []
    peak_growth = 0
    for _ in range(repeats):
        model = copy.deepcopy(template)
        rss_before = _status_kb("VmRSS")
        _reset_peak()
        t0, c0 = time.perf_counter(), time.process_time()
        prune_once(method, model, spec, ratio)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        peak_growth = max(peak_growth, _status_kb("VmHWM") - rss_before)
        del model
    return {"model": name, "input": size, "method": method, "ratio": ratio,
            "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "cpu_s": round(statistics.median(cpu), 3),
            "runs": repeats, "peak_extra_mb": round(peak_growth / 1024, 1) if ok else None,
            "model_rss_mb": round(rss0 / 1024, 1)}


def _stage_targets():
    """(stage, owner, attribute) of the functions whose exclusive time makes each stage."""
    import torch_pruning as tp
    from torch_pruning.dependency import graph, group, index_mapping

    import tp_vgg.pruning.checks
    import tp_vgg.pruning.criteria

    maps = [getattr(index_mapping, n) for n in dir(index_mapping)
            if n.endswith("IndexMapping") and isinstance(getattr(index_mapping, n), type)]
    return [
        ("trace the model, build the DependencyGraph", graph.DependencyGraph, "build_dependency"),
        ("index mapping through flatten (pure Python)", maps, "__call__"),
        ("collect coupled layers (get_pruning_group)", graph.DependencyGraph, "get_pruning_group"),
        ("importance scores", [tp.importance.GroupMagnitudeImportance,
                               tp_vgg.pruning.criteria.FilterNormImportance], "__call__"),
        ("tensor surgery (Group.prune: index_select of weights)", group.Group, "prune"),
        ("tp_vgg forward check of the pruned model", tp_vgg.pruning.checks, "check_pruned"),
    ]


def profile(name: str, size: int, method: str, ratio: float) -> Dict:
    """Exclusive CPU time of each stage (a stage's time minus the stages it calls), measured by
    wrapping the functions above -- unlike cProfile, this does not slow pure-Python code down."""
    spec, template, _ = _setup(name, size)
    model = copy.deepcopy(template)
    spent: Dict[str, float] = {}
    stack: List[List[float]] = []

    def wrap(stage, fn):
        def timed(*a, **k):
            stack.append([0.0])
            t0 = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                total = time.thread_time() - t0
                nested = stack.pop()[0]
                spent[stage] = spent.get(stage, 0.0) + total - nested
                if stack:
                    stack[-1][0] += total
        return timed

    restore = []
    for stage, owners, attr in _stage_targets():
        for owner in owners if isinstance(owners, list) else [owners]:
            if attr in vars(owner):
                orig = vars(owner)[attr]
                restore.append((owner, attr, orig))
                setattr(owner, attr, wrap(stage, orig))
    try:
        t0, c0 = time.perf_counter(), time.thread_time()
        prune_once(method, model, spec, ratio)
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    finally:
        for owner, attr, orig in restore:
            setattr(owner, attr, orig)
    stages = {k: round(v, 3) for k, v in spent.items()}
    stages["other"] = round(max(0.0, cpu - sum(spent.values())), 3)
    return {"model": name, "input": size, "method": method, "thread_cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3), "stages_cpu_s": stages}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--models", default=None, help="name@size,... (default: all)")
    p.add_argument("--methods", default="raw,tp_vgg")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--profile-only", action="store_true", help="only the stage breakdown")
    p.add_argument("--one", nargs=3, metavar=("NAME", "SIZE", "METHOD"), help=argparse.SUPPRESS)
    p.add_argument("--profile-one", nargs=3, metavar=("NAME", "SIZE", "METHOD"),
                   help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a.one[2], a.repeats, a.ratio)))
        return 0
    if a.profile_one:
        print(json.dumps(profile(a.profile_one[0], int(a.profile_one[1]), a.profile_one[2], a.ratio)))
        return 0

    from tp_vgg.models.zoo import CIFAR_VGGS, TORCHVISION_VGGS
    cases = ([c.split("@") for c in a.models.split(",")] if a.models else
             [(n, 224) for n in TORCHVISION_VGGS] + [(n, 32) for n in CIFAR_VGGS])
    rows = []
    for name, size in ([] if a.profile_only else cases):
        for method in a.methods.split(","):
            res = subprocess.run([sys.executable, __file__, "--one", name, str(size), method,
                                  "--repeats", str(a.repeats), "--ratio", str(a.ratio)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["load"] = round(os.getloadavg()[0], 2)
            rows.append(row)
            print(f"{name:15s} @{size:<3} {method:7s} median {row['median_s']:6.2f} s "
                  f"(min {row['min_s']:.2f}, CPU {row['cpu_s']:.2f})  peak +{row['peak_extra_mb']} MB over the model's "
                  f"{row['model_rss_mb']} MB RSS  (load {row['load']})", flush=True)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    stem = os.path.join(HERE, "results", "prune_cost")
    threads = int(os.environ.get("PRUNE_COST_THREADS", "2"))
    cmd = "python benchmarks/prune_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if rows:
        with open(stem + ".csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        with open(stem + ".json", "w") as f:
            json.dump({"command": cmd, "threads": threads, "rows": rows}, f, indent=1)
        print(f"wrote {stem}.csv and .json")
    if a.profile or a.profile_only:
        profs = []
        for method in a.methods.split(","):
            res = subprocess.run([sys.executable, __file__, "--profile-one", "vgg16_bn", "224",
                                  method, "--ratio", str(a.ratio)],
                                 capture_output=True, text=True, check=True)
            prof = json.loads(res.stdout.strip().splitlines()[-1])
            profs.append(prof)
            print(f"where the time goes, vgg16_bn@224 {method}: {prof['thread_cpu_s']} s CPU "
                  f"({prof['wall_s']} s wall)")
            for k, v in sorted(prof["stages_cpu_s"].items(), key=lambda kv: -kv[1]):
                print(f"  {v:7.3f} s  {k}")
        with open(stem + "_profile.json", "w") as f:
            json.dump({"command": cmd, "threads": threads, "profiles": profs}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
