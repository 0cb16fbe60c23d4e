"""The streaming data path against the in-memory one (issue 11): throughput and peak memory.

1. CIFAR-10 JPEG set (``--cifar-dir``, 50,000 + 10,000 images): one pass over the training split,
   batches of 64 at 32 px, in memory vs streamed with 0 / 1 / 2 loader workers (no model: the
   data path alone), images/s.
2. A synthetic image folder of mixed-size JPEGs (160-320 px a side, 10 classes; written once
   under ``--work``), at 224 px: ``tp-vgg train --data-loader stream`` for one epoch and
   ``tp-vgg eval`` on folders of ``--small`` and ``--large`` training images, the peak memory
   of the whole process tree (the sum of its processes' PSS -- pages the forked loader workers
   share with their parent count once -- sampled every 0.2 s) and training images/s;
   the same model trained on in-memory images of the same size (``--data fake``) gives the
   model's own training speed. ``--torchrun``: also under ``torchrun --nproc_per_node=2``.

    python benchmarks/stream_data.py --cifar-dir data/cifar10-jpeg --threads 1 --workers 1

Writes benchmarks/results/stream_data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
MODEL = ["--model", "cifar_vgg11_bn", "--width", "0.0625", "--input-size", "224"]


def make_folder(root: str, n_train: int, n_val: int, seed: int = 0) -> str:
    """Mixed-size JPEGs (smooth random patterns with a class tint), written once."""
    import torch.nn.functional as F
    from torchvision.io import encode_jpeg, write_file

    stamp = os.path.join(root, f".complete_{n_train}_{n_val}")
    if os.path.exists(stamp):
        return root
    shutil.rmtree(root, ignore_errors=True)
    g = torch.Generator().manual_seed(seed)
    tint = torch.rand(10, 3, 1, 1, generator=g) * 120
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            c = i % 10
            h, w = (int(v) for v in torch.randint(160, 321, (2,), generator=g))
            low = torch.rand(1, 3, 8, 8, generator=g) * 135
            img = (F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]
                   + tint[c]).clamp(0, 255).to(torch.uint8)
            folder = os.path.join(root, split, f"class{c}")
            os.makedirs(folder, exist_ok=True)
            write_file(os.path.join(folder, f"{i:06d}.jpg"), encode_jpeg(img, quality=90))
    open(stamp, "w").close()
    return root


def subset_folder(src: str, dst: str, n_train: int) -> str:
    """The first ``n_train`` training images of ``src`` (symlinks) and all of its val/."""
    stamp = os.path.join(dst, f".complete_{n_train}")
    if os.path.exists(stamp):
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    per_class = n_train // 10
    for split in ("train", "val"):
        for c in sorted(os.listdir(os.path.join(src, split))):
            os.makedirs(os.path.join(dst, split, c))
            files = sorted(os.listdir(os.path.join(src, split, c)))
            for f in files[:per_class] if split == "train" else files:
                os.symlink(os.path.join(src, split, c, f), os.path.join(dst, split, c, f))
    open(stamp, "w").close()
    return dst


def _tree_rss_kb(pid: int) -> int:
    """Memory of ``pid`` and all its descendants, in KiB (from /proc): the sum of their PSS
    (proportional set size: a page shared by the forked loader workers counts once in all), or
    of their RSS where smaps_rollup is missing."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            try:
                with open(f"/proc/{p}/smaps_rollup") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            except FileNotFoundError:
                with open(f"/proc/{p}/status") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


def run_measured(cmd: List[str], env: Optional[Dict[str, str]] = None) -> Dict[str, object]:
    """Run ``cmd``; its exit code, wall seconds and peak process-tree RSS (MiB)."""
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env)
    peak, samples = 0, []
    while p.poll() is None:
        rss = _tree_rss_kb(p.pid)
        peak = max(peak, rss)
        samples.append((round(time.time() - t0, 1), round(rss / 1024, 1)))
        time.sleep(0.2)
    out = p.stdout.read() if p.stdout else ""
    # the RSS over the run: at each tenth of its duration (MiB), to tell growth from a plateau
    deciles = [max((m for t, m in samples if t <= samples[-1][0] * k / 10), default=0)
               for k in range(1, 11)] if samples else []
    if p.returncode != 0:
        print(out[-3000:], file=sys.stderr)
    return {"rc": p.returncode, "seconds": round(time.time() - t0, 1),
            "peak_rss_mib": round(peak / 1024, 1), "peak_rss_by_tenth_mib": deciles,
            "tail": out.strip().splitlines()[-3:]}


def _train_images_per_s(out: str) -> Optional[float]:
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    recs = [json.loads(line) for line in open(path) if line.strip()]
    return recs[-1]["images_per_s"] if recs else None


