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
where the time goes (cProfile, one prune of vgg16_bn@224 per method), grouped by stage.

    python benchmarks/prune_cost.py [--repeats 3] [--profile]

Writes benchmarks/results/prune_cost.csv and .json (and prune_cost_profile.json).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import csv
import json
import os
import pstats
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
    from tp_vgg.models import ModelSpec, build_model

    torch.set_num_threads(int(os.environ.get("PRUNE_COST_THREADS", "2")))
    spec = ModelSpec(name, input_size=size).resolved()
    torch.manual_seed(0)
    model = build_model(spec).eval()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return spec, model, last


def prune_once(method: str, model, spec, ratio: float):
    import torch
    import torch_pruning as tp
    import torch.nn as nn

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


STAGES = {  # (file fragment, function) whose cumulative time makes a stage; first match wins
    "trace + build the DependencyGraph": [("dependency/graph.py", "build_dependency")],
    "flatten index mapping (pure Python)": [("dependency/index_mapping.py", "__call__")],
    "importance scores": [("importance.py", "__call__"), ("tp_vgg/pruning.py", "__call__"),
                          ("tp_vgg/criteria.py", "__call__")],
    "group collection (DependencyGraph.get_pruning_group, rest)": [
        ("dependency/graph.py", "get_pruning_group")],
    "tensor surgery (Group.prune: index_select of weights)": [("dependency/group.py", "prune")],
    "tp_vgg forward check of the pruned model": [("tp_vgg/checks.py", "check_pruned")],
}


def profile(name: str, size: int, method: str, ratio: float) -> Dict:
    spec, template, _ = _setup(name, size)
    model = copy.deepcopy(template)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    prune_once(method, model, spec, ratio)
    prof.disable()
    wall = time.perf_counter() - t0
    st = pstats.Stats(prof)
    cum: Dict[str, float] = {}
    for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in st.stats.items():
        for stage, keys in STAGES.items():
            if any(frag in file and func == fn for frag, fn in keys):
                cum[stage] = cum.get(stage, 0.0) + ct
    total = sum(v for (_, _, _, v, _) in [st.stats[k] for k in st.stats if k[2] == "prune_once"])
    # the mapping runs inside group collection: report group collection without it
    g = "group collection (DependencyGraph.get_pruning_group, rest)"
    m = "flatten index mapping (pure Python)"
    if g in cum and m in cum:
        cum[g] = max(0.0, cum[g] - cum[m])
    out = {"model": name, "input": size, "method": method, "profiled_total_s": round(total, 3),
           "unprofiled_estimate_note": "cProfile slows pure-Python code more than tensor code",
           "wall_with_profiler_s": round(wall, 3),
           "stages_s": {k: round(v, 3) for k, v in cum.items()}}
    out["stages_s"]["other"] = round(max(0.0, total - sum(cum.values())), 3)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--models", default=None, help="name@size,... (default: all)")
    p.add_argument("--methods", default="raw,tp_vgg")
    p.add_argument("--profile", action="store_true")
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

    from tp_vgg.models import CIFAR_VGGS, TORCHVISION_VGGS
    cases = ([c.split("@") for c in a.models.split(",")] if a.models else
             [(n, 224) for n in TORCHVISION_VGGS] + [(n, 32) for n in CIFAR_VGGS])
    rows = []
    for name, size in cases:
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
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cmd = "python benchmarks/prune_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with open(stem + ".json", "w") as f:
        json.dump({"command": cmd, "threads": int(os.environ.get("PRUNE_COST_THREADS", "2")),
                   "rows": rows}, f, indent=1)
    print(f"wrote {stem}.csv and .json")
    if a.profile:
        profs = []
        for method in a.methods.split(","):
            res = subprocess.run([sys.executable, __file__, "--profile-one", "vgg16_bn", "224",
                                  method, "--ratio", str(a.ratio)],
                                 capture_output=True, text=True, check=True)
            prof = json.loads(res.stdout.strip().splitlines()[-1])
            profs.append(prof)
            print(f"where the time goes, vgg16_bn@224 {method} (cProfile, "
                  f"{prof['profiled_total_s']} s profiled):")
            for k, v in sorted(prof["stages_s"].items(), key=lambda kv: -kv[1]):
                print(f"  {v:7.3f} s  {k}")
        with open(stem + "_profile.json", "w") as f:
            json.dump({"command": cmd, "profiles": profs}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
