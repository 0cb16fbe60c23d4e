"""Sparsity training: a regularizer added to the gradients after each backward pass, so that a
later structured pruning has something to cut.

* ``bn-l1`` -- Network Slimming (Liu et al. 2017): L1 on every BatchNorm gamma, i.e.
  ``grad(gamma) += reg * sign(gamma)`` (``tp.pruner.BNScalePruner.regularize``); prune afterwards
  with ``--importance bn-scale``;
* ``group-norm`` -- DepGraph's group-norm regularization of every weight coupled to a channel
  (conv and linear rows and columns, BN), stronger on the weaker groups
  (``tp.pruner.GroupNormPruner.regularize``); works without BatchNorm.

The layer producing the logits is never regularized. :func:`gamma_stats` summarizes the |gamma|
distribution for the report written before and after training.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn
import torch_pruning as tp

from tp_vgg.errors import UserError
from tp_vgg.models.zoo import ModelSpec, keep_mode
from tp_vgg.pruning import graph as pruning
from tp_vgg.pruning import mapping
from tp_vgg.registry import Registry

_BN = nn.modules.batchnorm._BatchNorm
DEFAULT_REG = 1e-4


@dataclass(frozen=True)
class Method:
    build: Callable[..., tp.pruner.BasePruner]   # (model, example, importance, reg, **common)
    needs_bn: bool


def _bn_l1(model, example, reg, **kw):
    return tp.pruner.BNScalePruner(model, example, importance=tp.importance.BNScaleImportance(),
                                   reg=reg, group_lasso=False, **kw)


def _group_norm(model, example, reg, **kw):
    return tp.pruner.GroupNormPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), reg=reg, **kw)


METHODS: Registry[Method] = Registry("sparsity method")
METHODS.register("bn-l1", Method(_bn_l1, True),
                 "L1 on BatchNorm gamma (Network Slimming); then prune with --importance bn-scale")
METHODS.register("group-norm", Method(_group_norm, False),
                 "group-norm regularization of all weights coupled to a channel (DepGraph)")


def check(method: str, reg: float) -> None:
    METHODS.get(method)
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not (reg > 0 and math.isfinite(reg)):
        raise UserError(f"--sparsity-reg must be a number > 0, got {reg!r}")


class Regularizer:
    """Adds the sparsity gradient to the model's ``.grad`` when called (after ``backward``,
    before the optimizer step; with a GradScaler, after ``unscale_``)."""

    @mapping.scoped
    def __init__(self, model: nn.Module, spec: ModelSpec, method: str, reg: float = DEFAULT_REG):
        check(method, reg)
        entry = METHODS.get(method)
        if entry.needs_bn and not any(isinstance(m, _BN) and m.affine for m in model.modules()):
            raise UserError(f"--sparsity {method} regularizes BatchNorm gammas but the model has no "
                            "affine BatchNorm layer; use --sparsity group-norm")
        self.model, self.method, self.reg = model, method, float(reg)
        device = next(model.parameters()).device
        example = spec.example_input(device=device)
        with keep_mode(model), warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")
            graph = pruning.build_graph(model, spec, example)
            protected = [s for m in pruning.output_layers(model, graph=graph) for s in m.modules()]
            self.pruner = entry.build(model, example, reg=self.reg, ignored_layers=protected,
                                      forward_fn=pruning._forward_fn(spec))
        self.before = gamma_stats(model)

    @mapping.scoped
    def __call__(self) -> None:
        with torch.no_grad():
            self.pruner.regularize(self.model)

    def report(self) -> Dict[str, Any]:
        return {"method": self.method, "reg": self.reg, "help": METHODS.help(self.method),
                "gamma_before": self.before, "gamma_after": gamma_stats(self.model)}


QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
THRESHOLDS = (1e-3, 1e-2, 1e-1)
HIST_EDGES = [0.0] + [10.0 ** (e / 2) for e in range(-8, 3)]   # 0, 1e-4, 3e-4, ..., 10


@torch.no_grad()
def gamma_stats(model: nn.Module) -> Optional[Dict[str, Any]]:
    """The distribution of |gamma| over every affine BatchNorm: quantiles, fractions below small
    thresholds, a histogram on log-spaced edges, and the mean per layer. None without BN."""
    layers, values = [], []
    for name, m in model.named_modules():
        if isinstance(m, _BN) and m.affine:
            g = m.weight.detach().abs().float().cpu()
            values.append(g)
            layers.append({"name": name, "channels": int(g.numel()), "mean": float(g.mean()),
                           "min": float(g.min()),
                           "below_1e-2": float((g < 1e-2).float().mean())})
    if not values:
        return None
    g = torch.cat(values)
    edges = torch.tensor(HIST_EDGES[1:-1])
    hist = torch.bincount(torch.bucketize(g, edges, right=True), minlength=len(HIST_EDGES) - 1)
    return {
        "channels": int(g.numel()),
        "quantiles": {f"{q:g}": float(torch.quantile(g, q)) for q in QUANTILES},
        "fraction_below": {f"{t:g}": float((g < t).float().mean()) for t in THRESHOLDS},
        "histogram": {"edges": HIST_EDGES, "counts": [int(c) for c in hist.tolist()]},
        "layers": layers,
    }


def summary(stats: Optional[Dict[str, Any]]) -> str:
    if not stats:
        return "no BatchNorm"
    q, f = stats["quantiles"], stats["fraction_below"]
    return (f"|gamma| median {q['0.5']:.3g} (10% {q['0.1']:.3g}, 90% {q['0.9']:.3g}); "
            f"{100 * f['0.01']:.1f}% below 1e-2, {100 * f['0.001']:.1f}% below 1e-3")


def plot_gamma(path: str, before: Optional[Dict[str, Any]], after: Optional[Dict[str, Any]],
               title: str = "") -> None:
    """Histogram of |gamma| before and after sparsity training (matplotlib Agg), atomic write."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tp_vgg.files import write_with

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for stats, label in ((before, "before"), (after, "after")):
        if stats:
            counts = stats["histogram"]["counts"]
            xs = list(range(len(counts)))
            ax.bar([x + (-0.2 if label == "before" else 0.2) for x in xs], counts, width=0.4,
                   label=label)
    edges = HIST_EDGES
    ax.set_xticks(range(len(edges) - 1))
    ax.set_xticklabels([f"<{e:.0e}" for e in edges[1:]], rotation=45, fontsize=7)
    ax.set_xlabel("|BN gamma|")
    ax.set_ylabel("channels")
    ax.set_title(title or "BatchNorm gamma before and after sparsity training")
    ax.legend()
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)



def finish(reg: Regularizer, out_dir: Optional[str], log: Callable[[str], None]) -> Dict[str, Any]:
    """After training: log the gamma distribution before/after; with ``out_dir`` write
    ``sparsity.json`` and ``bn_gamma.png`` there."""
    import os

    from tp_vgg.files import write_json

    rep = reg.report()
    log(f"sparsity {reg.method} (reg {reg.reg:g}): BN gamma before: {summary(rep['gamma_before'])}")
    log(f"sparsity {reg.method} (reg {reg.reg:g}): BN gamma after:  {summary(rep['gamma_after'])}")
    if out_dir is not None:
        write_json(os.path.join(out_dir, "sparsity.json"), rep)
        if rep["gamma_after"]:
            plot_gamma(os.path.join(out_dir, "bn_gamma.png"), rep["gamma_before"],
                       rep["gamma_after"], f"|BN gamma| before and after --sparsity {reg.method} "
                                           f"--sparsity-reg {reg.reg:g}")
    return rep
