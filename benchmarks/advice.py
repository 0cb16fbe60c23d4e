"""The "which method at my budget" table, built from the frontier JSON files (never by hand).

Reads every ``benchmarks/results/frontier_cifar*.json`` (one per base: ``frontier_cifar.json``
is ``cifar_vgg11_bn --width 0.25``, ``frontier_cifar_MODEL_wWIDTH.json`` the others) and writes
the table, and the rule's verdict, between the ``<!-- advice:begin -->`` and
``<!-- advice:end -->`` markers of docs/pruning.md:

* per base and budget, each method's top-1 after the same fine-tuning, mean over its seeds, the
  difference to uniform L1 on the same base and budget, measured ms (seed 0) and the method's
  own cost before fine-tuning;
* the default rule (issue 31): a method becomes ``tp-vgg prune``'s default only when it beats
  uniform, over at least 2 seeds each, at every budget of every base measured (at least two
  bases, each with two budgets). The verdict names the method or says why none qualifies.

Also README.md's short form between the same markers: per base and budget, uniform against the
best other method.

    python benchmarks/advice.py            # rewrite docs/pruning.md's and README.md's tables
    python benchmarks/advice.py --check    # exit 1 if the page's table is not what the JSON gives
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PAGE = os.path.join(ROOT, "docs", "pruning.md")
README = os.path.join(ROOT, "README.md")
BEGIN, END = "<!-- advice:begin -->", "<!-- advice:end -->"
MIN_SEEDS = 2

from tp_vgg.search.widths import DEFAULT_WITH_DATA  # noqa: E402  (the search default, if any)

# how each frontier row reads as a tp-vgg prune option (with --data: uniform needs --search 0
# where the search is the default)
LABELS = {
    "uniform": ("uniform L1 (`--target-speedup X --search 0`)" if DEFAULT_WITH_DATA else
                "uniform L1 (`--target-speedup X`)"),
    "search": "`--search 200`",
    "global-group-norm": "`--global` (`group-norm`)",
    "global-taylor-raw": "`--global --importance taylor-raw`",
    "fpgm": "`--importance fpgm`",
    "depgraph": "`--recipe depgraph`",
    "slimming": "`--recipe slimming`",
    "scratch": "scratch control (`--scratch`)",
    "target-latency-l1": "`--target-latency` (L1 ranks, guard)",
    "target-latency-group-norm": "`--target-latency` (group-norm ranks, guard)",
    "target-latency-taylor-raw": "`--target-latency` (taylor-raw ranks, guard)",
}


def load(pattern: str = os.path.join(HERE, "results", "frontier_cifar*.json")
         ) -> List[Tuple[str, Dict[str, Any]]]:
    """(base label, frontier JSON) for every frontier file, the first base first."""
    out = []
    for path in sorted(glob.glob(pattern)):
        name = os.path.basename(path)
        if not name.endswith(".json"):
            continue
        with open(path, encoding="utf-8") as f:
            done = json.load(f)
        if not done.get("runs"):
            continue
        tag = name[len("frontier_cifar"):-len(".json")].lstrip("_")
        label = tag.replace("_w", " --width ") if tag else "cifar_vgg11_bn --width 0.25"
        out.append((label, done))
    return out


def rows(done: Dict[str, Any]) -> Dict[Tuple[float, str], Dict[str, Any]]:
    """(budget, row) -> seeds, mean top-1, spread, ms, cost."""
    by: Dict[Tuple[float, str], List[Dict[str, Any]]] = {}
    for r in done["runs"]:
        by.setdefault((r["speedup"], r["row"]), []).append(r)
    out = {}
    for key, rs in by.items():
        t = [100 * r["top1"] for r in rs]
        cost = [r.get("search_s", r.get("setup_s")) for r in rs
                if r.get("search_s", r.get("setup_s")) is not None]
        ms = (done.get("latency", {}).get(f"{key[0]:g}", {}) or {}).get(key[1])
        budget_ms = [r["latency_budget_ms"] for r in rs if r.get("latency_budget_ms")]
        out[key] = {"seeds": len(rs), "mean": statistics.mean(t), "min": min(t), "max": max(t),
                    "budget_ms": budget_ms[0] if budget_ms else None,
                    "ms": ms, "cost_s": statistics.median(cost) if cost else None,
                    "macs": statistics.mean(r["macs"] for r in rs)}
    return out


def verdict(bases: List[Tuple[str, Dict[str, Any]]]) -> Tuple[Optional[str], str]:
    """(the method that should be the default or None, the sentence that says why)."""
    table = [(label, rows(done)) for label, done in bases]
    per_base = [len({b for (b, row) in rs if row == "uniform"}) for _, rs in table]
    if len(bases) < 2 or min(per_base) < 2:
        return None, (f"Measured on {len(bases)} base(s), with {min(per_base, default=0)} "
                      "budget(s) on the least measured one so far; the rule needs at least two "
                      "bases with two budgets each, so uniform L1 stays the default.")
    methods = {row for _, rs in table for (_, row) in rs if row != "uniform"}
    winners = []
    for m in sorted(methods):
        ok = True
        for label, rs in table:
            for (b, row), u in rs.items():
                if row != "uniform":
                    continue
                r = rs.get((b, m))
                if (r is None or r["seeds"] < MIN_SEEDS or u["seeds"] < MIN_SEEDS
                        or not r["mean"] > u["mean"]):
                    ok = False
        if ok:
            winners.append(m)
    if not winners:
        return None, ("No method beats uniform at every budget of every base over at least "
                      f"{MIN_SEEDS} seeds, so uniform L1 stays the default.")
    best = winners[0] if len(winners) == 1 else max(
        winners, key=lambda m: min(rs[(b, m)]["mean"] - rs[(b, "uniform")]["mean"]
                                   for _, rs in table for (b, row) in rs if row == "uniform"))
    return best, (f"{LABELS.get(best, best)} beats uniform at every budget of every base over "
                  f"at least {MIN_SEEDS} seeds: it is `tp-vgg prune`'s default with --data at a "
                  "MAC budget (--target-speedup, --target-macs), said with its cost before it "
                  "starts; --search 0 prunes uniformly.")


def markdown(bases: List[Tuple[str, Dict[str, Any]]]) -> str:
    lines = ["| base (top-1, MACs) | budget | method | top-1 (seeds) | vs uniform | ms (seed 0) | "
             "method cost before fine-tuning |", "|---|---|---|---:|---:|---:|---:|"]
    for label, done in bases:
        base = done["unpruned"]
        head = f"{label} ({100 * base['top1']:.2f} %, {base['macs'] / 1e6:.1f}M)"
        rs = rows(done)
        order = sorted(rs, key=lambda k: (-k[0], k[1] != "uniform", -rs[k]["mean"]))
        for b, row in order:
            r = rs[(b, row)]
            u = rs.get((b, "uniform"))
            # a latency budget is not the MAC budget of its group: no difference shown
            d = ("" if u is None or row == "uniform" or r["budget_ms"] is not None
                 else f"{r['mean'] - u['mean']:+.2f}")
            cost = ("none" if r["cost_s"] is None or r["cost_s"] < 1 else
                    f"{r['cost_s'] / 60:.1f} min")
            if row == "scratch":
                cost = "a whole training (base + fine-tuning epochs)"
            budget = (f"{b:g}×" if r["budget_ms"] is None else
                      f"{r['budget_ms']:.2f} ms (uniform `--ratio 0.5`, measured)")
            ms = "" if r["ms"] is None else f"{r['ms']:.2f}"
            lines.append(f"| {head} | {budget} | {LABELS.get(row, row)} | {r['mean']:.2f} "
                         f"({r['seeds']}) | {d} | {ms} | {cost} |")
            head = ""
    _, why = verdict(bases)
    epochs = sorted({json.dumps(d.get("setup", {}).get("finetune", {}).get("epochs"))
                     for _, d in bases})
    return ("\n".join(lines) + "\n\n" + f"Generated by `python benchmarks/advice.py` from "
            f"benchmarks/results/frontier_cifar*.json: CIFAR-10 (JPEG set), top-1 after the same "
            f"fine-tuning ({', '.join(epochs)} epochs), mean over the seeds shown; ms: batch 64, "
            f"measured interleaved per budget; MACs: fvcore, 1 MAC = one multiply-add. "
            f"**Default:** {why}\n")


def summary(bases: List[Tuple[str, Dict[str, Any]]]) -> str:
    """README's short form: per base and budget, uniform and the best other method by mean
    top-1 (seeds shown), and the default's verdict."""
    lines = ["| base | budget | uniform L1 (seeds) | best other method (seeds) | vs uniform |",
             "|---|---|---:|---|---:|"]
    for label, done in bases:
        rs = rows(done)
        for b in sorted({b for (b, row) in rs if row == "uniform"}, reverse=True):
            u = rs[(b, "uniform")]
            others = [(r["mean"], row) for (bb, row), r in rs.items()
                      if bb == b and row not in ("uniform", "scratch")
                      and r["budget_ms"] is None]
            if not others:
                continue
            mean, row = max(others)
            lines.append(f"| {label} | {b:g}× | {u['mean']:.2f} ({u['seeds']}) | "
                         f"{LABELS.get(row, row)}: {mean:.2f} ({rs[(b, row)]['seeds']}) | "
                         f"{mean - u['mean']:+.2f} |")
    _, why = verdict(bases)
    return ("\n".join(lines) + "\n\nCIFAR-10 top-1 after the same fine-tuning, mean over seeds; "
            "generated by `python benchmarks/advice.py` from the frontier JSON (every method, "
            "its cost and latency: [docs/pruning.md](docs/pruning.md#which-method-at-my-budget-"
            f"measured)). **Default:** {why}\n")


def render(page: str, table: str) -> str:
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + "\n" + table + END + tail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--page", default=PAGE)
    ap.add_argument("--readme", default=README)
    a = ap.parse_args()
    bases = load()
    stale = []
    for path, text in ((a.page, markdown(bases)), (a.readme, summary(bases))):
        with open(path, encoding="utf-8") as f:
            page = f.read()
        new = render(page, text)
        if new == page:
            continue
        stale.append(path)
        if not a.check:
            from tp_vgg.files import write_text  # temp file, then rename
            write_text(path, new)
    if a.check:
        for path in stale:
            print(f"{path}: the advice table is not what benchmarks/results give; run "
                  "python benchmarks/advice.py", file=sys.stderr)
        return 1 if stale else 0
    print(markdown(bases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
