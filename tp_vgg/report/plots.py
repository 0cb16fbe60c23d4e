"""PNG plots for reports, drawn headless (matplotlib's Agg canvas; pyplot's global state is never
touched). Each ``*figure`` function takes plain report data and returns a Figure;
:func:`save_png` writes one atomically.

Made to be read at 100 % in report.md: text of 10 pt or more at the default size, legends
beside the axes rather than over the data, plain numbers on log axes (250K, 1M; 0.5, 2 ms),
point labels (the pruning ratios) as ticks of a top axis, thinned so that none overlap, and
whole-number epoch ticks. A series of models that were not fine-tuned is never joined by a
line to one that was: the original is a point of its own.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import (FixedLocator, FuncFormatter, LogLocator, MaxNLocator,
                               NullFormatter, NullLocator)

from tp_vgg.files import write_with

MAC_AXIS = "MACs (multiply-adds, conv + linear)"
DPI = 110
FONT = 10          # tick labels, legends, point labels (pt)
LABEL_FONT = 11    # axis labels
TITLE_FONT = 12
ORIGINAL = "original"  # the accuracy series of the unpruned model: a marker, never a line
MIN_TOP1_SPAN = 5.0    # top-1 axes span at least this many points (a flat curve stays flat)


def new_figure(width: float = 8.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str) -> None:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))


def style(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel, fontsize=LABEL_FONT)
    ax.set_ylabel(ylabel, fontsize=LABEL_FONT)
    ax.set_title(title, fontsize=TITLE_FONT)
    ax.tick_params(labelsize=FONT)


def legend_beside(ax, **kw) -> None:
    """The legend to the right of the axes, where it covers no data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=FONT,
              frameon=False, **kw)


# --------------------------------------------------------------------------------------------
# Numbers on axes.

def si(v: float) -> str:
    """250000 -> '250K', 1e6 -> '1M', 2.5e6 -> '2.5M' (tick labels)."""
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def si_over(span: float, top: float) -> Callable[[float], str]:
    """Tick labels in ``top``'s unit with as many decimals as ticks ``span`` apart need (a search
    window of 2.40M-2.42M MACs reads 2.400M, 2.405M, ..., not 2.4M twice)."""
    scale, unit = next(((s, u) for s, u in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))
                        if abs(top) >= s), (1.0, ""))
    step = span / scale / 4 if span > 0 else 1.0
    decimals = max(0, -math.floor(math.log10(step)))
    return lambda v: f"{v / scale:.{decimals}f}{unit}"


def _plain(v: float) -> str:
    return f"{v:.3g}"


def _thin(values: Sequence[float], pos: Callable[[float], float], min_gap: float) -> List[float]:
    """``values`` without those closer than ``min_gap`` (in axis fraction) to one kept before
    (the larger first), so that their labels cannot overlap."""
    kept: List[float] = []
    for v in sorted(values, reverse=True):
        if all(abs(pos(v) - pos(k)) >= min_gap for k in kept):
            kept.append(v)
    return sorted(kept)


def _log_pos(lo: float, hi: float) -> Callable[[float], float]:
    a, b = math.log10(lo), math.log10(hi)
    return lambda v: (math.log10(v) - a) / (b - a)


