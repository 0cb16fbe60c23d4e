"""``tp-vgg compare RUN RUN ...``: structured prune runs of one model side by side.

Each RUN is a folder written by ``tp-vgg prune --out`` (its report.json). :func:`compare_runs`
reads them into one dict (compare.json):

* ``runs``: per run its folder, label, importance and ratio, top-1 (fine-tuned, else the last
  accuracy the run recorded: recalibrated, then right after pruning; ``top1_of`` says which),
  MACs and params after pruning, their reductions, and the latency of the pruned model when the
  run measured it (pruned ms and speed-up per batch size, from its own session);
* ``layers``: per layer that any run pruned, the channels before, the number each run removed
  and, against the FIRST run, the channels both removed (``shared``, |A∩B|) and the Jaccard
  index ``|A∩B| / |A∪B|`` of the two sets of removed channels (report.json
  ``removed_channels``, numbered as in the model before pruning); 1.0 is the same channels,
  ``None`` where neither removed any. ``chance_shared``: the |A∩B| expected had the second run
  removed as many channels at random (|A| |B| / channels);
* ``total``: the same over all layers (shared and union summed before dividing).

:func:`write_compare` writes compare.json, compare.md and compare.png (per-layer Jaccard bars;
top-1, else latency, else params against MACs) into a folder, atomically; :func:`compare`
does both and returns the printed text. Mistakes (fewer than two runs, a folder without
report.json, an unstructured run, a sweep, runs of different models) are a UserError naming
the folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from tp_vgg.errors import UserError
from tp_vgg.files import ensure_dir, write_json, write_text
from tp_vgg.models.counting import human
from tp_vgg.report import plots
from tp_vgg.report.markdown import (REPORT_FILE, SWEEP_FILE, md_table, read_json,
                                    runtime_latencies)
from tp_vgg.report.summary import MAC_NOTE, format_ms, table

COMPARE_JSON, COMPARE_MD, COMPARE_PNG = "compare.json", "compare.md", "compare.png"
OVERLAP = "Jaccard index |A∩B| / |A∪B| of the removed output channels, against the first run"
TOP1_ORDER = ("finetuned", "recalibrated", "pruned")  # the top-1 shown: the first recorded


def read_run(run_dir: str) -> Dict[str, Any]:
    """``run_dir/report.json`` of a structured ``tp-vgg prune``; a UserError naming what the
    folder is otherwise."""
    run_dir = str(run_dir)
    if not os.path.exists(run_dir):
        raise UserError(f"run folder {run_dir!r} does not exist")
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir!r} is a file; give the folder tp-vgg prune --out wrote")
    if os.path.isfile(os.path.join(run_dir, SWEEP_FILE)):
        try:
            runs = [r["dir"] for r in read_json(os.path.join(run_dir, SWEEP_FILE))["runs"]]
        except (UserError, TypeError, KeyError):
            runs = []
        example = " ".join(os.path.join(run_dir, r) for r in runs[:2]) or f"{run_dir}/ratio_R"
        raise UserError(f"{run_dir!r} is a sweep ({SWEEP_FILE}), not one prune run; compare "
                        f"its runs instead, e.g. {example}")
    path = os.path.join(run_dir, REPORT_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{run_dir!r} holds no {REPORT_FILE}; give folders written by "
                        "tp-vgg prune --out DIR")
    rep = read_json(path)
    if not isinstance(rep, dict) or not all(k in rep for k in ("before", "after", "layers")):
        raise UserError(f"{path!r} is not a tp-vgg prune report (no before/after counts)")
    if rep.get("unstructured") is not None or (rep.get("config") or {}).get("unstructured"):
        raise UserError(f"{run_dir!r} is an unstructured run (--unstructured): it zeroes "
                        "weights and removes no channel; compare structured prune runs")
    if not isinstance(rep.get("removed_channels"), dict):
        raise UserError(f"{path!r} records no removed_channels (written by tp-vgg prune since "
                        "it records them); prune that run again")
    return rep


def _label(run_dir: str, dirs: Sequence[str]) -> str:
    base = os.path.basename(os.path.normpath(run_dir)) or run_dir
    same = [d for d in dirs if (os.path.basename(os.path.normpath(d)) or d) == base]
    return base if len(same) == 1 else os.path.normpath(run_dir)


def _top1(rep: Dict[str, Any]) -> tuple:
    acc = rep.get("accuracy") or {}
    for key in TOP1_ORDER:
        if acc.get(key) is not None:
            return acc[key], key
    return None, None


def _latency(rep: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    by_runtime = runtime_latencies(rep)
    if not by_runtime:
        return None
    runtime, lat = next(iter(by_runtime.items()))
    per = {str(c["batch_size"]): {"pruned_ms": c["pruned"]["median_ms"],
                                  "original_ms": c["original"]["median_ms"],
                                  "speedup": c.get("speedup")}
           for c in lat.get("comparisons", [])}
    env = lat.get("environment") or {}
    return {"runtime": runtime, "device": env.get("gpu") or env.get("device"),
            "batch_sizes": per}


def _layer_shape(rep: Dict[str, Any]) -> Dict[str, int]:
    return {r["name"]: r.get("out_channels_before") for r in rep["layers"]}


def _check_same_model(dirs: Sequence[str], reps: Sequence[Dict[str, Any]]) -> None:
    first = _layer_shape(reps[0])
    name0 = (reps[0].get("model") or {}).get("name", "?")
    for d, rep in zip(dirs[1:], reps[1:]):
        shape = _layer_shape(rep)
        name = (rep.get("model") or {}).get("name", "?")
        if list(shape) != list(first):
            only = [n for n in shape if n not in first]
            miss = [n for n in first if n not in shape]
            where = (f"{only[0]} only in {d!r}" if only else f"{miss[0]} only in {dirs[0]!r}"
                     if miss else "the same layers in another order")
            raise UserError(f"runs of different base models: {dirs[0]!r} ({name0}) and {d!r} "
                            f"({name}) have different layers ({where}); compare runs pruned "
                            "from the same model")
        diff = next((n for n in first if first[n] != shape[n]), None)
        if diff is not None:
            raise UserError(f"runs of different base models: layer {diff} had {first[diff]} "
                            f"output channels before pruning in {dirs[0]!r} and {shape[diff]} "
                            f"in {d!r}; compare runs pruned from the same model")


def jaccard(a: Sequence[int], b: Sequence[int]) -> Optional[float]:
    """|A∩B| / |A∪B|; None when both are empty."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else None


