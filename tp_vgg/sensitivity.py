"""Sensitivity analysis (Li et al. 2017, "Pruning Filters for Efficient ConvNets", section 4.1):
prune each layer alone at ratios 0.1 ... 0.9, evaluate without retraining, and turn the curves
into per-layer ratios for an accuracy budget -- sensitive layers are pruned less or not at all.

:func:`analyze` takes an ``evaluate(model) -> top-1`` callable, so the library does not care
where the data come from. :func:`recommend` gives, for every layer, the largest ratio of the grid
at which -- and at every smaller ratio -- pruning that layer alone costs at most ``budget``
points of top-1; layers that cannot be pruned within the budget are left out. :func:`run` is
`tp-vgg sensitivity`: a :class:`SensitivityStudy` loaded, analyzed, recommended and written.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from tp_vgg import evaluation, pruning
from tp_vgg.counting import count, human
from tp_vgg.criteria import DEFAULT_TAYLOR_BATCHES, IMPORTANCES, training_gradients
from tp_vgg.data import DataConfig, load_data
from tp_vgg.errors import UserError
from tp_vgg.files import ensure_dir, write_json, write_text, write_with
from tp_vgg.models import ModelSpec
from tp_vgg.report_json import MAC_NOTE, table
from tp_vgg.source import ModelSource, load_source

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
    """One curve per layer: top-1 against the ratio of that layer's channels removed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    n = max(len(res.layers) - 1, 1)
    for i, layer in enumerate(res.layers):
        curve = res.curve(layer)
        if curve:
            ax.plot([r["ratio"] for r in curve], [100 * r["top1"] for r in curve], marker="o",
                    markersize=3, color=cmap(i / n), label=layer)
    ax.axhline(100 * res.baseline_top1, color="black", linestyle="--", linewidth=1,
               label="unpruned")
    if budget is not None:
        ax.axhline(100 * res.baseline_top1 - budget, color="red", linestyle=":", linewidth=1,
                   label=f"budget -{budget:g} pt")
    ax.set_xlabel("fraction of the layer's filters removed (that layer alone, no retraining)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title or f"sensitivity to pruning ({res.importance})")
    ax.legend(fontsize=6, ncol=2 if len(res.layers) > 8 else 1, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The study: `tp-vgg sensitivity` as one call.

@dataclass
class SensitivityStudy:
    """What :func:`run` studies: the model (``source``), on ``data``'s test split (a seeded
    sample of ``eval_images``), each of ``layers`` (default all but the logits layer) pruned
    alone at ``ratios`` by ``importance``; ``budget`` top-1 points per layer sets the
    recommended ``--layer-ratios``. ``source_flags``: how the suggested `tp-vgg prune` command
    names the model (default ``--model NAME`` / ``--checkpoint FILE``). ``bn_batches``: each
    pruned copy's BatchNorm statistics are re-estimated on that many training batches before it
    is evaluated (EagleEye's adaptive-BN evaluation, which ranks pruned candidates far better
    than raw pruned accuracy); 0 evaluates the raw pruned copy."""

    source: ModelSource
    data: DataConfig
    ratios: Sequence[float] = DEFAULT_RATIOS
    importance: str = "l1"
    budget: float = 1.0
    layers: Optional[Sequence[str]] = None
    eval_images: Optional[int] = None
    batch_size: int = 256
    taylor_batches: Optional[int] = None
    output_layer: Optional[str] = None
    seed: int = 0
    device: Optional[str] = None
    source_flags: Optional[str] = None
    bn_batches: int = evaluation.DEFAULT_BN_RECALIBRATE  # re-estimate BN before each evaluation


def _subset(data, n: Optional[int], seed: int):
    if not n or n >= len(data.test_labels):
        return data
    idx = torch.randperm(len(data.test_labels), generator=torch.Generator().manual_seed(seed))[:n]
    idx = idx.sort().values
    return data.subset("test", idx)


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


def run(study: SensitivityStudy, out_dir: Optional[str] = None,
        log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Load, analyze, recommend; write ``out_dir/sensitivity.csv``, ``sensitivity.png``,
    ``layer_ratios.json`` and ``report.json`` (nothing without ``out_dir``); return the report."""
    if out_dir and os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir!r} is a file; give a folder")
    if study.taylor_batches and study.importance != "taylor":
        raise UserError("--taylor-batches applies to --importance taylor "
                        "(SensitivityStudy.taylor_batches)")
    loaded = load_source(study.source, log)
    model, spec = loaded.model, loaded.spec
    data = load_data(study.data, log)
    pre = evaluation.resolve_preprocessing(data, spec, loaded.preprocessing)
    test = _subset(data, study.eval_images, study.seed)
    gradients = (training_gradients(data, pre, spec, study.taylor_batches or DEFAULT_TAYLOR_BATCHES,
                                    study.seed) if study.importance == "taylor" else None)

    def evaluate(m):
        if study.bn_batches and m is not model:  # a pruned copy; the baseline keeps its own
            evaluation.recalibrate_on(m, spec, data, pre, study.bn_batches, device=study.device,
                                      seed=study.seed)
        return evaluation.top1(m, spec, test, pre, study.device, study.batch_size)

    res = analyze(model, spec, evaluate, ratios=study.ratios, importance=study.importance,
                  layers=study.layers, seed=study.seed, output_layer=study.output_layer,
                  gradients=gradients)
    ratios = recommend(res, study.budget)
    trial = _pruned_copy(model, spec, ratios, study.output_layer)
    after = count(trial if trial is not None else model, spec)
    source = study.source_flags or shlex.join(
        ["--checkpoint", study.source.checkpoint] if study.source.checkpoint else
        ["--model", spec.name])
    command = (f"tp-vgg prune {source} --ratio 0 --layer-ratios "
               f"{shlex.quote(json.dumps(ratios))} --out DIR")
    rep = {
        "units": MAC_NOTE, "model": spec.to_dict(), "data": data.name,
        "test_images": len(test.test_labels), "importance": study.importance,
        "budget_points": study.budget, "baseline_top1": res.baseline_top1,
        "bn_recalibrate_batches": study.bn_batches,
        "layer_ratios": ratios,
        "predicted": {"macs_before": res.baseline_macs, "macs_after": after.macs,
                      "macs_reduction": res.baseline_macs / max(after.macs, 1),
                      "note": "layers pruned together may cost more than each alone; fine-tune"},
        "command": command, "rows": res.rows, "skipped": res.skipped,
    }
    if out_dir:
        ensure_dir(out_dir)
        write_csv(os.path.join(out_dir, "sensitivity.csv"), res)
        plot(os.path.join(out_dir, "sensitivity.png"), res, study.budget,
             f"{spec.name}: sensitivity to pruning ({study.importance}, {data.name})")
        write_text(os.path.join(out_dir, "layer_ratios.json"), json.dumps(ratios, indent=2) + "\n")
        write_json(os.path.join(out_dir, "report.json"), rep)
    log(format_table(res, ratios))
    log(f"budget {study.budget:g} top-1 points per layer: {len(ratios)} of {len(res.layers)} "
        f"layers pruned, {human(res.baseline_macs)} -> {human(after.macs)} MACs "
        f"({res.baseline_macs / max(after.macs, 1):.2f}x fewer) before fine-tuning")
    log(f"next: {command}")
    if out_dir:
        log(f"wrote {os.path.join(out_dir, 'sensitivity.csv')}, sensitivity.png, "
            "layer_ratios.json, report.json")
    return rep