def _log_ticks(ax, which: str, fmt: Callable[[float], str]) -> None:
    """Plain labels on a log axis: decades, or 1-2-5 steps over a few decades, 1-2-3-5 over
    about one, a few round linear steps when narrower; thinned so that labels never touch; no
    minor labels."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    if lo <= 0:
        return
    decades = math.log10(hi / lo)
    subs = (1.0,) if decades > 4 else (1.0, 2.0, 5.0) if decades > 1.2 else (1.0, 2.0, 3.0, 5.0)
    ticks = [t for t in LogLocator(base=10, subs=subs).tick_values(lo, hi) if lo <= t <= hi]
    if len(ticks) < 3:  # under about a decade: round numbers at even linear steps
        ticks = [t for t in MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
                 if lo <= t <= hi and t > 0]
    ticks = _thin(ticks, _log_pos(lo, hi), 0.12 if which == "x" else 0.07)
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    axis.set_minor_formatter(NullFormatter())


def _point_labels(ax, labels: Dict[float, str], title: str = "", log: bool = True) -> None:
    """``labels`` (x -> text, e.g. MACs -> the ratio) as the ticks of a top axis: each label
    once, however many series share the point, and thinned (the larger x first) so that no two
    lie closer than the longest label is wide."""
    if not labels:
        return
    width_in = ax.figure.get_figwidth() * ax.get_position().width
    min_gap = (0.09 * max(len(t) for t in labels.values()) + 0.12) / width_in
    lo, hi = ax.get_xlim()
    pos = _log_pos(lo, hi) if log else (lambda x: (x - lo) / (hi - lo))
    xs = _thin([x for x in labels if x > 0 or not log], pos, min_gap)
    kept = [(x, labels[x]) for x in xs]
    top = ax.twiny()
    if log:
        top.set_xscale("log")
    top.set_xlim(lo, hi)
    top.xaxis.set_major_locator(FixedLocator([x for x, _ in kept]))
    top.xaxis.set_major_formatter(FuncFormatter(lambda v, i: dict(kept).get(v, "")))
    top.xaxis.set_minor_locator(NullLocator())
    top.tick_params(labelsize=FONT)
    if title:
        top.set_xlabel(title, fontsize=FONT)


def top1_limits(ax, values: Sequence[float]) -> None:
    """At least MIN_TOP1_SPAN points of top-1 shown, within 0-100."""
    if not values:
        return
    lo, hi = min(values), max(values)
    pad = max(0.0, MIN_TOP1_SPAN - (hi - lo)) / 2 + 0.05 * max(hi - lo, 1.0)
    lo, hi = max(0.0, lo - pad), min(100.0, hi + pad)
    if hi - lo < MIN_TOP1_SPAN:
        lo, hi = (0.0, MIN_TOP1_SPAN) if lo <= 0 else (100.0 - MIN_TOP1_SPAN, 100.0)
    ax.set_ylim(lo, hi)


# --------------------------------------------------------------------------------------------
# Per-layer bars.

def _prunable(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [r for r in rows if r.get("type") in ("Conv2d", "Linear")]


def _bars(rows: Sequence[Dict[str, Any]], before: str, after: str, ylabel: str, title: str,
          fmt: Callable[[float], str] = _plain) -> Figure:
    """One bar per layer on a linear axis: with "after" counts, the kept part and the removed
    part stacked (the bar's height is the count before) and the share removed above it."""
    rows = _prunable(rows)
    fig = new_figure(max(6.5, 0.55 * len(rows) + 2.5), 4.4)
    ax = fig.add_subplot()
    xs = list(range(len(rows)))
    full = [r.get(before) or 0 for r in rows]
    if any(after in r for r in rows):
        kept = [r.get(after) if r.get(after) is not None else b for r, b in zip(rows, full)]
        removed = [max(b - k, 0) for b, k in zip(full, kept)]
        ax.bar(xs, kept, 0.7, color="C0", label="kept")
        ax.bar(xs, removed, 0.7, bottom=kept, color="C1", alpha=0.45, hatch="//",
               edgecolor="C1", linewidth=0, label="removed")
        for x, b, r in zip(xs, full, removed):
            if b and r:
                ax.annotate(f"-{100 * r / b:.0f}%", (x, b), textcoords="offset points",
                            xytext=(0, 2), ha="center", va="bottom", fontsize=FONT - 1)
        ax.set_ylim(0, max(full, default=1) * 1.12 or 1)
    else:
        ax.bar(xs, full, 0.7, color="C0", label="before")
    ax.set_xticks(xs)
    ax.set_xticklabels([r["name"] for r in rows], rotation=45, ha="right",
                       rotation_mode="anchor", fontsize=FONT)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    style(ax, "", ylabel, title)
    legend_beside(ax)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return fig


def channels_figure(rows: Sequence[Dict[str, Any]]) -> Figure:
    """Output channels of every Conv2d/Linear: kept and removed (report.json "layers")."""
    return _bars(rows, "out_channels_before", "out_channels_after", "output channels",
                 "Channels per layer (bar: before; the share removed above it)")


def macs_figure(rows: Sequence[Dict[str, Any]]) -> Figure:
    """MACs of every Conv2d/Linear: kept and removed, on a linear axis."""
    return _bars(rows, "macs_before", "macs_after", "MACs (multiply-adds), batch 1",
                 "MACs per layer (bar: before; the share removed above it)", fmt=si)


def sparsity_figure(rows: Sequence[Dict[str, Any]], total: Optional[float] = None) -> Figure:
    """An unstructured run: the share of each Conv2d/Linear layer's weights set to zero
    (report.json ``unstructured.layers``), and the whole model's as a dashed line."""
    rows = list(rows)
    fig = new_figure(max(6.5, 0.55 * len(rows) + 2.5), 4.4)
    ax = fig.add_subplot()
    xs = list(range(len(rows)))
    ys = [100 * (r.get("sparsity") or 0.0) for r in rows]
    ax.bar(xs, ys, 0.7, color="C1", label="zeroed")
    for x, y in zip(xs, ys):
        ax.annotate(f"{y:.0f}%", (x, y), textcoords="offset points", xytext=(0, 2),
                    ha="center", va="bottom", fontsize=FONT - 1)
    if total is not None:
        ax.axhline(100 * total, linestyle="--", linewidth=1, color="gray",
                   label=f"all layers: {100 * total:.1f}%")
    ax.set_ylim(0, 112)
    ax.set_xticks(xs)
    ax.set_xticklabels([r["name"] for r in rows], rotation=45, ha="right",
                       rotation_mode="anchor", fontsize=FONT)
    style(ax, "", "weights set to zero (%)", "Sparsity per layer (unstructured)")
    legend_beside(ax)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return fig


# --------------------------------------------------------------------------------------------
# Trade-off curves.

def _labels_of(points: Sequence[Dict[str, Any]]) -> Dict[float, str]:
    out: Dict[float, str] = {}
    for p in points:
        if p.get("label") not in (None, ""):
            out.setdefault(p["macs"], str(p["label"]))
    return out


def _label_title(labels: Dict[float, str]) -> str:
    try:
        [float(v) for v in labels.values()]
    except ValueError:
        return ""
    return "pruning ratio"


def accuracy_vs_macs_figure(points: Sequence[Dict[str, Any]]) -> Figure:
    """``points``: dicts with ``macs``, ``top1`` (fraction), ``series`` (curve name, e.g.
    'pruned' / 'fine-tuned'; ``"original"``: the unpruned model, drawn as a point, joined to
    nothing) and an optional ``label`` (e.g. the ratio, shown on the top axis)."""
    fig = new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    series: Dict[str, List[tuple]] = {}
    for p in points:
        if p.get("top1") is None:
            continue
        series.setdefault(p.get("series", "top-1"), []).append((p["macs"], 100 * p["top1"]))
    for label, pts in series.items():
        pts = sorted(pts)
        if label == ORIGINAL:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="none", marker="*",
                    markersize=13, color="black", label="original (not pruned)")
        else:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log")
    style(ax, MAC_AXIS, "test top-1 (%)", "Accuracy vs MACs")
    top1_limits(ax, [y for pts in series.values() for _, y in pts])
    ax.margins(x=0.08)
    _log_ticks(ax, "x", si)
    ax.grid(alpha=0.3)
    labels = _labels_of([p for p in points if p.get("top1") is not None])
    _point_labels(ax, labels, _label_title(labels))
    if series:
        legend_beside(ax)
    return fig