def compare_runs(dirs: Sequence[str]) -> Dict[str, Any]:
    """compare.json of the prune runs in ``dirs`` (see the module docstring)."""
    dirs = [str(d) for d in dirs]
    if len(dirs) < 2:
        raise UserError(f"tp-vgg compare needs at least 2 run folders, got {len(dirs)}"
                        + (f" ({dirs[0]!r})" if dirs else "")
                        + "; give RUN RUN ... (folders written by tp-vgg prune --out)")
    reps = [read_run(d) for d in dirs]
    _check_same_model(dirs, reps)
    runs = []
    for d, rep in zip(dirs, reps):
        cfg = rep.get("config") or {}
        top1, top1_of = _top1(rep)
        runs.append({"dir": d, "label": _label(d, dirs), "importance": cfg.get("importance"),
                     "ratio": cfg.get("ratio"), "global": cfg.get("global_pruning"),
                     "iterative_steps": cfg.get("iterative_steps"),
                     "top1": top1, "top1_of": top1_of,
                     "top1_before": (rep.get("accuracy") or {}).get("before"),
                     "macs": rep["after"]["macs"], "params": rep["after"]["params"],
                     "macs_before": rep["before"]["macs"], "params_before": rep["before"]["params"],
                     "macs_reduction": rep.get("macs_reduction"),
                     "params_reduction": rep.get("params_reduction"),
                     "latency": _latency(rep)})
    shape = _layer_shape(reps[0])
    removed = [{k: list(v) for k, v in rep["removed_channels"].items()} for rep in reps]
    pruned = {n for r in removed for n in r}
    layers, shared_sum, union_sum = [], [0] * len(dirs), [0] * len(dirs)
    for name in [n for n in shape if n in pruned]:
        sets = [set(r.get(name, [])) for r in removed]
        size = shape[name] or 0
        row = {"layer": name, "channels": size, "removed": [len(s) for s in sets],
               "shared": [len(sets[0] & s) for s in sets],
               "jaccard": [jaccard(sets[0], s) for s in sets],
               "chance_shared": [len(sets[0]) * len(s) / size if size else None for s in sets]}
        for i, s in enumerate(sets):
            shared_sum[i] += len(sets[0] & s)
            union_sum[i] += len(sets[0] | s)
        layers.append(row)
    total = {"removed": [sum(len(v) for v in r.values()) for r in removed],
             "shared": shared_sum,
             "jaccard": [s / u if u else None for s, u in zip(shared_sum, union_sum)]}
    return {"units": MAC_NOTE, "overlap": OVERLAP,
            "model": reps[0].get("model"), "runs": runs, "layers": layers, "total": total}


# --------------------------------------------------------------------------------------------
# Text and markdown.

def _pct(v: Optional[float]) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def _j(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.2f}"


def _batch_sizes(cmp: Dict[str, Any]) -> List[str]:
    return sorted({b for r in cmp["runs"] if r["latency"] for b in r["latency"]["batch_sizes"]},
                  key=int)


