"""Load: many prune -> save -> load cycles in one process without memory growth, and concurrent
`tp-vgg prune` runs with different --out that do not interfere.

    python benchmarks/load_cycles.py [--cycles 200] [--concurrent 4] [--threads 1]

Each cycle builds the model fresh, prunes it (L1, ratio 0.5, with tp-vgg's after-pruning checks),
saves the checkpoint, loads it back with ``tp_vgg.load`` and runs a forward; RSS is read from
/proc/self/statm every ``--every`` cycles. Two series: a CIFAR-form VGG from the zoo and a user
model loaded by file path (tests/user_models/vgg_seq_linear.py:make), which also checks that
user modules are not re-imported into ``sys.modules`` each cycle.

Then ``--concurrent`` `tp-vgg prune` processes start at once, each with its own --out and ratio;
every run must exit 0 and leave exactly its own pruned.pt and report.json, whose ratio and
MACs match what the same command gives alone.

Writes benchmarks/results/load_cycles.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

import tp_vgg
from tp_vgg.models.zoo import ModelSpec, build_model

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "load_cycles.json")
USER_MODEL = os.path.join(ROOT, "tests", "user_models", "vgg_seq_linear.py") + ":make"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def cycles(spec: ModelSpec, n: int, every: int, folder: str) -> dict:
    path = os.path.join(folder, "pruned.pt")
    x = spec.example_input(batch=2)
    samples, times = [], []
    modules_before = len(sys.modules)
    for i in range(1, n + 1):
        t = time.perf_counter()
        model = build_model(spec)
        result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))
        tp_vgg.save(path, model, spec, history=result.history)
        loaded = tp_vgg.load(path, trust_model_code=spec.is_user_factory)  # our own test file
        with torch.no_grad():
            loaded(x)
        del model, result, loaded
        times.append(time.perf_counter() - t)
        if i == 1 or i % every == 0:
            gc.collect()
            samples.append({"cycle": i, "rss_mb": round(rss_mb(), 1)})
            print(f"  {spec.name} cycle {i}/{n}: RSS {samples[-1]['rss_mb']:.1f} MB", flush=True)
    warm = next(s for s in samples if s["cycle"] >= min(every, n))
    return {"model": spec.to_dict(), "cycles": n,
            "rss_mb_first_cycle": samples[0]["rss_mb"], "rss_mb_after_warmup": warm["rss_mb"],
            "rss_mb_last": samples[-1]["rss_mb"],
            "rss_growth_mb_after_warmup": round(samples[-1]["rss_mb"] - warm["rss_mb"], 1),
            "sys_modules_growth": len(sys.modules) - modules_before,
            "seconds_per_cycle_median": round(sorted(times)[len(times) // 2], 3),
            "samples": samples}


def concurrent_runs(k: int, threads: int, folder: str) -> dict:
    exe = [sys.executable, "-m", "tp_vgg"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(threads))
    ratios = [round(0.2 + 0.6 * i / max(1, k - 1), 2) for i in range(k)]
    def cmd(i, r):
        model = ["--model", USER_MODEL] if i % 2 else ["--model", "cifar_vgg11_bn", "--width", "0.25"]
        return exe + ["prune", *model, "--ratio", str(r), "--out", os.path.join(folder, f"run{i}")]
    # alone, one after the other: the reference reports
    t = time.perf_counter()
    alone = []
    for i, r in enumerate(ratios):
        p = subprocess.run(cmd(i, r)[:-1] + [os.path.join(folder, f"alone{i}")], env=env,
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        alone.append(json.load(open(os.path.join(folder, f"alone{i}", "report.json"))))
    sequential_s = time.perf_counter() - t
    # all at once
    t = time.perf_counter()
    procs = [subprocess.Popen(cmd(i, r), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i, r in enumerate(ratios)]
    outs = [p.communicate() for p in procs]
    concurrent_s = time.perf_counter() - t
    runs = []
    for i, (p, (out, err)) in enumerate(zip(procs, outs)):
        d = os.path.join(folder, f"run{i}")
        files = sorted(os.listdir(d)) if os.path.isdir(d) else []
        rep = json.load(open(os.path.join(d, "report.json"))) if "report.json" in files else {}
        ok = (p.returncode == 0 and files == ["pruned.pt", "report.json"]
              and rep.get("config", {}).get("ratio") == ratios[i]
              and rep.get("after") == alone[i]["after"] and rep.get("before") == alone[i]["before"])
        loaded = tp_vgg.load(os.path.join(d, "pruned.pt"), trust_model_code=bool(i % 2)) if ok else None
        runs.append({"ratio": ratios[i], "exit": p.returncode, "files": files,
                     "macs_after": rep.get("after", {}).get("macs"),
                     "same_as_alone": ok and loaded is not None, "stderr": err.strip()[-300:]})
    return {"processes": k, "threads_each": threads, "sequential_s": round(sequential_s, 1),
            "concurrent_s": round(concurrent_s, 1), "all_ok": all(r["same_as_alone"] for r in runs),
            "runs": runs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=200)
    p.add_argument("--every", type=int, default=20, help="sample RSS every N cycles")
    p.add_argument("--concurrent", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"command": "python benchmarks/load_cycles.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
              "cpus": os.cpu_count(), "torch": torch.__version__, "tp_vgg": tp_vgg.__version__}
    with tempfile.TemporaryDirectory() as d:
        result["zoo"] = cycles(ModelSpec("cifar_vgg11_bn", width=0.5).resolved(), args.cycles,
                               args.every, d)
        result["user_file"] = cycles(ModelSpec(USER_MODEL).resolved(), args.cycles, args.every, d)
        result["concurrent"] = concurrent_runs(args.concurrent, args.threads, d)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result["zoo"].items() if k != "samples"}, indent=1))
    print(json.dumps({k: v for k, v in result["user_file"].items() if k != "samples"}, indent=1))
    print(json.dumps({k: v for k, v in result["concurrent"].items() if k != "runs"}, indent=1))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
