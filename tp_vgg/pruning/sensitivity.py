"""Sensitivity analysis (Li et al. 2017, "Pruning Filters for Efficient ConvNets", section 4.1):
prune each layer alone at ratios 0.1 ... 0.9, evaluate without retraining, and turn the curves
into per-layer ratios for an accuracy budget -- sensitive layers are pruned less or not at all.

:func:`analyze` takes an ``evaluate(model) -> top-1`` callable, so the library does not care
where the data come from. :func:`recommend` gives, for every layer, the largest ratio of the grid
at which -- and at every smaller ratio -- pruning that layer alone costs at most ``budget``
points of top-1; layers that cannot be pruned within the budget are left out.
:func:`tp_vgg.jobs.sensitivity.run_sensitivity` is `tp-vgg sensitivity`: a study loaded, analyzed,
recommended and written.
"""

from __future__ import annotations

import copy
import csv
import io
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch.nn as nn

from tp_vgg.errors import UserError
from tp_vgg.files import write_text
from tp_vgg.models.counting import count
from tp_vgg.models.zoo import ModelSpec
from tp_vgg.pruning import graph as pruning
from tp_vgg.pruning.criteria import IMPORTANCES
from tp_vgg.report import plots
from tp_vgg.report.summary import table

DEFAULT_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))
CSV_FIELDS = ["layer", "ratio", "channels_before", "channels_after", "macs", "top1", "drop_points"]


@dataclass
class Sensitivity:
    baseline_top1: float
    baseline_macs: int
    layers: List[str]
    ratios: List[float]
    importance: str
    rows: List[Dict[str, Any]] = field(default_factory=list)
    skipped: List[Dict[str, Any]] = field(default_factory=list)   # ratios a layer cannot take

    def curve(self, layer: str) -> List[Dict[str, Any]]:
        return sorted((r for r in self.rows if r["layer"] == layer), key=lambda r: r["ratio"])

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def check_ratios(ratios: Sequence[float]) -> List[float]:
    out = sorted({float(r) for r in ratios})
    if not out or any(not 0 < r < 1 for r in out):
        raise UserError(f"--ratios must be numbers in (0, 1), got {list(ratios)!r}")
    return out


def prunable_layers(model: nn.Module, spec: ModelSpec, output_layer: Optional[str] = None) -> List[str]:
    """Every Conv2d/Linear except the one producing the logits, in model order."""
    protected = set(pruning.output_layer_names(model, spec, output_layer))
    return [n for n, m in model.named_modules()
            if isinstance(m, pruning.PRUNABLE) and n not in protected]


def analyze(model: nn.Module, spec: ModelSpec, evaluate: Callable[[nn.Module], float],
            ratios: Sequence[float] = DEFAULT_RATIOS, importance: str = "l1",
            layers: Optional[Sequence[str]] = None, seed: int = 0,
            output_layer: Optional[str] = None,
            gradients: Optional[Callable[[nn.Module], None]] = None,
            log: Callable[[str], None] = print) -> Sensitivity:
    """Prune a copy of ``model`` at each ratio, one layer at a time, and evaluate it."""
    ratios = check_ratios(ratios)
    IMPORTANCES.get(importance)
    all_layers = prunable_layers(model, spec, output_layer)
    if layers:
        bad = [l for l in layers if l not in all_layers]
        if bad:
            raise UserError(f"--layers names {bad[0]!r}, not a prunable layer; accepted: "
                            + ", ".join(all_layers))
        all_layers = [l for l in all_layers if l in set(layers)]
    base = count(model, spec)
    res = Sensitivity(baseline_top1=evaluate(model), baseline_macs=base.macs, layers=all_layers,
                      ratios=ratios, importance=importance)
    log(f"unpruned: top-1 {100 * res.baseline_top1:.2f}%; {len(all_layers)} layers x "
        f"{len(ratios)} ratios")
    before = pruning.out_channels(model)
    for layer in all_layers:
        line = []
        for r in ratios:
            m = copy.deepcopy(model)
            cfg = pruning.PruneConfig(ratio=0.0, importance=importance, layer_ratios={layer: r},
                                      seed=seed, output_layer=output_layer)
            try:
                result = pruning.prune(m, spec, cfg, gradients=gradients)
            except UserError as e:   # e.g. the ratio would leave the layer no channel
                res.skipped.append({"layer": layer, "ratio": r, "why": str(e)})
                continue
            top1 = evaluate(m)
            res.rows.append({"layer": layer, "ratio": r, "channels_before": before[layer],
                             "channels_after": result.channels_after[layer],
                             "macs": count(m, spec).macs, "top1": top1,
                             "drop_points": 100 * (res.baseline_top1 - top1)})
            line.append(f"{r:g}:{100 * top1:.1f}")
        log(f"{layer}: " + " ".join(line))
    return res