def cifar_section(cifar_dir: str, workers: List[int], threads: int) -> Dict[str, object]:
    from tp_vgg.data.batches import BatchTransform
    from tp_vgg.data.datasets import DataConfig, load_data

    torch.set_num_threads(threads)
    out: Dict[str, object] = {}
    for how in ["memory"] + [f"stream_w{w}" for w in workers]:
        t = time.time()
        cfg = DataConfig("imagefolder", data_dir=cifar_dir,
                         loader="memory" if how == "memory" else "stream",
                         workers=None if how == "memory" else int(how[len("stream_w"):]))
        data = load_data(cfg)
        load_s = time.time() - t
        mean, std = ([0.5] * 3, [0.25] * 3)
        b = data.batches("train", 64, BatchTransform(mean, std, 32), "cpu", train=True, seed=0)
        b.set_epoch(0)
        t = time.time()
        n = sum(len(y) for _, y in b)
        s = time.time() - t
        out[how] = {"load_s": round(load_s, 1), "epoch_s": round(s, 1),
                    "images_per_s": round(n / s), "images": n}
        print(f"cifar {how}: load {load_s:.1f}s, one training pass {s:.1f}s = {n / s:,.0f} img/s",
              flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar-dir", default="data/cifar10-jpeg")
    ap.add_argument("--work", default="runs/stream")
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--large", type=int, default=20000)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="loader workers of the 224-px runs")
    ap.add_argument("--cifar-workers", default="0,1,2")
    ap.add_argument("--torchrun", action="store_true")
    ap.add_argument("--skip-cifar", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the in-memory baseline and the small stream run this many times, "
                         "alternating (medians in the table)")
    a = ap.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    out_path = os.path.join(RESULTS, "stream_data.json")
    result: Dict[str, object] = json.load(open(out_path)) if os.path.exists(out_path) else {}
    result["machine"] = {"machine": platform.machine(), "cpus": os.cpu_count(),
                         "torch": torch.__version__, "threads": a.threads,
                         "workers_224": a.workers, "argv": sys.argv,
                         "date": time.strftime("%Y-%m-%d")}

    def save() -> None:
        from tp_vgg.files import write_json
        write_json(out_path, result)

    if not a.skip_cifar and os.path.isdir(a.cifar_dir):
        result["cifar"] = cifar_section(a.cifar_dir, [int(w) for w in a.cifar_workers.split(",")],
                                        a.threads)
        save()

    t = time.time()
    large = make_folder(os.path.join(a.work, f"mixed_{a.large}"), a.large, a.val)
    small = subset_folder(large, os.path.join(a.work, f"mixed_{a.small}"), a.small)
    print(f"folders ready in {time.time() - t:.0f}s", flush=True)
    tpvgg = [sys.executable, "-m", "tp_vgg"]
    common = ["--threads", str(a.threads), "--progress", "none", "--batch-size", "64"]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    runs: Dict[str, object] = result.setdefault("runs", {})

    def train(name: str, data: List[str], launcher: Optional[List[str]] = None) -> None:
        o = os.path.join(a.work, "out", name)
        shutil.rmtree(o, ignore_errors=True)
        cmd = (launcher or tpvgg) + ["train"] + MODEL + data + common + ["--epochs", "1",
                                                                         "--out", o]
        r = run_measured(cmd, env)
        r["train_images_per_s"] = _train_images_per_s(o)
        r["command"] = " ".join(cmd)
        runs[name] = r
        print(f"{name}: rc {r['rc']}, {r['seconds']}s, peak RSS {r['peak_rss_mib']} MiB, "
              f"train {r['train_images_per_s']} img/s", flush=True)
        save()

    def evaluate(name: str, data: List[str], ckpt: str) -> None:
        cmd = tpvgg + ["eval", "--checkpoint", ckpt] + data + ["--threads", str(a.threads),
                                                              "--batch-size", "64"]
        r = run_measured(cmd, env)
        r["command"] = " ".join(cmd)
        runs[name] = r
        print(f"{name}: rc {r['rc']}, {r['seconds']}s, peak RSS {r['peak_rss_mib']} MiB", flush=True)
        save()

    fake = ["--data", "fake", "--data-kwargs",
            json.dumps({"image_size": 224, "train_size": 1024, "test_size": 64, "num_classes": 10})]
    def stream_args(folder: str) -> List[str]:
        return ["--data", "imagefolder", "--data-dir", folder, "--data-loader", "stream",
                "--workers", str(a.workers)]

    for i in range(a.repeat):  # interleaved: the model alone, then the same model on the stream
        suffix = f"_r{i}" if a.repeat > 1 else ""
        train(f"memory_fake_1024{suffix}", fake)
        train(f"stream_train_{a.small}{suffix}", stream_args(small))
    for n, folder in ((a.small, small), (a.large, large)):
        if n == a.large:
            train(f"stream_train_{n}", stream_args(folder))
        last = f"stream_train_{n}" + ("_r0" if n == a.small and a.repeat > 1 else "")
        evaluate(f"stream_eval_{n}", stream_args(folder), os.path.join(a.work, "out", last,
                                                                       "last.pt"))
    if a.torchrun:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=2", "-m", "tp_vgg"]
        for n, folder in ((a.small, small), (a.large, large)):
            train(f"torchrun2_stream_train_{n}", stream_args(folder), launcher)
    save()
    print(json.dumps({k: {kk: v[kk] for kk in ("seconds", "peak_rss_mib") if kk in v}
                      for k, v in runs.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