def latency_vs_macs_figure(points: Sequence[Dict[str, Any]]) -> Figure:
    """``points``: dicts with ``macs``, ``latency_ms``, ``batch_size`` and optional ``label``
    (shown on the top axis) and ``series`` (e.g. "onnxruntime, batch 64"; default "batch B");
    one curve per series, both axes log, and dashed where latency would be had it fallen in
    proportion to MACs from the largest model."""
    fig = new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    series: Dict[str, List[tuple]] = {}
    for p in points:
        series.setdefault(p.get("series") or f"batch {p['batch_size']}", []).append(
            (p["macs"], p["latency_ms"]))
    handles = []
    for i, (label, pts) in enumerate(series.items()):
        pts = sorted(pts)
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{i}",
                          label=label)
        handles.append(line)
        ref = max(pts, key=lambda p: p[0])
        xs = sorted({p[0] for p in pts})
        if len(xs) > 1:
            ax.plot(xs, [ref[1] * x / ref[0] for x in xs], linestyle="--", linewidth=1,
                    color=f"C{i}", alpha=0.6, label=f"{label}: proportional to MACs")
    if any(len({p[0] for p in pts}) > 1 for pts in series.values()):
        handles.append(Line2D([], [], linestyle="--", linewidth=1, color="gray",
                              label="if latency fell\nin proportion to MACs"))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(x=0.08, y=0.1)
    style(ax, MAC_AXIS + ", batch 1", "median ms per batch", "Latency vs MACs")
    _log_ticks(ax, "x", si)
    _log_ticks(ax, "y", _plain)
    ax.grid(alpha=0.3, which="both")
    labels = _labels_of(points)
    _point_labels(ax, labels, _label_title(labels))
    if series:
        legend_beside(ax, handles=handles)
    return fig


