"""Channel-ranking criteria, each a torch-pruning importance class in the ``IMPORTANCES``
registry (``PruneConfig.importance``, ``--importance``):

* ``l1``, ``l2`` -- filter norms (Li et al. 2017), :class:`FilterNormImportance`;
* ``random`` -- a seeded baseline;

* ``bn-scale`` -- Network Slimming (Liu et al. 2017): |gamma| of the BatchNorm after each channel
  (``tp.importance.BNScaleImportance``); pair it with ``tp-vgg train --sparsity bn-l1``;
* ``fpgm`` -- filters near the geometric median of their layer are redundant (He et al. 2019,
  ``tp.importance.FPGMImportance``);
* ``lamp`` -- layer-adaptive magnitude scores, comparable across layers, for ``--global``
  (Lee et al. 2021, ``tp.importance.LAMPImportance``);
* ``taylor`` -- first-order Taylor estimate of the loss change, |w * dL/dw| summed over the
  group (Molchanov et al. 2019, ``tp.importance.GroupTaylorImportance``); the gradients come from
  a few batches of data run forward and backward by :class:`GradientBatches`;

Two rankings made to compare channels *across* layers, for ``--global`` and
``--target-latency`` (the per-layer normalization of the criteria above makes every layer's mean
1, so a global ranking cannot tell that one layer matters more than another):

* ``taylor-raw`` -- the same Taylor estimate, with the gradients accumulated over the batches and
  *not* normalized per layer: an estimate of the loss change in the same units for every layer
  (HALP, Shen et al. 2022, ranks by it inside its latency knapsack);
* ``group-norm`` -- the L2 norm of every weight coupled to a channel (DepGraph's group norm,
  ``tp.importance.GroupMagnitudeImportance(p=2)``), normalized per group by its maximum, as
  Torch-Pruning's CIFAR benchmarks do; the criterion of the DepGraph recipe (after
  ``--sparsity group-norm``).

A criterion may define two optional hooks that :func:`tp_vgg.pruning.graph.prune` calls:

* ``check(pruner, model, gradients) -> notes``: raise :class:`UserError` when it cannot apply
  (``bn-scale`` on a model without BatchNorm, ``taylor`` without data) instead of silently pruning
  nothing; return notes for the report (e.g. layers a criterion leaves alone);
* ``prepare(model, gradients)``: called before each ranking (``taylor`` computes gradients of the
  current, possibly already pruned and fine-tuned, model).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from tp_vgg.errors import UserError
from tp_vgg.models.zoo import keep_mode, select_logits
from tp_vgg.registry import Registry


class FilterNormImportance(tp.importance.Importance):
    """Lp norm of each output filter of the group's root layer (Li et al. 2017), divided by the
    layer's mean so that global ranking compares layers fairly.

    torch-pruning's ``GroupMagnitudeImportance(group_reduction="first")`` ranks the same way but
    first takes |w|^p of every coupled layer, copying each weight twice -- for torchvision VGGs
    that includes the 25088x4096 classifier, about 2 s on 2 cores. This scores the root alone,
    with one ``vector_norm`` and no copies.
    """

    def __init__(self, p: int):
        self.p = p
        self._fallback = tp.importance.GroupMagnitudeImportance(p=p, group_reduction="first")

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        dep, idxs = group[0]
        layer = dep.target.module
        if dep.handler not in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
            return self._fallback(group)
        idxs = torch.as_tensor([int(i) for i in idxs], dtype=torch.long, device=layer.weight.device)
        w = layer.weight.flatten(1)
        imp = torch.linalg.vector_norm(w, ord=self.p, dim=1)
        if self.p == 2:
            imp = imp.pow(2)  # the sum of squares, as torch-pruning's L2 magnitude
        imp = imp.index_select(0, idxs)
        return imp / imp.mean().clamp_min(1e-12)


# One entry per criterion: a factory ``(config) -> tp importance``.
IMPORTANCES: Registry[Callable[[Any], tp.importance.Importance]] = Registry("importance")
IMPORTANCES.register("l1", lambda cfg: FilterNormImportance(p=1),
                     "L1 norm of each filter (Li et al. 2017)")
IMPORTANCES.register("l2", lambda cfg: FilterNormImportance(p=2),
                     "L2 norm of each filter")
IMPORTANCES.register("random", lambda cfg: tp.importance.RandomImportance(),
                     "random ranking, seeded by --seed (a baseline)")


_BN = nn.modules.batchnorm._BatchNorm


def _out_groups(pruner: tp.pruner.BasePruner):
    """(root module, group) of every out-channel group the pruner may rank."""
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):
        if pruner.DG.is_out_channel_pruning_fn(group[0].dep.handler):
            yield group[0].dep.target.module, group


class BNScale(tp.importance.BNScaleImportance):
    """|gamma| of the BatchNorm layers coupled to each channel (mean over the group)."""

    def check(self, pruner, model: nn.Module, gradients) -> List[str]:
        names = {m: n for n, m in model.named_modules()}
        scored, unscored = [], []
        for root, group in _out_groups(pruner):
            has_bn = any(isinstance(dep.target.module, _BN) and dep.target.module.affine
                         for dep, _ in group)
            (scored if has_bn else unscored).append(names.get(root, "?"))
        if not scored:
            plain = [n for n, m in model.named_modules() if isinstance(m, _BN) and not m.affine]
            why = (f" (its BatchNorm layers have affine=False, no gamma: {', '.join(plain[:3])}"
                   f"{', ...' if len(plain) > 3 else ''})" if plain else "")
            raise UserError(
                "--importance bn-scale ranks channels by the gamma of the BatchNorm after them "
                "(Network Slimming), but no prunable layer of this model is followed by an affine "
                f"BatchNorm{why}; accepted here: "
                + ", ".join(n for n in IMPORTANCES if n != "bn-scale"))
        if unscored:
            return [f"bn-scale: no affine BatchNorm after {', '.join(unscored)}, so "
                    f"{'it is' if len(unscored) == 1 else 'they are'} not pruned"]
        return []


class Taylor(tp.importance.GroupTaylorImportance):
    """First-order Taylor importance; needs ``.grad`` on the weights, filled by ``prepare``."""

    name = "taylor"

    def check(self, pruner, model: nn.Module, gradients) -> List[str]:
        if gradients is None:
            raise UserError(f"--importance {self.name} needs data: it runs a few batches forward "
                            "and backward for the gradients; pass --data D (and --data-dir where "
                            "needed)")
        return [f"{self.name}: gradients from {getattr(gradients, 'description', 'the given batches')}"]

    def prepare(self, model: nn.Module, gradients) -> None:
        gradients(model)


class GradientBatches:
    """Fill ``.grad`` of every parameter with the cross-entropy gradient summed over the first
    ``max_batches`` ``(images, labels)`` batches of ``batches``.

    The model runs in eval mode (BatchNorm uses, and does not update, its running statistics);
    its train/eval mode is restored afterwards.
    """

    def __init__(self, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], max_batches: int = 8,
                 output_key: Optional[str] = None, description: Optional[str] = None):
        if max_batches < 1:
            raise UserError(f"--taylor-batches must be a positive integer, got {max_batches!r}")
        self.batches = batches
        self.max_batches = int(max_batches)
        self.output_key = output_key
        self.description = description or f"{self.max_batches} batches"
        self.images_seen = 0

    def __call__(self, model: nn.Module) -> None:
        device = next(model.parameters()).device
        model.zero_grad(set_to_none=True)
        seen = 0
        with keep_mode(model), torch.enable_grad():
            model.eval()
            for x, y in itertools.islice(iter(self.batches), self.max_batches):
                x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(select_logits(model(x), self.output_key), y, reduction="sum")
                loss.backward()
                seen += int(y.shape[0])
        if seen == 0:
            raise UserError("--importance taylor got no batches from the data")
        self.images_seen = seen
        for p in model.parameters():  # frozen or unused parameters: no gradient, no importance
            if p.grad is None:
                p.grad = torch.zeros_like(p)


# The ranking when none is named: L1 per layer; with --global, the cross-layer ranking that
# measured best on the frontier (BENCHMARKS.md "Accuracy at equal cost": at 4x fewer MACs on the
# CIFAR-10 proxy, group-norm 79.13 % against taylor-raw 78.23 %, one seed).
DEFAULT_IMPORTANCE = "l1"
DEFAULT_GLOBAL_IMPORTANCE = "group-norm"


def default_importance(global_pruning: bool) -> str:
    return DEFAULT_GLOBAL_IMPORTANCE if global_pruning else DEFAULT_IMPORTANCE


# the criteria that need gradients from --data (:class:`GradientBatches`)
GRADIENT_CRITERIA = ("taylor", "taylor-raw")


def needs_gradients(importance: Optional[str]) -> bool:
    return importance in GRADIENT_CRITERIA


DEFAULT_TAYLOR_BATCHES = 8
TAYLOR_BATCH_SIZE = 64


def training_gradients(data, preprocessing, spec, batches: int = DEFAULT_TAYLOR_BATCHES,
                       seed: int = 0) -> GradientBatches:
    """Gradients for ``--importance taylor`` from ``batches`` shuffled, unaugmented training
    batches of ``data`` (an :class:`tp_vgg.data.datasets.ImageData`), with ``preprocessing`` (a resolved
    :class:`tp_vgg.data.preprocessing.Preprocessing`)."""
    from tp_vgg.data.batches import BatchTransform

    pre = preprocessing
    b = data.batches("train", TAYLOR_BATCH_SIZE, BatchTransform(pre.mean, pre.std, pre.input_size),
                     "cpu", train=True, augment=False, seed=seed)
    return GradientBatches(b, max_batches=batches, output_key=spec.output_key,
                           description=f"{batches} batches of {TAYLOR_BATCH_SIZE} {data.name} "
                                       "training images (shuffled, no augmentation)")


IMPORTANCES.register("bn-scale", lambda cfg: BNScale(),
                     "|gamma| of the BatchNorm after each channel (Network Slimming; "
                     "train with --sparsity bn-l1 first)")
IMPORTANCES.register("fpgm", lambda cfg: tp.importance.FPGMImportance(),
                     "distance to the other filters: near the geometric median = redundant (FPGM)")
IMPORTANCES.register("lamp", lambda cfg: tp.importance.LAMPImportance(),
                     "layer-adaptive magnitude score (LAMP), comparable across layers for --global")
IMPORTANCES.register("taylor", lambda cfg: Taylor(),
                     "first-order Taylor |w * dL/dw| from a few batches of --data")


class TaylorRaw(Taylor):
    """First-order Taylor importance summed over the group, gradients accumulated over the
    batches, not normalized per group: comparable across layers (HALP)."""

    name = "taylor-raw"

    def __init__(self):
        super().__init__(normalizer=None)


IMPORTANCES.register("taylor-raw", lambda cfg: TaylorRaw(),
                     "first-order Taylor from a few batches of --data, not normalized per layer: "
                     "the estimated loss change, comparable across layers (HALP; for --global "
                     "and --target-latency)")
IMPORTANCES.register("group-norm", lambda cfg: tp.importance.GroupMagnitudeImportance(
                         p=2, normalizer="max"),
                     "L2 norm of every weight coupled to a channel (DepGraph's group norm), "
                     "normalized per layer by its maximum (for --global; after --sparsity "
                     "group-norm)")

