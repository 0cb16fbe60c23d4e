"""``report.md`` for a run folder, from the files the other commands wrote.

A folder is one of (checked in this order):

* a sweep (``sweep.json``, written by ``tp-vgg sweep``): one prune run per ratio in sub-folders;
  a trade-off table and accuracy-vs-MACs / latency-vs-MACs plots;
* a prune run (``report.json``, written by ``tp-vgg prune``), possibly with ``finetune/metrics.jsonl``:
  totals, accuracy and latency when recorded, per-layer tables and plots (channels.png and
  macs.png; for an ``--unstructured`` run, whose channels all stay, the per-layer sparsity table
  and sparsity.png instead);
* a training run (``metrics.jsonl``, written by ``tp-vgg train``/``finetune``): the epoch table
  and curve.

Plots go to ``DIR/plots/``; everything is written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from tp_vgg.errors import UserError
from tp_vgg.files import ensure_dir, write_text
from tp_vgg.models.counting import human
from tp_vgg.report import plots
from tp_vgg.report.summary import MAC_NOTE, format_ms, plural

SWEEP_FILE = "sweep.json"
REPORT_FILE = "report.json"
METRICS_FILE = "metrics.jsonl"


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path!r} is not valid JSON ({e.msg} at line {e.lineno})") from e
    except OSError as e:
        raise UserError(f"cannot read {path!r}: {e.strerror}") from e


def read_metrics(path: str) -> List[Dict[str, Any]]:
    """metrics.jsonl records; a torn last line (a run killed mid-write) is skipped."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        break
    except OSError as e:
        raise UserError(f"cannot read {path!r}: {e.strerror}") from e
    return out


def _metrics_in(run_dir: str) -> Optional[str]:
    for rel in (METRICS_FILE, os.path.join("finetune", METRICS_FILE)):
        p = os.path.join(run_dir, rel)
        if os.path.isfile(p):
            return p
    return None


def md_table(header: List[str], rows: List[List[Any]]) -> str:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _pct(v: Optional[float]) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def _x(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.2f}x"


@dataclass
class Written:
    markdown: str
    plots: List[str] = field(default_factory=list)


class _Plots:
    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.written: List[str] = []

    def save(self, fig, name: str) -> str:
        folder = ensure_dir(os.path.join(self.run_dir, "plots"))
        path = os.path.join(folder, name)
        plots.save_png(fig, path)
        self.written.append(path)
        return f"![{name[:-4]}](plots/{name})"


# --------------------------------------------------------------------------------------------
# Pieces shared by run and sweep reports.

