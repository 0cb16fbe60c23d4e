"""PNG plots for reports, drawn headless (matplotlib's Agg canvas; pyplot's global state is never
touched). Each ``*_figure`` function takes plain report data and returns a Figure;
:func:`save_png` writes one atomically."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tp_vgg.files import write_with

MAC_AXIS = "MACs (multiply-adds, conv + linear)"


def _figure(width: float = 8.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str) -> None:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))


def _prunable(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [r for r in rows if r.get("type") in ("Conv2d", "Linear")]


def _bars(rows: Sequence[Dict[str, Any]], before: str, after: str, ylabel: str, title: str,
          log: bool = False) -> Figure:
    rows = _prunable(rows)
    fig = _figure(max(6.0, 0.45 * len(rows) + 2), 4.2)
    ax = fig.add_subplot()
    xs = range(len(rows))
    w = 0.4
    ax.bar([x - w / 2 for x in xs], [r[before] or 0 for r in rows], w, label="before")
    if any(after in r for r in rows):
        ax.bar([x + w / 2 for x in xs], [r.get(after) or 0 for r in rows], w, label="after")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["name"] for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return fig


def channels_figure(rows: Sequence[Dict[str, Any]]) -> Figure:
    """Output channels of every Conv2d/Linear before and after pruning (report.json "layers")."""
    return _bars(rows, "out_channels_before", "out_channels_after", "output channels",
                 "Channels per layer")


def macs_figure(rows: Sequence[Dict[str, Any]]) -> Figure:
    """MACs of every Conv2d/Linear before and after pruning (log scale)."""
    return _bars(rows, "macs_before", "macs_after", "MACs (multiply-adds), batch 1",
                 "MACs per layer", log=True)


def _scatter_lines(ax, series: Dict[str, List[tuple]], annotate: bool = True) -> None:
    for label, pts in series.items():
        pts = sorted(pts, key=lambda p: p[0])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        if annotate:
            for p in pts:
                if len(p) > 2 and p[2]:
                    ax.annotate(str(p[2]), (p[0], p[1]), textcoords="offset points",
                                xytext=(4, 4), fontsize=7)


def accuracy_vs_macs_figure(points: Sequence[Dict[str, Any]]) -> Figure:
    """``points``: dicts with ``macs``, ``top1`` (fraction), ``series`` (curve name, e.g.
    'pruned' / 'fine-tuned') and an optional ``label`` (e.g. the ratio)."""
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot()
    series: Dict[str, List[tuple]] = {}
    for p in points:
        if p.get("top1") is None:
            continue
        series.setdefault(p.get("series", "top-1"), []).append(
            (p["macs"], 100 * p["top1"], p.get("label")))
    _scatter_lines(ax, series)
    ax.set_xscale("log")
    ax.set_xlabel(MAC_AXIS)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Accuracy vs MACs")
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    return fig


def latency_vs_macs_figure(points: Sequence[Dict[str, Any]]) -> Figure:
    """``points``: dicts with ``macs``, ``latency_ms``, ``batch_size`` and optional ``label``
    and ``series`` (e.g. "onnxruntime, batch 64"; default "batch B"); one curve per series, both
    axes log."""
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot()
    series: Dict[str, List[tuple]] = {}
    for p in points:
        series.setdefault(p.get("series") or f"batch {p['batch_size']}", []).append(
            (p["macs"], p["latency_ms"], p.get("label")))
    _scatter_lines(ax, series)
    for i, (label, pts) in enumerate(series.items()):  # where latency would be if it fell with MACs
        ref = max(pts, key=lambda p: p[0])
        xs = sorted({p[0] for p in pts})
        if len(xs) > 1:
            ax.plot(xs, [ref[1] * x / ref[0] for x in xs], linestyle="--", linewidth=1,
                    color=f"C{i}", alpha=0.6, label=f"{label}: proportional to MACs")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(MAC_AXIS + ", batch 1")
    ax.set_ylabel("median latency per batch (ms)")
    ax.set_title("Latency vs MACs")
    ax.grid(alpha=0.3, which="both")
    if series:
        ax.legend()
    return fig


def training_figure(records: Sequence[Dict[str, Any]], title: Optional[str] = None) -> Figure:
    """Test (and train) top-1 per epoch from metrics.jsonl records."""
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    for key, label in (("train_top1", "train top-1"), ("test_top1", "test top-1")):
        pts = [(r["epoch"], 100 * r[key]) for r in records
               if r.get(key) is not None and r.get("epoch") is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title or "Training")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
