"""The anchors' recipes as one flag (``--recipe NAME``): sparse learning with a regularizer for a
few epochs, then global pruning with the criterion that regularizer prepares.

* ``depgraph`` -- DepGraph (Fang et al., CVPR 2023): ``--sparsity group-norm`` (every weight
  coupled to a channel pushed towards zero, group by group), then ``--importance group-norm
  --global`` under ``--max-layer-ratio``;
* ``slimming`` -- Network Slimming (Liu et al., ICCV 2017): ``--sparsity bn-l1`` (L1 on the
  BatchNorm gammas), then ``--importance bn-scale --global``.

A recipe is data only (:class:`Recipe`); :func:`tp_vgg.jobs.stages.sparse_learning` is the stage the
prune job runs before pruning, with the fine-tuning recipe of the job and the regularizer added
to the gradients (:class:`tp_vgg.pruning.sparsity.Regularizer`, through
``TrainConfig.sparsity``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from tp_vgg.errors import UserError
from tp_vgg.pruning import graph as pruning
from tp_vgg.registry import Registry

DEFAULT_SPARSE_EPOCHS = 10


@dataclass(frozen=True)
class Recipe:
    sparsity: str            # tp_vgg.pruning.sparsity.METHODS
    reg: float               # its strength
    importance: str          # tp_vgg.pruning.criteria.IMPORTANCES
    max_layer_ratio: float   # global pruning: the most any layer may lose


RECIPES: Registry[Recipe] = Registry("recipe")
RECIPES.register("depgraph", Recipe("group-norm", 5e-4, "group-norm", 0.9),
                 "DepGraph: sparse learning with --sparsity group-norm (reg 5e-4), then global "
                 "pruning by --importance group-norm, no layer above --max-layer-ratio 0.9")
RECIPES.register("slimming", Recipe("bn-l1", 1e-4, "bn-scale", 0.9),
                 "Network Slimming: sparse learning with --sparsity bn-l1 (reg 1e-4), then "
                 "global pruning by --importance bn-scale, no layer above --max-layer-ratio 0.9")


@dataclass
class SparseLearning:
    """``--recipe NAME``'s first stage: ``epochs`` of training with its regularizer (``reg``:
    None for the recipe's)."""

    recipe: str
    epochs: int = DEFAULT_SPARSE_EPOCHS
    reg: Optional[float] = None

    def validate(self) -> None:
        RECIPES.get(self.recipe)
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise UserError(f"--sparse-epochs must be a positive integer, got {self.epochs!r}")
        if self.reg is not None:
            from tp_vgg.pruning import sparsity
            sparsity.check(RECIPES.get(self.recipe).sparsity, self.reg)

    @property
    def method(self) -> Recipe:
        return RECIPES.get(self.recipe)

    def prune_config(self, cfg: pruning.PruneConfig, max_layer_ratio_given: bool
                     ) -> pruning.PruneConfig:
        """``cfg`` with the recipe's criterion and global ranking (its max ratio unless one is
        given)."""
        r = self.method
        return dataclasses.replace(
            cfg, importance=r.importance, global_pruning=True,
            max_layer_ratio=cfg.max_layer_ratio if max_layer_ratio_given else r.max_layer_ratio)