def _run_rows(cmp: Dict[str, Any]) -> tuple:
    sizes = _batch_sizes(cmp)
    tops = any(r["top1"] is not None for r in cmp["runs"])
    header = ["run", "importance", "ratio"] + (["top-1"] if tops else []) + [
        "MACs", "params", "MAC reduction"]
    for b in sizes:
        header += [f"pruned ms b{b}", f"speed-up b{b}"]
    rows = []
    for r in cmp["runs"]:
        top1 = _pct(r["top1"]) + (f" ({r['top1_of']})" if r["top1_of"] not in (None, "finetuned")
                                  else "")
        line = [r["label"], r["importance"] or "", "" if r["ratio"] is None else f"{r['ratio']:g}"
                ] + ([top1] if tops else []) + [human(r["macs"]), human(r["params"]),
                "" if r["macs_reduction"] is None else f"{r['macs_reduction']:.2f}x"]
        for b in sizes:
            c = (r["latency"] or {}).get("batch_sizes", {}).get(b)
            line += ([format_ms(c["pruned_ms"]),
                      "" if c.get("speedup") is None else f"{c['speedup']:.2f}x"] if c else ["", ""])
        rows.append(line)
    return header, rows


def _layer_rows(cmp: Dict[str, Any]) -> tuple:
    runs = cmp["runs"]
    header = ["layer", "channels"] + [f"removed {r['label']}" for r in runs]
    for r in runs[1:]:
        header += [f"shared with {r['label']}", f"Jaccard {r['label']}"]
    rows = []
    for row in cmp["layers"] + [dict(cmp["total"], layer="total", channels="")]:
        line = [row["layer"], row["channels"]] + row["removed"]
        for i in range(1, len(runs)):
            a = row["removed"][0]
            line += [f"{row['shared'][i]} ({100 * row['shared'][i] / a:.0f}%)" if a
                     else row["shared"][i], _j(row["jaccard"][i])]
        rows.append(line)
    return header, rows


def _tops(cmp: Dict[str, Any]) -> str:
    kinds = {r["top1_of"] for r in cmp["runs"]}
    if kinds == {None}:
        return "No run recorded accuracy (prune with --data NAME to evaluate)."
    return ("top-1: fine-tuned where the run fine-tuned, else the last accuracy it recorded "
            "(named in brackets).")


def format_compare(cmp: Dict[str, Any]) -> str:
    """The printed tables: the runs, then the per-layer overlap with the first run."""
    first = cmp["runs"][0]["label"]
    text = table(*_run_rows(cmp)) + "\n" + _tops(cmp)
    text += "\n\n" + table(*_layer_rows(cmp))
    text += (f"\n(overlap: {OVERLAP} ({first}); shared = |A∩B|, the channels both removed, "
             f"and its share of those {first} removed.)"
             f"\n({MAC_NOTE}.)")
    return text


def compare_markdown(cmp: Dict[str, Any]) -> str:
    runs = cmp["runs"]
    name = (cmp.get("model") or {}).get("name", "?")
    parts = [f"# Comparison: {len(runs)} prune runs of {name}\n",
             "Runs: " + ", ".join(f"`{r['label']}` ({r['dir']})" for r in runs) + ".\n",
             "## Runs\n\n" + md_table(*_run_rows(cmp)) + "\n\n" + _tops(cmp) + "\n"]
    if any(r["latency"] for r in runs):
        where = sorted({f"{r['latency']['runtime']} on {r['latency']['device']}"
                        for r in runs if r["latency"]})
        parts.append("Latency: the pruned model's median ms per batch, each run timed in its own "
                     f"session ({'; '.join(where)}); the speed-up is against that session's "
                     "original.\n")
    parts.append(f"## Removed channels per layer\n\nOverlap: {OVERLAP} (`{runs[0]['label']}`); "
                 "1.00 = the same channels; shared = |A∩B|, the channels both removed, and its "
                 f"share of those `{runs[0]['label']}` removed. Chance level for a random choice "
                 "of as many channels: shared ≈ |A| |B| / channels (in compare.json, "
                 "`chance_shared`).\n\n" + md_table(*_layer_rows(cmp)) + "\n\n"
                 f"![compare]({COMPARE_PNG})\n")
    parts.append(f"---\n{MAC_NOTE}; counted at batch 1 in eval mode.\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------

@dataclass
class Compared:
    data: Dict[str, Any]          # compare.json
    text: str                     # the printed tables
    written: List[str] = field(default_factory=list)


def write_compare(cmp: Dict[str, Any], out_dir: str) -> List[str]:
    """``out_dir/compare.json``, ``compare.md`` and ``compare.png``, each written atomically."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir!r} is a file; give a folder")
    ensure_dir(out_dir)
    paths = [os.path.join(out_dir, n) for n in (COMPARE_JSON, COMPARE_MD, COMPARE_PNG)]
    plots.save_png(plots.compare_figure(cmp), paths[2])
    write_text(paths[1], compare_markdown(cmp))
    write_json(paths[0], cmp)
    return paths


def compare(dirs: Sequence[str], out_dir: Optional[str] = None) -> Compared:
    """:func:`compare_runs`, its text tables, and with ``out_dir`` :func:`write_compare`."""
    if out_dir and os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir!r} is a file; give a folder")
    cmp = compare_runs(dirs)
    written = write_compare(cmp, out_dir) if out_dir else []
    return Compared(cmp, format_compare(cmp), written)
