"""``--search N``: choose each layer's width under the job's budget (EagleEye, ECCV 2020).

A candidate is a width vector: the channels each prunable layer (each root of a pruning group)
keeps. Under a budget -- MACs (``--target-speedup``, ``--target-macs``, or the MACs of uniform
``--ratio``) or a latency predicted by the latency table (``--target-latency``):

1. **Candidate 0 is the uniform plan** (every layer loses the same fraction). Candidates
   1 … N−1 are drawn in two waves: perturbations of the uniform keep fractions (each layer's
   fraction times ``exp(sigma * z)``), then an evolutionary refinement (crossover of two of the
   best scored so far, and a smaller mutation). Each draw is scaled to the budget (one factor
   for all layers, found by bisection), rounded to the ``--round-to`` multiple, kept within
   ``--max-layer-ratio``; the logits layer and ``--layer-ratios`` layers are left as given. It
   is accepted only within :data:`TOLERANCE` of the budget and never above it: MACs counted by
   fvcore on the pruned copy, latency as the table predicts.
2. **Score:** each candidate is pruned on a copy (L1, with the masked-equivalence check every
   prune runs), its BatchNorm statistics are re-estimated on ``bn_batches`` training batches
   (adaptive BN) and it is scored by top-1 on a fixed held-out slice of the training data
   (``heldout`` images, seeded; disjoint from the batches the statistics come from, and never the
   test split). A model without BN running statistics is scored as pruned, and the report says
   so.
3. **Choose:** the ``finalists`` best candidates and uniform are fine-tuned ``finalist_epochs``
   epochs on the rest of the training data and scored again on the held-out slice; with a latency
   budget they are also measured (the median of 3), and one measured above the budget is not
   chosen. Candidate 0 is measured first: where the latency table under-predicts the model and
   its uniform plan measures over the budget, candidate 0 is the smallest uniform ratio measured
   within it, and the candidates are held to that plan's prediction, or to its MACs where the
   table is off by more than :data:`TABLE_TRUST` (``"budget"."anchor"``, ``"proxy"``). The
   best is returned as a :class:`~tp_vgg.pruning.graph.PruneConfig` of per-layer ratios; the job
   then prunes the model with it and fine-tunes as usual, from the pruned, re-estimated weights
   (not from the short fine-tune).

Everything is deterministic per ``seed``. Under torchrun the ranks score disjoint shares of each
wave and gather the scores; finalists are fine-tuned by all ranks together (DDP).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from tp_vgg.data.batches import BatchTransform
from tp_vgg.errors import UserError
from tp_vgg.models import counting
from tp_vgg.models.zoo import ModelSpec
from tp_vgg.pruning import graph as pruning
from tp_vgg.pruning.targets import _in_per_group, _out, _Ranked
from tp_vgg.train import evaluation
from tp_vgg.train import loop as train
from tp_vgg.train.config import TrainConfig
from tp_vgg.train.distributed import DistContext

TOLERANCE = 0.01           # a candidate's cost is within [1 - TOLERANCE, 1] x the budget
DEFAULT_FINALISTS = 3
DEFAULT_FINALIST_EPOCHS = 1
DEFAULT_BN_BATCHES = 8    # of --search-heldout's batch size; drawn once, reused for every candidate
DEFAULT_HELDOUT = 5000
# Every candidate is screened on the first DEFAULT_SCREEN images of the held-out slice; the best
# DEFAULT_RESCORE (and uniform) are scored again on the whole slice, and the finalists come from
# them (benchmarks/search_cost.py measures the cost and how well the screen ranks).
DEFAULT_SCREEN = 2000
DEFAULT_RESCORE = 16
DEFAULT_SIGMA = 0.25       # spread of the perturbations, in log keep fraction
# `tp-vgg prune --data D` at a MAC budget (--target-speedup, --target-macs) searches this many
# candidates when --search is not given: the frontier measured the search beating uniform at
# every budget of both bases over at least 2 seeds (BENCHMARKS.md, "The frontier on an
# over-parameterized VGG-16"; benchmarks/advice.py's verdict, which tests/test_frontier.py holds
# this to). None: uniform pruning stays the default.
DEFAULT_WITH_DATA: Optional[int] = 200
# what that default costs, said before it starts
DEFAULT_COST = ("on cifar_vgg16_bn --width 0.5 (78.8M MACs) at 4x, 2 CPU cores: ~4-5 min to score "
                "the candidates, ~9 min with the finalists' 1-epoch fine-tunes, before the "
                "fine-tuning (BENCHMARKS.md)")
TRIES = 40                 # draws per wanted candidate before the search stops drawing
WAVE = 8                   # candidates per evolutionary wave


@dataclass
class SearchConfig:
    """``--search N`` and its settings (``--search-finalists``, ``--search-epochs``,
    ``--search-bn-batches``, ``--search-heldout``)."""

    candidates: int = 1
    finalists: int = DEFAULT_FINALISTS
    finalist_epochs: int = DEFAULT_FINALIST_EPOCHS
    bn_batches: int = DEFAULT_BN_BATCHES
    heldout: int = DEFAULT_HELDOUT
    screen: int = DEFAULT_SCREEN    # 0 (or >= heldout): every candidate on the whole slice
    rescore: int = DEFAULT_RESCORE
    batch_size: int = 128
    sigma: float = DEFAULT_SIGMA
    seed: int = 0
    # chosen by :func:`default_search`, not asked for: the job says so, and what it costs,
    # before it starts (report.json ``search.default``)
    default: bool = False

    def validate(self) -> None:
        for flag, v, least in (("--search", self.candidates, 1),
                               ("--search-finalists", self.finalists, 0),
                               ("--search-epochs", self.finalist_epochs, 0),
                               ("--search-bn-batches", self.bn_batches, 0),
                               ("--search-heldout", self.heldout, 1),
                               ("SearchConfig.screen", self.screen, 0),
                               ("SearchConfig.rescore", self.rescore, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                what = ("a positive integer (1: the uniform plan alone)" if flag == "--search"
                        else f"an integer >= {least}")
                raise UserError(f"{flag} must be {what}, got {v!r}")
        if not self.sigma > 0:
            raise UserError(f"SearchConfig.sigma must be > 0, got {self.sigma!r}")


def default_search(target: Any, cfg: pruning.PruneConfig, has_data: bool, steps: int = 1,
                   seed: int = 0) -> Optional[SearchConfig]:
    """The search ``tp-vgg prune`` runs when ``--search`` is not given: ``DEFAULT_WITH_DATA``
    candidates with data at a MAC budget (``target.speedup`` or ``target.macs``), as measured;
    otherwise None, uniform pruning: ``--ratio`` asks for uniform widths, and ``--global``,
    ``--layer-ratios``, ``--iterative-steps``, a latency target or another ``--importance`` than
    L1 choose the widths another way (the frontier did not measure the search with them)."""
    if (DEFAULT_WITH_DATA is None or not has_data or target is None
            or (getattr(target, "speedup", None) is None and getattr(target, "macs", None) is None)
            or cfg.global_pruning or cfg.layer_ratios or steps > 1
            or cfg.importance not in (None, "l1")):
        return None
    return SearchConfig(candidates=DEFAULT_WITH_DATA, seed=seed, default=True)


# --------------------------------------------------------------------------------------------
# The widths a candidate may take, and what they cost.

class Space:
    """Per root layer: its channels, the step its width moves in (``--round-to``, the groups of
    a GroupNorm it feeds) and the least it may keep (``--max-layer-ratio``)."""

    def __init__(self, ranked: _Ranked, round_to: Optional[int], max_ratio: float):
        self.roots: List[str] = list(ranked.roots)
        self.sizes: Dict[str, int] = dict(zip(ranked.roots, ranked.ranking.sizes))
        self.groups: Dict[str, int] = dict(zip(ranked.roots, ranked.ranking.groups))
        self.unit: Dict[str, int] = {}
        self.least: Dict[str, int] = {}
        for r in self.roots:
            c, g = self.sizes[r], self.groups[r]
            u = g * (round_to // math.gcd(round_to, g)) if round_to else g
            cap = min(int(c // g * max_ratio), c // g - 1) * g
            least = max(c - cap, u)
            least = -(-least // u) * u  # the first multiple at or above it
            self.unit[r], self.least[r] = u, min(least, c)
        self.fixed_ratios = {n: r for n, (c, r) in ranked.fixed.items()}

    def kept(self, fractions: Dict[str, float]) -> Dict[str, int]:
        """The widths nearest below ``fractions`` of each layer, within the limits."""
        out = {}
        for r in self.roots:
            c, u = self.sizes[r], self.unit[r]
            k = int(max(fractions[r], 0.0) * c + 1e-9) // u * u
            out[r] = c if fractions[r] >= 1.0 else max(self.least[r], min(c, k))
        return out

    def fractions(self, kept: Dict[str, int]) -> Dict[str, float]:
        return {r: kept[r] / self.sizes[r] for r in self.roots}

    def config(self, cfg: pruning.PruneConfig, kept: Dict[str, int]) -> pruning.PruneConfig:
        """Per-layer ratios that make torch-pruning keep exactly ``kept``."""
        from tp_vgg.latency.budget import plan_config
        return plan_config(cfg, kept, self.sizes, self.groups, self.fixed_ratios)


class MacCost:
    """MACs of the model with each root keeping ``kept[root]`` channels, from fvcore's counts of
    the unpruned model: a conv's or linear layer's multiply-adds scale with its output channels
    times its input channels; other ops keep theirs. Exact for the layers tp-vgg prunes; the
    candidate's real count is taken with fvcore before it is accepted."""

    def __init__(self, model: nn.Module, spec: ModelSpec, ranked: _Ranked, space: Space):
        from tp_vgg.latency.budget import _feeds

        base = counting.count(model, spec)
        modules = dict(model.named_modules())
        names = {m: n for n, m in ranked.model.named_modules()}
        self.feeds = _feeds(ranked, names)
        self.fed: Dict[str, List[Tuple[str, int]]] = {}
        for r, consumers in self.feeds.items():
            for name, per in consumers:
                self.fed.setdefault(name, []).append((r, per))
        self.space = space
        self.layers: Dict[str, Tuple[int, float, int]] = {}
        for l in base.layers:
            m = modules.get(l.name)
            if isinstance(m, pruning.PRUNABLE) and l.macs:
                self.layers[l.name] = (l.macs, _in_per_group(m), _out(m))
        self.other = base.macs - sum(v[0] for v in self.layers.values())
        self.full = base.macs

    def __call__(self, kept: Dict[str, int]) -> float:
        total = float(self.other)
        sizes = self.space.sizes
        for name, (macs, cin, cout) in self.layers.items():
            c_in = cin - sum((sizes[r] - kept[r]) * per for r, per in self.fed.get(name, ())
                             if r in kept)
            c_out = kept.get(name, cout)
            total += macs * (c_in / cin) * (c_out / cout)
        return total