def runtime_latencies(rep: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """A report's latency measurements by runtime (``latency_by_runtime`` when the run timed
    several, else its one ``latency`` entry)."""
    if rep.get("latency_by_runtime"):
        return rep["latency_by_runtime"]
    lat = rep.get("latency")
    return {(lat.get("config") or {}).get("runtime", "torch"): lat} if lat else {}


def latency_points(rep: Dict[str, Any], label_pruned: Any = "pruned",
                   include_original: bool = True) -> List[Dict[str, Any]]:
    """(MACs, latency) points from a report's latency entries, one series per runtime and
    batch size."""
    by_runtime = runtime_latencies(rep)
    pts = []
    for runtime, lat in by_runtime.items():
        for c in lat.get("comparisons", []):
            series = (f"{runtime}, batch {c['batch_size']}" if len(by_runtime) > 1
                      else f"batch {c['batch_size']}")
            if include_original:
                pts.append({"macs": rep["before"]["macs"], "series": series,
                            "latency_ms": c["original"]["median_ms"],
                            "batch_size": c["batch_size"], "label": "original"})
            pts.append({"macs": rep["after"]["macs"], "latency_ms": c["pruned"]["median_ms"],
                        "batch_size": c["batch_size"], "label": label_pruned, "series": series})
    return pts


def latency_section(lat: Dict[str, Any]) -> str:
    cfg = lat.get("config", {})
    env = lat.get("environment", {})
    rows = [[c["batch_size"], format_ms(c["original"]["median_ms"]),
             format_ms(c["pruned"]["median_ms"]), _x(c["speedup"]), _x(c["mac_ratio"]),
             f"{c['efficiency']:.2f}"] for c in lat.get("comparisons", [])]
    where = (f"{env.get('device', '?')}"
             + (f" ({env['gpu']})" if env.get("gpu") else "")
             + f", {env.get('threads', '?')} threads, {cfg.get('dtype', 'fp32')}"
             + (", channels-last" if cfg.get("channels_last") else "")
             + (", BN folded" if cfg.get("fuse_bn") else "")
             + f"; median of {cfg.get('repeats', '?')} interleaved runs after "
               f"{cfg.get('warmup', '?')} warm-up, torch {env.get('torch', '?')}")
    return ("## Latency\n\n" + where
            + (f"; {lat['session']}" if lat.get("session") else "") + ".\n\n"
            + md_table(["batch N", "original ms per batch of N", "pruned ms per batch of N",
                         "speed-up", "MAC ratio", "efficiency"], rows)
            + "\n\nSpeed-up = original ms / pruned ms, as shown; efficiency = speed-up / MAC "
              "ratio (1.0: latency fell as much as MACs).\n")


def _training_section(records: List[Dict[str, Any]], plotter: _Plots, title: str,
                      start_top1: Optional[float] = None) -> str:
    """The epoch table and curve; ``start_top1``: the test top-1 before the first epoch (a
    fine-tuning run: the pruned model's), drawn at epoch 0."""
    if not records:
        return ""
    rows = [[r.get("epoch"), f"{r['lr']:.4g}" if r.get("lr") is not None else "",
             f"{r['train_loss']:.4f}" if r.get("train_loss") is not None else "",
             _pct(r.get("test_top1")), _pct(r.get("test_top5"))] for r in records]
    img = plotter.save(plots.training_figure(records, title, start_top1), "training.png")
    return (f"## {title}\n\n" + md_table(["epoch", "lr", "train loss", "test top-1", "test top-5"],
                                          rows) + "\n\n" + img + "\n")


# --------------------------------------------------------------------------------------------
# A prune run.

def run_markdown(run_dir: str, rep: Dict[str, Any], records: List[Dict[str, Any]],
                 plotter: _Plots) -> str:
    model = rep.get("model", {})
    cfg = rep.get("config", {}) or {}
    b, a = rep["before"], rep["after"]
    parts = [f"# Pruning report: {model.get('name', '?')}\n"]
    cfg_items = [f"{k}={v}" for k, v in cfg.items() if v not in (None, {}, [], False)]
    parts.append(f"Run folder `{os.path.basename(os.path.abspath(run_dir))}`; "
                 f"tp-vgg {rep.get('tp_vgg_version', '?')}; config: {', '.join(cfg_items)}.\n")
    rows = [["MACs", human(b["macs"]), human(a["macs"]), _x(rep.get("macs_reduction"))],
            ["params", human(b["params"]), human(a["params"]), _x(rep.get("params_reduction"))]]
    acc = rep.get("accuracy") or {}
    if acc:
        rows.append(["test top-1", _pct(acc.get("before")),
                     _pct(acc.get("finetuned", acc.get("pruned"))), ""])
        if "finetuned" in acc:
            rows.append(["top-1 right after pruning", "", _pct(acc.get("pruned")), ""])
    parts.append("## Summary\n\n" + md_table(["", "before", "after", "reduction"], rows) + "\n")
    if rep.get("latency"):
        parts.append(latency_section(rep["latency"]))
        parts.append(plotter.save(plots.latency_vs_macs_figure(latency_points(rep)),
                                  "latency_vs_macs.png") + "\n")
    layers = rep.get("layers", [])
    un = rep.get("unstructured")
    if isinstance(un, dict) and isinstance(un.get("layers"), list) or cfg.get("unstructured"):
        # unstructured: no channel is removed; the share of zeroed weights per layer instead
        parts.append(sparsity_section(un if isinstance(un, dict) else {}, plotter))
    elif layers:
        parts.append("## Channels and MACs per layer\n\n"
                     + plotter.save(plots.channels_figure(layers), "channels.png") + "\n\n"
                     + plotter.save(plots.macs_figure(layers), "macs.png") + "\n")
        rows = [[f"`{r['name']}`", r["type"], r["out_channels_before"], r.get("out_channels_after"),
                 human(r["macs_before"]), human(r.get("macs_after", 0)),
                 human(r["params_before"]), human(r.get("params_after", 0))]
                for r in layers if r["type"] in ("Conv2d", "Linear")]
        parts.append(md_table(["layer", "type", "channels before", "after", "MACs before",
                                "after", "params before", "after"], rows) + "\n")
    extra = _method_sections(rep)
    if extra:
        parts.append(extra)
    if isinstance(rep.get("search"), dict) and rep["search"].get("rows"):
        parts.append(search_section(rep["search"], plotter))
    if records:
        start = acc.get("recalibrated", acc.get("pruned"))  # what fine-tuning started from
        parts.append(_training_section(records, plotter, "Fine-tuning", start))
    parts.append(f"---\n{MAC_NOTE}; counted at batch 1 in eval mode.\n")
    return "\n".join(parts)


def sparsity_section(un: Dict[str, Any], plotter: _Plots) -> str:
    """An unstructured run's per-layer sparsity (report.json ``unstructured.layers``): a table
    and sparsity.png."""
    rows = [r for r in un.get("layers") or [] if isinstance(r, dict)]
    if not rows:
        return ("## Sparsity per layer\n\nreport.json records no per-layer sparsity "
                "(``unstructured.layers``).\n")
    table = [[f"`{r['name']}`", r.get("type", ""), r["weights"], r["zeros"],
              f"{100 * r['sparsity']:.2f}%", human(r.get("macs_dense", 0)),
              human(r.get("macs_nonzero", 0))] for r in rows]
    if "weights" in un and "zeros" in un:
        table.append(["total", "", un["weights"], un["zeros"],
                      f"{100 * un.get('sparsity', 0):.2f}%", human(un.get("macs_dense", 0)),
                      human(un.get("macs_nonzero", 0))])
    img = plotter.save(plots.sparsity_figure(rows, un.get("sparsity")), "sparsity.png")
    empty = un.get("empty_layers") or []
    return ("## Sparsity per layer\n\nUnstructured pruning keeps every channel and zeroes single "
            "weights: zeroed = conv/linear weights set to 0, sparsity = zeroed / weights.\n\n"
            + md_table(["layer", "type", "weights", "zeroed", "sparsity", "dense MACs",
                         "nonzero MACs"], table)
            + ("\n\nLayers left entirely zero: " + ", ".join(f"`{n}`" for n in empty) + "."
               if empty else "")
            + "\n\n" + img + "\n")


def search_section(search: Dict[str, Any], plotter: _Plots) -> str:
    """``--search``: how many candidates, where uniform ranked, the finalists, the plot."""
    budget = search.get("budget", {})
    lo, hi = (budget.get("window") or ["?", "?"])[:2]
    took = search.get("seconds") or {}
    lines = ["## Width search\n",
             f"{search.get('scored')} candidates within {budget.get('describe', '?')} (window "
             f"{_scalar(lo)} to {_scalar(hi)}; {search.get('rejected')} counted outside it). "
             f"Score: {search.get('score')}, {search.get('heldout_images')} held-out training "
             f"images. Uniform ranked {search.get('uniform_rank')}; chosen: candidate "
             f"{search.get('chosen')} ({search.get('chosen_origin')}). Took "
             f"{_scalar(took.get('candidates'))} s for the candidates, "
             f"{_scalar(took.get('finalists'))} s for the finalists.\n"]
    finals = [f for f in search.get("finalists", []) if isinstance(f, dict)]
    if finals:
        keys = [k for k in ("id", "score", "finetuned", "measured_ms") if k in finals[0]]
        rows = [[_pct(f.get(k)) if k in ("score", "finetuned") else _scalar(f.get(k))
                 for k in keys] for f in finals]
        lines.append(md_table(keys, rows) + "\n")
    if search.get("rank_correlation") is not None:
        lines.append("Rank correlation of the score with the short fine-tune's top-1 over the "
                     f"finalists (Spearman): {search['rank_correlation']:.2f}.\n")
    lines.append(plotter.save(plots.search_figure(search), "search.png") + "\n")
    return "\n".join(lines)


def _scalar(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _method_sections(rep: Dict[str, Any]) -> str:
    """What the pruning methods add to report.json: a target reached, an iterative schedule,
    unstructured sparsity, notes."""
    parts = []
    un = rep.get("unstructured")
    if isinstance(un, dict) and "sparsity" in un:
        parts.append(
            f"## Unstructured sparsity\n\n{100 * un['sparsity']:.1f} % of the conv/linear weights "
            f"are zero. Dense MACs {human(un.get('macs_dense', 0))} (unchanged: a dense kernel still "
            f"computes them); MACs of the nonzero weights {human(un.get('macs_nonzero', 0))} "
            f"(needs sparse kernels); nonzero params {human(un.get('params_nonzero', 0))} of "
            f"{human(un.get('params', 0))}.\n")
    target = rep.get("target")
    if isinstance(target, dict):
        items = "\n".join(f"- {k}: {_scalar(v)}" for k, v in target.items()
                          if not isinstance(v, (dict, list)))
        parts.append("## Target\n\n" + items + "\n")
    guard = rep.get("latency_guard")
    if isinstance(guard, dict) and isinstance(guard.get("plans"), dict):
        rows = [[name, _pct(p.get("score")), _scalar(p.get("measured_ms")),
                 human(p["macs"]) if isinstance(p.get("macs"), int) else "",
                 "kept" if name == guard.get("kept") else ""]
                for name, p in guard["plans"].items() if isinstance(p, dict)]
        parts.append(f"## Latency guard\n\n{guard.get('rule', '')}. Score: "
                     f"{guard.get('score', '')}.\n\n"
                     + md_table(["plan", "held-out score", "measured ms", "MACs", ""], rows)
                     + "\n")
    elif isinstance(guard, dict):
        parts.append(f"## Latency guard\n\n{guard.get('rule', '')}.\n")
    sparse = rep.get("sparse_learning")
    if isinstance(sparse, dict):
        parts.append(f"## Recipe {sparse.get('recipe')}\n\n{sparse.get('epochs')} epoch(s) of "
                     f"sparse learning with --sparsity {sparse.get('sparsity')} (reg "
                     f"{_scalar(sparse.get('reg'))}), top-1 after it {_pct(sparse.get('top1'))}; "
                     f"then --importance {sparse.get('importance')} --global.\n")
    sched = rep.get("schedule")
    if isinstance(sched, dict) and isinstance(sched.get("steps"), list) and sched["steps"]:
        steps = [s for s in sched["steps"] if isinstance(s, dict)]
        keys = [k for k in steps[0] if all(not isinstance(s.get(k), (dict, list)) for s in steps)]
        rows = [[_scalar(s.get(k)) if k not in ("macs", "params") or s.get(k) is None
                 else human(s[k]) for k in keys] for s in steps]
        parts.append("## Iterative schedule\n\n" + md_table(keys, rows) + "\n")
    notes = rep.get("notes")
    if isinstance(notes, list) and notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# A sweep.

def sweep_rows(sweep_dir: str, sweep: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One entry per ratio: its report.json (None when the run is missing)."""
    rows = []
    for run in sweep.get("runs", []):
        path = os.path.join(sweep_dir, run["dir"], REPORT_FILE)
        rep = read_json(path) if os.path.isfile(path) else None
        rows.append({"ratio": run["ratio"], "dir": run["dir"], "report": rep})
    return rows


def _shared_baselines(done: List[Dict[str, Any]], batch_sizes: List[int]
                      ) -> Dict[int, Optional[float]]:
    """Per batch size, the original's ms when every run's speed-up was computed from the same
    one (a sweep that timed the original once), else None: then each row shows its own."""
    out: Dict[int, Optional[float]] = {}
    for bs in batch_sizes:
        ms = {c["original"]["median_ms"] for c in (_comparison(r["report"], bs) for r in done) if c}
        out[bs] = ms.pop() if len(ms) == 1 else None
    return out


def sweep_markdown(sweep_dir: str, sweep: Dict[str, Any], plotter: _Plots) -> str:
    rows = sweep_rows(sweep_dir, sweep)
    done = [r for r in rows if r["report"]]
    if not done:
        raise UserError(f"sweep {sweep_dir!r} has no finished run (no */{REPORT_FILE})")
    first = done[0]["report"]
    parts = [f"# Pruning sweep: {first.get('model', {}).get('name', '?')}\n",
             f"Ratios {', '.join(str(r['ratio']) for r in rows)}; each run is a sub-folder with "
             f"its own report.json (`tp-vgg report SWEEP/ratio_0.50`).\n"]
    batch_sizes = sorted({c["batch_size"] for r in done
                          for c in (r["report"].get("latency") or {}).get("comparisons", [])})
    shared = _shared_baselines(done, batch_sizes)
    epochs = sweep.get("finetune_epochs")
    tuned = f"top-1 fine-tuned ({plural(epochs, 'epoch')})" if epochs else "top-1 fine-tuned"
    header = ["ratio", "MACs", "params", "MAC reduction", "top-1 pruned", tuned]
    scratch = any("scratch" in (r["report"].get("accuracy") or {}) for r in done)
    if scratch:  # sweep --scratch: the pruned architecture trained from random init
        header.append("top-1 scratch")
    for bs in batch_sizes:
        if shared[bs] is None:  # runs that each timed their own original: shown per row
            header.append(f"original ms per batch of {bs}")
        header += [f"ms per batch of {bs}", f"speed-up b{bs}", f"efficiency b{bs}"]
    base_acc = (first.get("accuracy") or {}).get("before")
    base_ms = []
    for bs in batch_sizes:
        if shared[bs] is None:
            base_ms += ["(per row)", "", "", ""]
        else:
            base_ms += [format_ms(shared[bs]), "1.00x", ""]
    table = [["0 (original)", human(first["before"]["macs"]), human(first["before"]["params"]),
              "1.00x", _pct(base_acc), "(not fine-tuned)" if base_acc is not None else ""]
             + ([""] if scratch else []) + base_ms]
    acc_pts, lat_pts = [], []
    if base_acc is not None:  # a point of its own: the original was neither pruned nor tuned
        acc_pts.append({"macs": first["before"]["macs"], "top1": base_acc, "series": "original",
                        "label": "0"})
    seen = set()  # the original once per series when it was timed once, else every run's
    for r in done:
        for pt in latency_points(r["report"], label_pruned=str(r["ratio"])):
            if pt["label"] != "original":
                lat_pts.append(pt)
            elif shared.get(pt["batch_size"]) is None or pt["series"] not in seen:
                seen.add(pt["series"])
                lat_pts.append(dict(pt, label="0"))
    for r in rows:
        rep = r["report"]
        if rep is None:
            table.append([r["ratio"], "(missing)"] + [""] * (len(header) - 2))
            continue
        acc = rep.get("accuracy") or {}
        line = [r["ratio"], human(rep["after"]["macs"]), human(rep["after"]["params"]),
                _x(rep.get("macs_reduction")), _pct(acc.get("pruned")), _pct(acc.get("finetuned"))]
        if scratch:
            line.append(_pct(acc.get("scratch")))
        for bs in batch_sizes:
            c = _comparison(rep, bs)
            if shared[bs] is None:
                line.append(format_ms(c["original"]["median_ms"]) if c else "")
            line += ([format_ms(c["pruned"]["median_ms"]), _x(c["speedup"]),
                      f"{c['efficiency']:.2f}"] if c else ["", "", ""])
        table.append(line)
        for key, series in (("pruned", "pruned, not fine-tuned"),
                            ("finetuned", tuned[len("top-1 "):]), ("scratch", "scratch")):
            if acc.get(key) is not None:
                acc_pts.append({"macs": rep["after"]["macs"], "top1": acc[key], "series": series,
                                "label": str(r["ratio"])})
    parts.append("## Trade-off\n\n" + md_table(header, table) + "\n")
    if lat_pts:
        one = all(v is not None for v in shared.values())
        parts.append(
            ("Latency: the original was timed once, interleaved with every ratio's pruned model in "
             "one session; " if one else
             "Latency: each run timed its pruned model against its own measurement of the "
             "original (shown in its row); ")
            + "speed-up = the original's ms / the model's ms, as shown; efficiency = speed-up / "
              "MAC ratio.\n")
        parts.append(plotter.save(plots.latency_vs_macs_figure(lat_pts), "latency_vs_macs.png") + "\n")
    if len(acc_pts) > 1:
        parts.append(plotter.save(plots.accuracy_vs_macs_figure(acc_pts), "accuracy_vs_macs.png")
                     + "\n")
    elif not any((r["report"].get("accuracy") or {}) for r in done):
        parts.append("No accuracy recorded: run the sweep with `--data NAME --finetune-epochs N` "
                     "to evaluate and fine-tune each pruned model.\n")
    parts.append(f"---\n{MAC_NOTE}; counted at batch 1 in eval mode.\n")
    return "\n".join(parts)


def _comparison(rep: Dict[str, Any], batch_size: int) -> Optional[Dict[str, Any]]:
    for c in (rep.get("latency") or {}).get("comparisons", []):
        if c["batch_size"] == batch_size:
            return c
    return None


# --------------------------------------------------------------------------------------------

def write_report(run_dir: str) -> Written:
    """Write ``run_dir/report.md`` (and its plots) from the files in ``run_dir``."""
    if not os.path.isdir(run_dir):
        raise UserError(f"run folder {run_dir!r} does not exist" if not os.path.exists(run_dir)
                        else f"{run_dir!r} is a file; give the run folder that holds report.json")
    plotter = _Plots(run_dir)
    sweep_path = os.path.join(run_dir, SWEEP_FILE)
    report_path = os.path.join(run_dir, REPORT_FILE)
    metrics_path = _metrics_in(run_dir)
    if os.path.isfile(sweep_path):
        text = sweep_markdown(run_dir, read_json(sweep_path), plotter)
    elif os.path.isfile(report_path):
        rep = read_json(report_path)
        if not isinstance(rep, dict) or "before" not in rep or "after" not in rep:
            raise UserError(f"{report_path!r} is not a tp-vgg prune report (no before/after counts)")
        text = run_markdown(run_dir, rep, read_metrics(metrics_path) if metrics_path else [],
                            plotter)
    elif metrics_path:
        records = read_metrics(metrics_path)
        if not records:
            raise UserError(f"{metrics_path!r} holds no records")
        text = ("# Training report\n\n"
                + _training_section(records, plotter, "Training")
                + f"\nBest test top-1: {_pct(max(r.get('test_top1') or 0 for r in records))}.\n")
    else:
        raise UserError(f"{run_dir!r} holds no {REPORT_FILE}, {SWEEP_FILE} or {METRICS_FILE}; give "
                        "a folder written by tp-vgg prune, sweep, train or finetune")
    out = os.path.join(run_dir, "report.md")
    write_text(out, text)
    return Written(out, plotter.written)