def recommend(res: Sensitivity, budget: float) -> Dict[str, float]:
    """Per-layer ratios for ``--layer-ratios``: for each layer the largest ratio up to which every
    tried ratio costs at most ``budget`` points of top-1 (that layer pruned alone)."""
    if not budget >= 0:
        raise UserError(f"--budget must be a number of top-1 points >= 0, got {budget!r}")
    out: Dict[str, float] = {}
    for layer in res.layers:
        best = 0.0
        for row in res.curve(layer):
            if row["drop_points"] > budget:
                break
            best = row["ratio"]
        if best > 0:
            out[layer] = best
    return out


def csv_text(res: Sensitivity) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in res.rows:
        w.writerow({k: (f"{row[k]:.6f}" if isinstance(row[k], float) else row[k])
                    for k in CSV_FIELDS})
    return buf.getvalue()


def write_csv(path: str, res: Sensitivity) -> None:
    write_text(path, csv_text(res))


def plot(path: str, res: Sensitivity, budget: Optional[float] = None, title: str = "") -> None:
    """One curve per layer: top-1 against the ratio of that layer's channels removed; the legend
    beside the axes (headless, atomic: :mod:`tp_vgg.report.plots`)."""
    from matplotlib import colormaps

    fig = plots.new_figure(8.0, 4.6)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"]
    n = max(len(res.layers) - 1, 1)
    ys = [100 * res.baseline_top1]
    for i, layer in enumerate(res.layers):
        curve = res.curve(layer)
        if curve:
            ys += [100 * r["top1"] for r in curve]
            ax.plot([r["ratio"] for r in curve], [100 * r["top1"] for r in curve], marker="o",
                    markersize=4, color=cmap(0.9 * i / n), label=layer)
    ax.axhline(100 * res.baseline_top1, color="black", linestyle="--", linewidth=1.2,
               label="unpruned")
    if budget is not None:
        ax.axhline(100 * res.baseline_top1 - budget, color="red", linestyle=":", linewidth=1.5,
                   label=f"budget: {budget:g} point{'' if budget == 1 else 's'} below")
        ys.append(100 * res.baseline_top1 - budget)
    ax.set_xticks(list(res.ratios))
    ax.set_xticklabels([f"{r:g}" for r in res.ratios])
    plots.style(ax, "fraction of the layer's filters removed (that layer alone, no retraining)",
                 "top-1 (%)", title or f"sensitivity to pruning ({res.importance})")
    plots.top1_limits(ax, ys)
    ax.grid(alpha=0.3)
    plots.legend_beside(ax, ncol=2 if len(res.layers) > 12 else 1)
    plots.save_png(fig, path)


def _pruned_copy(model: nn.Module, spec: ModelSpec, ratios: Dict[str, float],
                 output_layer: Optional[str]) -> Optional[nn.Module]:
    if not ratios:
        return None
    m = copy.deepcopy(model)
    pruning.prune(m, spec, pruning.PruneConfig(ratio=0.0, layer_ratios=ratios,
                                               output_layer=output_layer))
    return m


def format_table(res: Sensitivity, ratios: Dict[str, float]) -> str:
    header = ["layer"] + [f"{r:g}" for r in res.ratios] + ["chosen"]
    rows = []
    for layer in res.layers:
        by_ratio = {r["ratio"]: r for r in res.curve(layer)}
        rows.append([layer] + [f"{100 * by_ratio[r]['top1']:.1f}" if r in by_ratio else "-"
                               for r in res.ratios] + [f"{ratios.get(layer, 0):g}"])
    text = table(header, rows)
    return (f"top-1 (%) with one layer pruned at each ratio (unpruned "
            f"{100 * res.baseline_top1:.2f}%):\n" + text)
