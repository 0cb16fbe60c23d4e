"""(b, detail) Which channel counts do the CPU conv kernels like? GMAC/s of one 3x3 conv
(C in -> C out, padding 1) as C steps by 1, in NCHW and channels_last, fp32.

All widths are timed interleaved (each round runs every width once), medians over rounds; the
throughput of width C is compared with the multiples of 8 and 16 around it. This is what
``--round-to auto`` rests on.

    python benchmarks/conv_widths.py [--widths 136-168] [--hw 8] [--batch 64] [--threads 2]

Writes benchmarks/results/conv_widths.csv and .json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from typing import List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="136-168")
    p.add_argument("--hw", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--maxpool", action="store_true",
                   help="also time a 2x2 max-pool of each input (NCHW vs channels_last)")
    p.add_argument("--clock", default="wall", choices=["wall", "thread"],
                   help="thread: CPU time of this thread (robust on a shared machine; --threads 1)")
    p.add_argument("--tag", default="")
    a = p.parse_args(argv)
    lo, hi = (int(x) for x in a.widths.split("-"))
    widths = list(range(lo, hi + 1))
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cases = {}
    for fmt in ("nchw", "cl"):
        mf = torch.channels_last if fmt == "cl" else torch.contiguous_format
        for c in widths:
            conv = torch.nn.Conv2d(c, c, 3, padding=1).eval().to(memory_format=mf)
            x = torch.randn(a.batch, c, a.hw, a.hw).contiguous(memory_format=mf)
            cases[(fmt, c)] = (conv, x)
    samples = {k: [] for k in cases}
    pool = {k: [] for k in cases}
    with torch.inference_mode():
        for conv, x in cases.values():
            for _ in range(3):
                conv(x)
        clock = time.thread_time if a.clock == "thread" else time.perf_counter
        for _ in range(a.rounds):
            for k, (conv, x) in cases.items():
                t0 = clock()
                conv(x)
                samples[k].append(clock() - t0)
                if a.maxpool:
                    t0 = clock()
                    torch.nn.functional.max_pool2d(x, 2)
                    pool[k].append(clock() - t0)
    rows = []
    for (fmt, c), s in samples.items():
        ms = statistics.median(s) * 1e3
        macs = a.batch * c * c * 9 * a.hw * a.hw
        rows.append({"format": fmt, "channels": c, "hw": a.hw, "batch": a.batch,
                     "threads": a.threads, "clock": a.clock, "median_ms": round(ms, 4),
                     "gmacs_per_s": round(macs / ms / 1e6, 2),
                     "multiple_of": 16 if c % 16 == 0 else 8 if c % 8 == 0 else 1,
                     "maxpool_ms": round(statistics.median(pool[(fmt, c)]) * 1e3, 4)
                     if pool[(fmt, c)] else None})
    for fmt in ("nchw", "cl"):
        sub = [r for r in rows if r["format"] == fmt]
        by = {m: statistics.median([r["gmacs_per_s"] for r in sub if r["multiple_of"] == m] or [0])
              for m in (16, 8, 1)}
        print(f"{fmt:5s} C={lo}..{hi} @{a.hw}x{a.hw} batch {a.batch}, {a.threads} threads: median "
              f"GMAC/s  multiples of 16: {by[16]:.1f}  of 8 (not 16): {by[8]:.1f}  "
              f"others: {by[1]:.1f}")
        print("  " + " ".join(f"{r['channels']}:{r['gmacs_per_s']:.0f}" for r in sub))
        if a.maxpool:
            print("  max-pool ms: " + " ".join(f"{r['channels']}:{r['maxpool_ms']:.2f}" for r in sub))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    stem = os.path.join(HERE, "results", f"conv_widths{a.tag}")
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(stem + ".json", "w") as f:
        json.dump({"command": "python benchmarks/conv_widths.py " + " ".join(
            sys.argv[1:] if argv is None else argv), "load": os.getloadavg(),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "rows": rows}, f, indent=1)
    print(f"wrote {stem}.csv and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