# --------------------------------------------------------------------------------------------
# Drawing candidates.

def project(space: Space, cost: Callable[[Dict[str, int]], float], fractions: Dict[str, float],
            goal: float) -> Optional[Dict[str, int]]:
    """``fractions`` scaled by one factor until the widths cost at most ``goal`` and as close to
    it as the factor gets (bisection); None when even the narrowest widths cost more."""
    low = min(max(f, 1e-6) for f in fractions.values())
    lo, hi = 0.0, 1.0 / low + 1.0
    if cost(space.kept({r: 0.0 for r in space.roots})) > goal:
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost(space.kept({r: mid * f for r, f in fractions.items()})) <= goal:
            lo = mid
        else:
            hi = mid
    return space.kept({r: lo * f for r, f in fractions.items()})


def spearman(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation (ties take their mean rank); None below 3 points."""
    if len(a) < 3:
        return None

    def ranks(v):
        t = torch.tensor(v, dtype=torch.float64)
        order = torch.argsort(t)
        r = torch.empty_like(t)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for x in set(v):  # ties: the mean of their ranks
            same = t == x
            r[same] = r[same].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den else None


# --------------------------------------------------------------------------------------------
# The search.

@dataclass
class Budget:
    """What a candidate may cost: ``kind`` "macs" (counted) or "ms" (predicted by ``cost``).
    ``goal`` is the job's budget; ``uniform_cost`` what candidate 0 costs. The window a
    candidate must fall in is at most the goal and within :data:`TOLERANCE` of uniform's cost
    (where channel steps leave uniform below the goal, candidates are not given more)."""

    kind: str
    goal: float
    cost: Callable[[Dict[str, int]], float]
    uniform: Dict[str, int]             # candidate 0
    uniform_cost: float
    describe: str = ""
    # "ms": a real measurement by widths, cached (a plan measured within the budget while the
    # budget was set is not measured again, and over, when it is a finalist)
    measured: Optional[Callable[[Dict[str, int]], float]] = None
    anchor: Optional[Dict[str, Any]] = None   # "ms": where candidate 0 was measured over
    # "ms" whose candidates are held to candidate 0's MACs (``cost`` counts MACs), where the
    # latency table cannot predict the model; the finalists are still measured against ``goal``
    proxy: Optional[str] = None
    # MACs planned from a width vector (:class:`MacCost`); None: counted with fvcore
    macs: Optional[Callable[[Dict[str, int]], float]] = None

    @property
    def ceiling(self) -> float:
        goal = self.goal if self.proxy is None else math.inf
        return min(goal, self.uniform_cost * (1 + TOLERANCE))

    @property
    def window(self) -> Tuple[float, float]:
        return (1 - TOLERANCE) * self.ceiling, self.ceiling


@dataclass
class Scored:
    id: int
    origin: str
    kept: Dict[str, int]
    macs: int
    params: int
    predicted: float
    score: Optional[float] = None
    in_budget: bool = True
    screen: Optional[float] = None   # the score on the screening images (None: not screened)
    rescored: bool = False           # ``score`` is on the whole held-out slice

    def row(self, budget: Budget) -> Dict[str, Any]:
        d = {"id": self.id, "origin": self.origin, "widths": dict(self.kept), "macs": self.macs,
             "params": self.params, "score": self.score, "screen_score": self.screen,
             "rescored": self.rescored, "in_budget": self.in_budget}
        if budget.kind == "ms" and budget.proxy is None:
            d["predicted_ms"] = round(self.predicted, 4)
        return d


class Search:
    """One search: :meth:`run` returns the chosen plan's ``PruneConfig`` and report.json's
    ``"search"`` block."""

    def __init__(self, model: nn.Module, spec: ModelSpec, cfg: pruning.PruneConfig,
                 space: Space, budget: Budget, scfg: SearchConfig, data: Any, preprocessing: Any,
                 train_cfg: TrainConfig, device: Optional[str] = None,
                 log: Callable[[str], None] = print, dist: Optional[DistContext] = None,
                 gradients=None):
        self.model, self.spec, self.cfg, self.space, self.budget = model, spec, cfg, space, budget
        self.gradients = gradients  # a criterion's batches (taylor), for every prune
        self.scfg, self.pre, self.train_cfg = scfg, preprocessing, train_cfg
        self.log = log
        self.dist = dist or DistContext()
        # each rank scores on its own device (cuda:LOCAL_RANK under torchrun)
        self.device = str(self.dist.device(device)) if self.dist.enabled else device
        total = len(data.train_labels)
        if scfg.default and scfg.heldout > total // 5:  # the default on a small data set
            scfg = self.scfg = dataclasses.replace(scfg, heldout=max(1, total // 5))
            log(f"width search: {scfg.heldout} of the {total} training images held out to score "
                f"the candidates (a fifth; --search N --search-heldout H sets it)")
        self.data = heldout_split(data, scfg.heldout, scfg.seed)
        n_held = len(self.data.test_labels)
        # a seeded sample of the slice (the slice is in dataset order: class by class for an
        # image folder), so that the screen sees every class
        pick = torch.randperm(n_held, generator=torch.Generator().manual_seed(scfg.seed + 1))
        self.screen_data = (self.data.subset("test", pick[:scfg.screen].sort().values)
                            if 0 < scfg.screen < n_held else self.data)
        self.has_bn = bool(evaluation.batchnorms(model))
        self._bn: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None
        self._cl: Optional[bool] = None
        self.stage_seconds: Dict[str, float] = {}
        self.rng = torch.Generator().manual_seed(scfg.seed)
        self.rows: List[Scored] = []
        self.seen = set()
        self.rejected = 0
        # named plans scored after uniform whatever their cost (the latency guard's plan), and
        # the one kept when no finalist measures within a latency budget (None: the fastest)
        self.extra: Dict[str, Dict[str, int]] = {}
        self.fallback: Optional[int] = 0

    # -- one candidate ---------------------------------------------------------------------
    def _prune(self, kept: Dict[str, int], check: bool = True) -> nn.Module:
        m = copy.deepcopy(self.model).cpu()
        pruning.prune(m, self.spec, self.space.config(self.cfg, kept), gradients=self.gradients,
                      check=check)
        return m

    def _bn_batches(self) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """The training batches (outside the slice) every candidate's BN statistics are
        re-estimated on: drawn, decoded and normalized once, the same for all."""
        if self._bn is None:
            dev = torch.device(self.device or "cpu")
            batches = self.data.batches(
                "train", self.scfg.batch_size, BatchTransform(
                    self.pre.mean, self.pre.std, self.pre.input_size, self._channels_last()), dev,
                train=True, augment=False, seed=self.scfg.seed)
            self._bn = [b for _, b in zip(range(self.scfg.bn_batches), batches)]
        return self._bn

    def _channels_last(self) -> bool:
        """Whether the BN batches and the scoring are channels-last (~1.7x faster on a CPU):
        decided once, on the model's own device."""
        if self._cl is None:
            self._cl = bool(self.train_cfg.channels_last) and evaluation.channels_last_runs(
                self.model, self.spec)
        return self._cl

    def _adapt(self, m: nn.Module) -> nn.Module:
        """Adaptive BN: the statistics re-estimated on the cached training batches."""
        if self.has_bn and self.scfg.bn_batches:
            t = time.perf_counter()
            m.to(self.device or "cpu")
            evaluation.recalibrate_bn(m, self._bn_batches(), self.scfg.bn_batches)
            self._time("bn", t)
        return m

    def _time(self, what: str, t0: float) -> None:
        self.stage_seconds[what] = (self.stage_seconds.get(what, 0.0)
                                            + time.perf_counter() - t0)

    def _heldout_top1(self, m: nn.Module, screen: bool = False) -> float:
        t = time.perf_counter()
        top1 = evaluation.top1(m, self.spec, self.screen_data if screen else self.data,
                               self.pre, self.device, self.scfg.batch_size,
                               channels_last=self._channels_last())
        self._time("screen" if screen else "rescore", t)
        return top1

    def _score(self, kept: Dict[str, int]) -> Tuple[int, int, Optional[float]]:
        """(MACs, params, screening score); the score is None for a candidate outside the
        budget. The MACs are planned from the width vector; the candidate is pruned (unchecked:
        only the chosen plan is pruned with the equivalence check) for its params and score."""
        lo, hi = self.budget.window
        t = time.perf_counter()
        m = self._prune(kept, check=False)
        params = sum(p.numel() for p in m.parameters())
        planned = self.budget.macs is not None and not self.space.fixed_ratios
        macs = (int(round(self.budget.macs(kept))) if planned  # --layer-ratios: counted
                else counting.count(m, self.spec).macs)
        self._time("prune", t)
        if "macs" in (self.budget.kind, self.budget.proxy) and not lo <= macs <= hi:
            return macs, params, None
        return macs, params, self._heldout_top1(self._adapt(m), screen=True)

    def _score_wave(self, wave: List[Scored]) -> None:
        """Score ``wave`` (the ranks take every world_size-th candidate and share the scores)."""
        n = len(wave)
        values = torch.full((n, 3), 0.0, dtype=torch.float64)
        for i in range(self.dist.rank, n, self.dist.world_size):
            macs, params, score = self._score(wave[i].kept)
            values[i] = torch.tensor([macs, params, -1.0 if score is None else score],
                                     dtype=torch.float64)
        if self.dist.enabled:  # on the rank's device: NCCL reduces CUDA tensors only
            values = self.dist.all_reduce_sum(values.to(self.dist.device(self.device))).cpu()
        for s, (macs, params, score) in zip(wave, values.tolist()):
            s.macs, s.params = int(macs), int(params)
            s.score = None if score < 0 else score
            s.in_budget = s.score is not None
            if s.id == 0 or s.origin in self.extra:  # uniform (the reference), a named plan:
                # scored even where it misses the window
                if s.score is None:
                    m = self._adapt(self._prune(s.kept, check=False))
                    s.score = self._heldout_top1(m, screen=True)
                s.screen = s.score
                self.rows.append(s)
            elif s.in_budget:
                s.screen = s.score
                self.rows.append(s)
            else:
                self.rejected += 1

    # -- drawing ---------------------------------------------------------------------------
    def _draw(self, fractions: Dict[str, float], origin: str) -> Optional[Scored]:
        """A new candidate near ``fractions`` within the budget (its id is set by the wave)."""
        kept = project(self.space, self.budget.cost, fractions, self.budget.ceiling)
        if kept is None:
            return None
        key = tuple(kept[r] for r in self.space.roots)
        predicted = self.budget.cost(kept)
        if key in self.seen or predicted < self.budget.window[0] * (1 - 1e-9):
            return None
        self.seen.add(key)
        return Scored(-1, origin, kept, 0, 0, predicted)

    def _perturbation(self) -> Dict[str, float]:
        base = self.space.fractions(self.budget.uniform)
        z = torch.randn(len(self.space.roots), generator=self.rng).tolist()
        return {r: base[r] * math.exp(self.scfg.sigma * zi) for r, zi in zip(self.space.roots, z)}

    def _child(self) -> Dict[str, float]:
        ranked = sorted(self.rows, key=lambda s: -s.score)
        parents = ranked[:max(2, math.ceil(0.2 * len(ranked)))]
        pick = lambda: parents[int(torch.randint(len(parents), (1,), generator=self.rng))]  # noqa: E731
        a = self.space.fractions(pick().kept)
        if len(parents) > 1 and float(torch.rand(1, generator=self.rng)) < 0.5:
            b = self.space.fractions(pick().kept)
            mask = (torch.rand(len(self.space.roots), generator=self.rng) < 0.5).tolist()
            a = {r: a[r] if m else b[r] for r, m in zip(self.space.roots, mask)}
        z = torch.randn(len(self.space.roots), generator=self.rng).tolist()
        return {r: a[r] * math.exp(0.5 * self.scfg.sigma * zi)
                for r, zi in zip(self.space.roots, z)}

    def _wave(self, size: int, draw: Callable[[], Dict[str, float]], origin: str
              ) -> List[Scored]:
        wave: List[Scored] = []
        tries = 0
        while len(wave) < size and tries < TRIES * size:
            tries += 1
            s = self._draw(draw(), origin)
            if s is not None:
                s.id = len(self.rows) + len(wave) + self.rejected
                wave.append(s)
        return wave

    # -- the whole search ------------------------------------------------------------------
    def candidates(self) -> None:
        n = self.scfg.candidates
        uniform = self.budget.uniform
        self.seen.add(tuple(uniform[r] for r in self.space.roots))
        first = [Scored(0, "uniform", dict(uniform), 0, 0, self.budget.cost(uniform))]
        self._score_wave(first)
        named = []
        for origin, kept in self.extra.items():
            self.seen.add(tuple(kept[r] for r in self.space.roots))
            named.append(Scored(len(self.rows) + len(named), origin, dict(kept), 0, 0,
                                self.budget.cost(kept)))
        if named:
            self._score_wave(named)
        if n == 1:
            return
        wanted = n - 1
        n_a = -(-wanted // 2)
        self._score_wave(self._wave(n_a, self._perturbation, "perturbation"))
        left = wanted - n_a
        while left > 0:
            size = min(left, max(WAVE, self.dist.world_size))
            wave = self._wave(size, self._child, "evolution")
            if not wave:
                break
            self._score_wave(wave)
            left -= size

    def rescore(self) -> None:
        """The ``rescore`` best by their screening score, uniform and the named plans, scored
        again on the whole held-out slice (the ranks split them and share the scores); without
        a screen every score is already on the whole slice."""
        if self.screen_data is self.data:
            for s in self.rows:
                s.rescored = True
            return
        others = sorted((s for s in self.rows if s.id != 0 and s.origin not in self.extra),
                        key=lambda s: (-s.screen, s.id))
        chosen = ([s for s in self.rows if s.id == 0 or s.origin in self.extra]
                  + others[:self.scfg.rescore])
        values = torch.zeros(len(chosen), dtype=torch.float64)
        for i in range(self.dist.rank, len(chosen), self.dist.world_size):
            values[i] = self._heldout_top1(self._adapt(self._prune(chosen[i].kept, check=False)))
        if self.dist.enabled:
            values = self.dist.all_reduce_sum(values.to(self.dist.device(self.device))).cpu()
        for s, v in zip(chosen, values.tolist()):
            s.score, s.rescored = v, True

    def finalists(self) -> List[Dict[str, Any]]:
        """The best ``finalists`` candidates (by their score on the whole held-out slice) and
        uniform, fine-tuned ``finalist_epochs`` on the training data outside the slice and
        scored on it again (and measured, for a latency budget)."""
        others = sorted((s for s in self.rows if s.id != 0 and s.rescored),
                        key=lambda s: (-s.score, s.id))
        if len(others) < self.scfg.finalists:  # --search-rescore below the finalists: by screen
            others += sorted((s for s in self.rows if s.id != 0 and not s.rescored),
                             key=lambda s: (-s.screen, s.id))
        chosen = [self.rows[0]] + others[:self.scfg.finalists]
        out = []
        for s in chosen:
            m = self._adapt(self._prune(s.kept, check=False))
            row: Dict[str, Any] = {"id": s.id, "score": s.score}
            if self.scfg.finalist_epochs:
                cfg = dataclasses.replace(self.train_cfg, epochs=self.scfg.finalist_epochs,
                                          progress="none", distill=False)
                res = train.fit(m, self.spec, self.data, cfg, None, preprocessing=self.pre,
                                command="search-finalist", dist=self.dist,
                                log=lambda line: None)
                m.to("cpu", memory_format=torch.contiguous_format).eval()
                row["finetuned"] = res.final.top1 if res.final else self._heldout_top1(m)
            if self.budget.measured is not None:
                row["measured_ms"] = round(float(self.budget.measured(s.kept)), 4)
            out.append(row)
        return out

    def run(self) -> Tuple[pruning.PruneConfig, Dict[str, Any]]:
        t0 = time.perf_counter()
        self.candidates()
        screened = len(self.rows) + self.rejected
        self.rescore()
        t1 = time.perf_counter()
        n_final = 1 + min(self.scfg.finalists, len(self.rows) - 1)
        lo, hi = self.budget.window
        show = ((lambda v: f"{v:.3f} ms") if self.budget.kind == "ms" and not self.budget.proxy
                else counting.human)
        self.log(f"search: {len(self.rows)} candidates scored from {show(lo)} to {show(hi)} "
                 f"(budget {self.budget.describe}; uniform {show(self.budget.uniform_cost)}; "
                 f"{self.rejected} counted outside), in "
                 f"{t1 - t0:.0f} s; finalists: {n_final}, fine-tuned "
                 f"{self.scfg.finalist_epochs} epoch(s) each on the held-out split's rest")
        finals = self.finalists() if len(self.rows) > 1 or self.budget.measured else [
            {"id": 0, "score": self.rows[0].score}]
        t2 = time.perf_counter()
        key = "finetuned" if all("finetuned" in f for f in finals) else "score"
        allowed = ([f for f in finals if f.get("measured_ms") is None
                    or f["measured_ms"] <= self.budget.goal]
                   or [f for f in finals if f["id"] == self.fallback]
                   or [min(finals, key=lambda f: f.get("measured_ms") or 0.0)])
        best = max(allowed, key=lambda f: (f[key], -f["id"]))
        by_id = {s.id: s for s in self.rows}
        winner = by_id[best["id"]]
        order = sorted(self.rows, key=lambda s: (-s.screen, s.id))  # every row has a screen
        rank = 1 + [s.id for s in order].index(0)
        rho = (spearman([f["score"] for f in finals], [f["finetuned"] for f in finals])
               if key == "finetuned" else None)
        lo, hi = self.budget.window
        rep = {
            "candidates": self.scfg.candidates, "scored": len(self.rows),
            "rejected": self.rejected,
            "budget": {"kind": self.budget.kind, "goal": self.budget.goal, "window": [lo, hi],
                       "uniform": self.budget.uniform_cost, "describe": self.budget.describe,
                       "rule": f"at most the goal and within {100 * TOLERANCE:g}% below "
                               f"min(goal, uniform + {100 * TOLERANCE:g}%)",
                       **({"anchor": self.budget.anchor} if self.budget.anchor else {}),
                       **({"proxy": self.budget.proxy} if self.budget.proxy else {})},
            "score": ("top-1 on the held-out slice after re-estimating BatchNorm statistics on "
                      f"{self.scfg.bn_batches} training batches" if self.has_bn and
                      self.scfg.bn_batches else
                      "top-1 on the held-out slice as pruned (the model has no BatchNorm "
                      "running statistics to re-estimate)"),
            "heldout_images": len(self.data.test_labels),
            "screen_images": len(self.screen_data.test_labels),
            "rescored": sum(s.rescored for s in self.rows),
            "score_note": (f"every candidate screened on {len(self.screen_data.test_labels)} "
                           f"held-out images; the best {self.scfg.rescore}, uniform and named "
                           f"plans scored again on all {len(self.data.test_labels)}; finalists "
                           "from those" if self.screen_data is not self.data else
                           "every candidate scored on the whole held-out slice"),
            "per_candidate_s": round((t1 - t0) / max(screened, 1), 3),
            "stage_s": {k: round(v, 2) for k, v in self.stage_seconds.items()},
            "stage_note": "prune: deep copy and unchecked prune of every candidate drawn (its "
                          "MACs planned from the widths); bn: BatchNorm re-estimation on the "
                          "cached batches; screen / rescore: held-out evaluation",
            "bn_batches": self.scfg.bn_batches if self.has_bn else 0,
            "finalist_epochs": self.scfg.finalist_epochs, "seed": self.scfg.seed,
            "seconds": {"candidates": round(t1 - t0, 2), "finalists": round(t2 - t1, 2)},
            "rows": [s.row(self.budget) for s in self.rows],
            "uniform_rank": rank, "finalists": finals, "chosen": winner.id,
            "chosen_origin": winner.origin, "chosen_widths": dict(winner.kept),
            "rank_correlation": rho,
            "rank_correlation_note": "Spearman, adaptive-BN score against held-out top-1 after "
                                     "the short fine-tune, over the finalists",
        }
        self.log(f"search: chose candidate {winner.id} ({winner.origin}; uniform ranked "
                 f"{rank} of {len(self.rows)} by score) after {t2 - t0:.0f} s")
        return self.space.config(self.cfg, winner.kept), rep


def guard_latency_plan(model: nn.Module, spec: ModelSpec, cfg: pruning.PruneConfig, lb: Any,
                       kept: Dict[str, int], data: Any, preprocessing: Any,
                       train_cfg: TrainConfig, device: Optional[str] = None, gradients=None,
                       seed: int = 0, log: Callable[[str], None] = print,
                       dist: Optional[DistContext] = None
                       ) -> Tuple[pruning.PruneConfig, Dict[str, Any]]:
    """``--target-latency``'s plan (``kept``) against the uniform plan measured within the same
    budget (the smallest uniform ratio that does, by bisection on measurements): both pruned on a
    copy, scored by the search's adaptive-BN held-out top-1 and measured again; the
    better-scoring one measured within the budget is kept (the faster one, where neither
    measures within it now). Every measurement here is the median of
    :data:`GUARD_MEASUREMENTS`, each itself a median over repeats. Returns the kept plan's
    ``PruneConfig`` and report.json's ``"latency_guard"`` block (with the kept widths)."""
    from tp_vgg.latency import budget as lt
    from tp_vgg.pruning.targets import DEFAULT_MAX_LAYER_RATIO

    mcfg = lb.config(spec, device)
    max_ratio = cfg.max_layer_ratio if cfg.max_layer_ratio is not None else DEFAULT_MAX_LAYER_RATIO
    cfg = dataclasses.replace(cfg, ratio=0.0, max_layer_ratio=max_ratio, global_pruning=False)
    example = spec.example_input(device=next(model.parameters()).device)
    ranked = _Ranked(model, spec, cfg, example, max_ratio, gradients)
    space = Space(ranked, cfg.round_to, max_ratio)

    measure = _median_measure(lambda m: lt.measured_ms(m, spec, mcfg), dist)
    ms = _widths_measure(model, spec, cfg, space, measure, gradients)

    def uniform_at(ratio: float) -> Dict[str, int]:  # on the space's grid (--round-to steps)
        lost = ranked.plan(ratio)
        return space.kept(space.fractions({r: space.sizes[r] - lost[r] for r in space.roots}))

    found = measured_uniform(ms, uniform_at, lb.ms, 0.0, max_ratio)
    hi, uniform = found if found is not None else (max_ratio, uniform_at(max_ratio))
    budget = Budget("ms", float(lb.ms), ms, uniform, ms(uniform), measured=ms,
                    describe=f"{lb.ms:g} ms (measured: {mcfg.runtime} on {mcfg.device}, batch "
                             f"{mcfg.batch_sizes[0]})")
    total = len(data.train_labels)
    scfg = SearchConfig(candidates=1, finalists=1, finalist_epochs=0,
                        heldout=min(DEFAULT_HELDOUT, max(1, total // 5)), seed=seed,
                        screen=0)  # two plans: both on the whole slice
    s = Search(model, spec, cfg, space, budget, scfg, data, preprocessing, train_cfg,
               device=device, log=lambda line: None, dist=dist, gradients=gradients)
    s.extra = {LATENCY_AWARE: {r: kept[r] for r in space.roots}}
    s.fallback = None
    chosen, rep = s.run()
    by_origin = {r["origin"]: r for r in rep["rows"]}
    measured = {f["id"]: f.get("measured_ms") for f in rep["finalists"]}
    out = {"kept": rep["chosen_origin"], "widths": dict(rep["chosen_widths"]),
           "rule": "the better held-out score of the two plans, among those measured within "
                   "the budget (the faster where neither is); uniform: the smallest uniform "
                   f"--ratio measured within it (bisection: ratio {hi:.3f}; each measurement "
                   f"the median of {GUARD_MEASUREMENTS})",
           "score": rep["score"], "heldout_images": rep["heldout_images"],
           "budget_ms": budget.goal,
           "plans": {o: {"widths": r["widths"], "macs": r["macs"], "score": r["score"],
                         "measured_ms": measured.get(r["id"])} for o, r in by_origin.items()}}
    return chosen, out


GUARD_BISECTIONS = 6  # steps that find the uniform ratio within the latency budget
TABLE_TRUST = 0.25  # the latency search holds candidates to MACs where the table is off by more
GUARD_MEASUREMENTS = 3  # each step's ms: the median of this many measurements (each a median)


def _median_measure(measure: Callable[[nn.Module], float], dist: Optional[DistContext] = None
                    ) -> Callable[[nn.Module], float]:
    """``measure`` taken :data:`GUARD_MEASUREMENTS` times; the median (one busy moment of the
    machine does not decide). Under torchrun (``dist``) rank 0 measures and every rank gets its
    figure, so that all ranks hold the same anchor, budget and finalists' times."""
    def median(m: nn.Module) -> float:
        return statistics.median(measure(m) for _ in range(GUARD_MEASUREMENTS))
    return median if dist is None else dist.shared(median)


def _widths_measure(model: nn.Module, spec: ModelSpec, cfg: pruning.PruneConfig, space: Space,
                    measure: Callable[[nn.Module], float], gradients=None
                    ) -> Callable[[Dict[str, int]], float]:
    """The measured ms of ``model`` pruned on a copy to given widths (each widths once)."""
    timed: Dict[Tuple[int, ...], float] = {}

    def ms(widths: Dict[str, int]) -> float:
        key = tuple(widths[r] for r in space.roots)
        if key not in timed:
            m = copy.deepcopy(model)
            pruning.prune(m, spec, space.config(cfg, widths), gradients=gradients)
            timed[key] = measure(m)
        return timed[key]
    return ms


def measured_uniform(ms: Callable[[Dict[str, int]], float],
                     uniform_at: Callable[[float], Dict[str, int]], goal: float, lo: float,
                     hi: float) -> Optional[Tuple[float, Dict[str, int]]]:
    """The smallest uniform ratio in [lo, hi] *measured* within ``goal`` ms (bisection in
    :data:`GUARD_BISECTIONS` steps) and its widths; None where even ``hi`` measures over it."""
    if ms(uniform_at(hi)) > goal:
        return None
    for _ in range(GUARD_BISECTIONS):
        mid = (lo + hi) / 2
        if ms(uniform_at(mid)) <= goal:
            hi = mid
        else:
            lo = mid
    return hi, uniform_at(hi)


LATENCY_AWARE = "latency-aware"


def heldout_split(data: Any, n: int, seed: int) -> Any:
    """``data`` with ``n`` seeded training samples as its test split (the held-out slice) and
    the rest as its training split; the test split is not used."""
    total = len(data.train_labels)
    if n >= total:
        raise UserError(f"--search-heldout {n} is not below the {total} training images of "
                        f"{data.name}; accepted: 1 to {total - 1} (the rest re-estimate BN "
                        "statistics and fine-tune the finalists)")
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return data.holdout(idx)


# --------------------------------------------------------------------------------------------
# Budgets.

def mac_budget(model: nn.Module, spec: ModelSpec, cfg: pruning.PruneConfig, goal: Optional[int],
               gradients=None) -> Tuple[Space, Budget]:
    """The space and a MAC budget: ``goal`` MACs (a target), else the MACs of uniform
    ``cfg.ratio``; candidate 0 is uniform at ``cfg.ratio`` (the target's solved ratio)."""
    from tp_vgg.pruning.targets import DEFAULT_MAX_LAYER_RATIO

    max_ratio = cfg.max_layer_ratio if cfg.max_layer_ratio is not None else DEFAULT_MAX_LAYER_RATIO
    base = dataclasses.replace(cfg, global_pruning=False, max_layer_ratio=max_ratio)
    example = spec.example_input(device=next(model.parameters()).device)
    ranked = _Ranked(model, spec, base, example, max_ratio, gradients)
    if not ranked.roots:
        raise UserError("--search: no layer is left to choose a width for (every prunable layer "
                        "is the logits layer or fixed by --layer-ratios)")
    space = Space(ranked, cfg.round_to, max_ratio)
    cost = MacCost(model, spec, ranked, space)
    lost = ranked.plan(cfg.ratio)
    uniform = {r: space.sizes[r] - lost[r] for r in space.roots}
    trial = copy.deepcopy(model)
    pruning.prune(trial, spec, cfg, gradients=gradients)
    uniform_macs = counting.count(trial, spec).macs
    if goal is None:
        goal = uniform_macs
        what = f"the MACs of uniform --ratio {cfg.ratio:g} ({counting.human(goal)})"
    else:
        what = f"{counting.human(goal)} MACs"
    return space, Budget("macs", float(goal), cost, uniform, float(uniform_macs), describe=what,
                         macs=cost)


def latency_budget(model: nn.Module, spec: ModelSpec, cfg: pruning.PruneConfig, lb: Any,
                   device: Optional[str], gradients=None, log: Callable[[str], None] = print,
                   dist: Optional[DistContext] = None) -> Tuple[Space, Budget]:
    """The space and a latency budget ``lb.ms`` predicted by the latency table (calibrated on
    the measured original and a uniform anchor, as ``--target-latency`` does); candidate 0 is
    the widest uniform plan the table predicts within it, measured. Where that plan measures
    over the budget (the table under-predicts this model), candidate 0 is instead the smallest
    uniform ratio *measured* within it, and the window is anchored to its prediction: the
    candidates are predicted as fast as a plan known to meet the budget; where the table is off
    by more than :data:`TABLE_TRUST` (or predicts that plan at 0 ms or less), the candidates are
    held to that plan's MACs instead (``proxy="macs"``). Candidate 0's and the
    finalists' measurements are medians of :data:`GUARD_MEASUREMENTS` (the original and the
    calibration anchor are measured once, as ``--target-latency`` does)."""
    from tp_vgg.latency import budget as lt
    from tp_vgg.pruning.targets import DEFAULT_MAX_LAYER_RATIO

    mcfg = lb.config(spec, device)
    mcfg.validate()
    raw = lambda m: lt.measured_ms(m, spec, mcfg)  # noqa: E731
    measure = _median_measure(raw, dist)
    one = raw if dist is None else dist.shared(raw)  # the original and anchor: rank 0's figures
    max_ratio = cfg.max_layer_ratio if cfg.max_layer_ratio is not None else DEFAULT_MAX_LAYER_RATIO
    cfg = dataclasses.replace(cfg, ratio=0.0, max_layer_ratio=max_ratio, global_pruning=False)
    original_ms = one(model)
    if lb.ms >= original_ms:
        raise UserError(f"--target-latency {lb.ms:g} ms is not below the model's measured "
                        f"{original_ms:.2f} ms; accepted: less than {original_ms:.2f}")
    ranked, t, pred, block, learned = lt.build_predictor(model, spec, cfg, mcfg, gradients,
                                                         lb.cache_dir, lb.table_min_ms, log, dist)
    lt.calibrate(pred, ranked, model, spec, cfg, one, original_ms, gradients)
    space = Space(ranked, cfg.round_to, max_ratio)
    lo, hi = 0.0, max_ratio
    uniform = lt.uniform_kept(pred, ranked, hi, cfg.round_to)
    if pred.predict(uniform) > lb.ms:
        raise UserError(f"--target-latency {lb.ms:g} ms: even uniform --ratio {max_ratio:g} is "
                        f"predicted at {pred.predict(uniform):.2f} ms; raise --max-layer-ratio "
                        "or the target")
    for _ in range(30):  # the smallest uniform ratio predicted within the budget
        mid = (lo + hi) / 2
        if pred.predict(lt.uniform_kept(pred, ranked, mid, cfg.round_to)) <= lb.ms:
            hi = mid
        else:
            lo = mid

    def uniform_at(ratio: float) -> Dict[str, int]:
        return space.kept(space.fractions(lt.uniform_kept(pred, ranked, ratio, cfg.round_to)))

    uniform = uniform_at(hi)
    describe = (f"{lb.ms:g} ms ({mcfg.runtime} on {mcfg.device}, batch {mcfg.batch_sizes[0]}; "
                "predicted by the latency table")
    ms = _widths_measure(model, spec, cfg, space, measure, gradients)
    table_ms, anchor = ms(uniform), None
    if table_ms > lb.ms:  # the table under-predicts: anchor to a uniform plan measured within
        found = measured_uniform(ms, uniform_at, lb.ms, hi, max_ratio)
        if found is None:
            raise UserError(
                f"--target-latency {lb.ms:g} ms cannot be reached while every layer keeps at "
                f"least {1 - max_ratio:.0%} of its channels: uniform --ratio {max_ratio:g} is "
                f"measured at {ms(uniform_at(max_ratio)):.2f} ms (original "
                f"{original_ms:.2f} ms); raise --max-layer-ratio (now {max_ratio:g}) or the "
                "target")
        ratio, widest = found
        predicted, error = pred.predict(uniform), table_ms / max(pred.predict(uniform), 1e-9) - 1
        proxy = "macs" if pred.predict(widest) <= 0 or error > TABLE_TRUST else None
        held = ("its MACs: the table is off by more than "
                f"{100 * TABLE_TRUST:g}% here" if proxy else "its prediction")
        log(f"search: the latency table predicts uniform --ratio {hi:.3f} at {predicted:.2f} ms, "
            f"measured {table_ms:.2f} ms, over {lb.ms:g} ms; candidate 0 is uniform --ratio "
            f"{ratio:.3f}, measured {ms(widest):.2f} ms, and the candidates are held to {held}")
        describe += (f"; candidate 0: uniform --ratio {ratio:.3f} measured at {ms(widest):.2f} ms, "
                     f"the candidates held to {held} (the table predicted {predicted:.2f} ms for "
                     f"uniform --ratio {hi:.3f}, measured {table_ms:.2f} ms)")
        anchor = {"table_ratio": round(hi, 4), "table_predicted_ms": round(predicted, 4),
                  "table_measured_ms": round(table_ms, 4), "ratio": round(ratio, 4),
                  "predicted_ms": round(pred.predict(widest), 4),
                  "measured_ms": round(ms(widest), 4)}
        if proxy:
            cost = MacCost(model, spec, ranked, space)
            return space, Budget("ms", float(lb.ms), cost, widest, float(cost(widest)),
                                 describe=describe + ")", measured=ms, anchor=anchor,
                                 proxy=proxy, macs=cost)
        uniform = widest
    return space, Budget("ms", float(lb.ms), pred.predict, uniform, pred.predict(uniform),
                         describe=describe + ")", measured=ms, anchor=anchor,
                         macs=MacCost(model, spec, ranked, space))

