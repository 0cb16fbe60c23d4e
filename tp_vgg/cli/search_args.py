"""`tp-vgg prune` / `sweep` flags of the width search (``--search N``): their parsing only; the
search is :mod:`tp_vgg.search.widths`."""

from __future__ import annotations

import argparse
from typing import Optional

from tp_vgg.cli.common import nonneg_int, positive_int
from tp_vgg.data.datasets import DATASETS
from tp_vgg.errors import UserError
from tp_vgg.search import widths


def add_search_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("width search (EagleEye: adaptive-BN scoring of width vectors)")
    g.add_argument("--search", type=nonneg_int, metavar="N",
                   help="choose every layer's width under the budget (--target-speedup, "
                        "--target-macs, --target-latency, or the MACs of uniform --ratio) from N "
                        "candidates: uniform, perturbations of it, then an evolutionary "
                        "refinement; each scored on a held-out slice of --data's training images "
                        "after re-estimating BN statistics; the best few fine-tuned briefly to "
                        "choose (1: uniform alone, through the same pipeline; 0: no search, "
                        "uniform widths). Default with --data at --target-speedup or "
                        f"--target-macs (L1, not --global): {widths.DEFAULT_WITH_DATA}, as the "
                        "measured frontier advises (BENCHMARKS.md); otherwise none")
    g.add_argument("--search-finalists", type=nonneg_int, metavar="M",
                   help=f"candidates fine-tuned besides uniform (default {widths.DEFAULT_FINALISTS})")
    g.add_argument("--search-epochs", type=nonneg_int, metavar="E",
                   help="epochs each finalist is fine-tuned before the choice (default "
                        f"{widths.DEFAULT_FINALIST_EPOCHS}; 0: choose by the score alone)")
    g.add_argument("--search-bn-batches", type=nonneg_int, metavar="K",
                   help="training batches the BN statistics of each candidate are re-estimated "
                        f"on (default {widths.DEFAULT_BN_BATCHES})")
    g.add_argument("--search-heldout", type=positive_int, metavar="H",
                   help="training images held out to score the candidates, never used to "
                        f"re-estimate or fine-tune (default {widths.DEFAULT_HELDOUT})")
    g.add_argument("--search-screen", type=nonneg_int, metavar="S",
                   help="held-out images every candidate is first scored on; the best "
                        "--search-rescore are then scored on the whole slice (default "
                        f"{widths.DEFAULT_SCREEN}; 0: every candidate on the whole slice)")
    g.add_argument("--search-rescore", type=nonneg_int, metavar="R",
                   help="candidates scored again on the whole held-out slice, besides uniform, "
                        f"the finalists chosen from them (default {widths.DEFAULT_RESCORE})")


def search_config(args: argparse.Namespace, default: Optional[widths.SearchConfig] = None
                  ) -> Optional[widths.SearchConfig]:
    """The search sub-config: --search N's, ``default`` without --search
    (:func:`tp_vgg.search.widths.default_search`), None with --search 0; its flags need --search
    and --data."""
    n = getattr(args, "search", None)
    extras = [f for f in ("search_finalists", "search_epochs", "search_bn_batches",
                          "search_heldout", "search_screen", "search_rescore")
              if getattr(args, f, None) is not None]
    if n is None or n == 0:
        if extras:
            raise UserError(f"--{extras[0].replace('_', '-')} applies to the width search: "
                            "add --search N (N >= 1) with --data D")
        return default if n is None else None
    if not getattr(args, "data", None):
        raise UserError("--search needs data: it scores each candidate on a held-out slice of "
                        f"the training data; pass --data D ({', '.join(DATASETS.names())})")
    given = {k: getattr(args, f) for k, f in (("finalists", "search_finalists"),
                                             ("finalist_epochs", "search_epochs"),
                                             ("bn_batches", "search_bn_batches"),
                                             ("heldout", "search_heldout"),
                                             ("screen", "search_screen"),
                                             ("rescore", "search_rescore"))
             if getattr(args, f, None) is not None}
    cfg = widths.SearchConfig(candidates=n, seed=getattr(args, "seed", 0) or 0, **given)
    cfg.validate()
    return cfg