def search_figure(search: Dict[str, Any]) -> Figure:
    """``--search``: every candidate's held-out score against its MACs (or predicted ms), with
    uniform (candidate 0) and the chosen plan marked."""
    rows = [r for r in search.get("rows", []) if r.get("score") is not None]
    ms = search.get("budget", {}).get("kind") == "ms" and all("predicted_ms" in r for r in rows)
    x = [r["predicted_ms"] if ms else r["macs"] for r in rows]
    y = [100 * r["score"] for r in rows]
    fig = new_figure(7.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    others = [i for i, r in enumerate(rows) if r["id"] != 0]
    ax.scatter([x[i] for i in others], [y[i] for i in others], s=16, alpha=0.6,
               label="candidates")
    for i, r in enumerate(rows):
        if r["id"] == 0:
            ax.scatter([x[i]], [y[i]], marker="*", s=200, color="black",
                       label="uniform (candidate 0)", zorder=3)
        if r["id"] == search.get("chosen"):
            ax.scatter([x[i]], [y[i]], marker="o", s=110, facecolors="none", edgecolors="red",
                       linewidths=2, label="chosen", zorder=4)
    if not ms and x:
        fmt = si_over(max(x) - min(x), max(x))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    style(ax, "predicted latency (ms)" if ms else MAC_AXIS,
          "held-out top-1 after adaptive BN (%)", "Width search: candidates within the budget")
    legend_beside(ax)
    return fig


def training_figure(records: Sequence[Dict[str, Any]], title: Optional[str] = None,
                    start_top1: Optional[float] = None) -> Figure:
    """Test (and train) top-1 per epoch from metrics.jsonl records, on whole-number epoch ticks;
    ``start_top1`` (a fraction): the test top-1 the run started from, drawn at epoch 0 (a
    fine-tuning run: the pruned model's)."""
    fig = new_figure(6.5, 4.0)
    ax = fig.add_subplot()
    ys: List[float] = []
    epochs: List[int] = []
    for key, label in (("train_top1", "train top-1"), ("test_top1", "test top-1")):
        pts = [(r["epoch"], 100 * r[key]) for r in records
               if r.get(key) is not None and r.get("epoch") is not None]
        if key == "test_top1" and start_top1 is not None:
            pts = [(0, 100 * start_top1)] + pts
            label += " (epoch 0: pruned)"
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            ys += [p[1] for p in pts]
            epochs += [p[0] for p in pts]
    if epochs:
        lo, hi = min(epochs), max(epochs)
        ax.set_xlim(lo - 0.5, hi + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    style(ax, "epoch", "top-1 (%)", title or "Training")
    top1_limits(ax, ys)
    ax.grid(alpha=0.3)
    if ys:
        legend_beside(ax)
    return fig


# --------------------------------------------------------------------------------------------
# `tp-vgg compare`.

def compare_figure(cmp: Dict[str, Any]) -> Figure:
    """compare.json drawn: left, per layer the Jaccard index of each run's removed channels with
    the first run's (a short black mark: what a random choice of as many channels would give);
    right, each run's top-1 (else the pruned ms at the smallest batch, else params) against its
    MACs."""
    runs, layers = cmp["runs"], cmp["layers"]
    fig = new_figure(max(11.0, 0.5 * len(layers) * max(len(runs) - 1, 1) + 7.0), 4.6)
    ax = fig.add_subplot(1, 2, 1)
    others = list(range(1, len(runs)))
    width = 0.8 / max(len(others), 1)
    xs = list(range(len(layers)))
    for k, i in enumerate(others):
        pos = [x - 0.4 + width * (k + 0.5) for x in xs]
        ys = [row["jaccard"][i] if row["jaccard"][i] is not None else 0.0 for row in layers]
        ax.bar(pos, ys, width * 0.9, color=f"C{k}", label=f"{runs[i]['label']} vs "
               f"{runs[0]['label']}")
        for x, row in zip(pos, layers):
            c, a, b = row["chance_shared"][i], row["removed"][0], row["removed"][i]
            if c is not None and a + b - c > 0:
                ax.plot([x - width * 0.4, x + width * 0.4], [c / (a + b - c)] * 2, color="black",
                        linewidth=1.5)
    ax.plot([], [], color="black", linewidth=1.5, label="random choice (expected)")
    ax.set_ylim(0, 1.08)
    ax.set_xticks(xs)
    ax.set_xticklabels([row["layer"] for row in layers], rotation=45, ha="right",
                       rotation_mode="anchor", fontsize=FONT)
    style(ax, "", "Jaccard index (shared / union)", "Removed channels: overlap with the first run")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32), fontsize=FONT, frameon=False,
              ncol=2)
    right = fig.add_subplot(1, 2, 2)
    if any(r.get("top1") is not None for r in runs):
        pts = [(r["macs"], 100 * r["top1"], r["label"]) for r in runs if r.get("top1") is not None]
        ylabel = "test top-1 (%)"
    else:
        sizes = sorted({b for r in runs if r.get("latency") for b in r["latency"]["batch_sizes"]},
                       key=int)
        if sizes:
            b = sizes[0]
            pts = [(r["macs"], r["latency"]["batch_sizes"][b]["pruned_ms"], r["label"])
                   for r in runs if r.get("latency") and b in r["latency"]["batch_sizes"]]
            ylabel = f"pruned model, median ms per batch of {b}"
        else:
            pts = [(r["macs"], r["params"], r["label"]) for r in runs]
            ylabel = "params"
            right.yaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)))
    same: Dict[tuple, List[str]] = {}  # runs at the same point share one marker and label
    for x, y, label in pts:
        same.setdefault((x, y), []).append(label)
    for (x, y), labels in same.items():
        right.plot([x], [y], marker="o", linestyle="none", color="black", markersize=7)
        right.annotate(", ".join(labels), (x, y), textcoords="offset points", xytext=(6, 4),
                       fontsize=FONT)
    right.margins(x=0.25, y=0.25)
    right.xaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)))
    style(right, MAC_AXIS, ylabel, "Runs")
    right.grid(alpha=0.3)
    return fig
