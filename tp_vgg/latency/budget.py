"""Prune to a latency budget measured on the user's device and runtime (``--target-latency MS``).

1. The original model is timed in its deployment form (:func:`tp_vgg.latency.timing.prepare`: BN folded,
   channels-last) in the runtime (:mod:`tp_vgg.latency.runtimes`) at the batch size asked for.
2. The per-layer latency table (:mod:`tp_vgg.latency.table`, cached on disk) gives each layer's
   time at any (input, output) width; the layers' input widths follow from torch-pruning's
   DependencyGraph (which layers a root's removed channels reach, and with how many features
   each: a flatten feeds a linear layer 49 per channel at 7x7). The prediction is the sum over
   layers plus an offset (the measured original minus the table's sum at full width: the input,
   what runs outside the layers, per-call overhead), so it is exact for the original.
3. Latency-aware global ranking (HALP, Shen et al. 2022; NetAdapt, Yang et al. 2018): channels
   are scored by the pruning criterion (the scores of ``--global``) and removed in order of
   *importance per millisecond saved*: at each step, for every layer, its next lowest-ranked
   channels (a multiple of ``--round-to``, by default of the fast-width block the table learned,
   at a time; with jumps of several multiples, so a step that only pays off further on is seen)
   are priced as the importance they carry over the predicted time they save, and the cheapest step is taken, until the prediction reaches
   the goal; the last step is the one that reaches it losing the least importance (no overshoot
   by a long jump). No layer loses more than ``--max-layer-ratio`` of its channels.
4. A copy is pruned to that plan with torch-pruning and *measured*. Above the target, the goal
   shrinks by measured / target and the search continues from there (up to ``max_rounds``).

``report.json`` ``"target"`` records the original, predicted and measured latency, the table's
prediction error and every round.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from tp_vgg.data.preprocessing import input_hw
from tp_vgg.device import device_name, resolve_device, set_threads
from tp_vgg.errors import UserError
from tp_vgg.latency import runtimes
from tp_vgg.latency import table as latency_table
from tp_vgg.latency import timing as latency
from tp_vgg.models.zoo import ModelSpec
from tp_vgg.pruning import graph as pruning
from tp_vgg.pruning import mapping

# ``dist`` below: a tp_vgg.train.distributed.DistContext (a higher layer, not imported here), or
# None for one process; only its ``share`` and ``enabled`` are used

MAX_ROUNDS = 4
# Steps the search prices for each layer, in units of --round-to: the next unit and jumps ahead, so
# a step that only pays off at the next fast-width block (or past a bump of the table) is seen.
LOOKAHEAD = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
# Two-point calibration: the prediction is offset + scale * (sum of the table's layer times), fit to
# the measured original and a copy pruned uniformly at this ratio. The scale is kept in the
# range below: a fit outside it is measurement noise, not the model.
ANCHOR_RATIO = 0.5
SCALE_RANGE = (0.5, 2.0)
METHOD = ("latency-aware global ranking: channels removed in order of importance per predicted "
          "millisecond saved (HALP / NetAdapt), then measured")


@dataclass
class LatencyBudget:
    """``--target-latency MS`` and how it is measured: ``runtime`` at ``batch_size`` (default:
    the throughput batch for the input size, 64 up to 64 px, else 8) on ``device`` (default: the
    job's) with ``threads``, in the deployment form. The table is cached under ``cache_dir``
    (default :func:`tp_vgg.latency.table.cache_dir`)."""

    ms: float
    runtime: str = "torch"
    batch_size: Optional[int] = None
    device: Optional[str] = None
    threads: Optional[int] = None
    channels_last: bool = True
    fuse_bn: bool = True
    warmup: int = 3
    repeats: int = 20
    cache_dir: Optional[str] = None
    max_rounds: int = MAX_ROUNDS
    table_min_ms: float = latency_table.MIN_TIMED_MS  # time each table entry at least this long

    def validate(self) -> None:
        if isinstance(self.ms, bool) or not isinstance(self.ms, (int, float)) or not (
                math.isfinite(self.ms) and self.ms > 0):
            raise UserError(f"--target-latency must be a number of milliseconds > 0, got "
                            f"{self.ms!r} (LatencyBudget.ms)")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(
                self.batch_size, int) or self.batch_size < 1):
            raise UserError(f"--latency-batch must be an integer >= 1, got {self.batch_size!r}")
        if not isinstance(self.max_rounds, int) or self.max_rounds < 1:
            raise UserError(f"LatencyBudget.max_rounds must be an integer >= 1, got "
                            f"{self.max_rounds!r}")
        # the runtime and the settings, on the budget's device (the job's device, when it names
        # none, is checked by solve())
        self.config(None, None if self.device else "cpu").validate()

    def config(self, spec: Optional[ModelSpec], device: Optional[str] = None
               ) -> latency.LatencyConfig:
        """The measurement settings, device resolved (``device``: the job's, when the budget
        names none)."""
        batch = self.batch_size or latency.default_batch_sizes(spec)[-1]
        return latency.LatencyConfig(
            batch_sizes=(batch,), device=device_name(self.device or device),
            channels_last=self.channels_last, fuse_bn=self.fuse_bn, warmup=self.warmup,
            repeats=self.repeats, threads=self.threads, runtime=self.runtime)


def measured_ms(model: nn.Module, spec: ModelSpec, cfg: latency.LatencyConfig) -> float:
    """The median latency of ``model`` in ``cfg`` (one batch size)."""
    return latency.measure({"m": model}, spec, cfg)[cfg.batch_sizes[0]]["m"].median_ms


# --------------------------------------------------------------------------------------------
# The table for a model.

@dataclass
class Table:
    """A model's segments and the latency table they are timed in."""

    table: latency_table.LatencyTable
    segments: Dict[str, latency_table.Segment]
    device: torch.device
    dtype: torch.dtype
    threads: int


def open_table(model: nn.Module, spec: ModelSpec, cfg: latency.LatencyConfig,
               cache_dir: Optional[str] = None,
               min_timed_ms: float = latency_table.MIN_TIMED_MS) -> Table:
    """The cached table for ``cfg``'s device, runtime, threads and batch size at ``spec``'s
    input size, and ``model``'s segments."""
    cfg.validate()
    cfg = latency.fit_layout(model, spec, cfg)
    dev = resolve_device(cfg.device, latency.DEVICES)
    prepared = latency.prepare(model, cfg)
    segs = latency_table.segments(prepared, latency._input(spec, 1, cfg))
    threads = cfg.threads or torch.get_num_threads()
    h, w = input_hw(spec.resolved().input_size)
    key = latency_table.TableKey(
        device=str(dev), hardware=latency_table.hardware(dev), runtime=cfg.runtime,
        runtime_version=runtimes.get(cfg.runtime).version(), threads=threads,
        batch_size=cfg.batch_sizes[0], input_size=f"{h}x{w}", dtype=cfg.dtype,
        channels_last=cfg.channels_last, fuse_bn=cfg.fuse_bn)
    table = latency_table.LatencyTable(key, latency_table.cache_dir(cache_dir),
                                       min_timed_ms=min_timed_ms)
    return Table(table, segs, dev, latency.DTYPES[cfg.dtype], threads)


def _once(dist: Optional[Any], compute: Callable[[], Any]) -> Any:
    """``compute()``; under torchrun (``dist``) on rank 0 alone, its result given to every rank
    (:meth:`~tp_vgg.train.distributed.DistContext.share`): every rank plans from the same
    timings, so every rank prunes the same channels."""
    return compute() if dist is None else dist.share(compute)


def learn_round_to(t: Table, dist: Optional[Any] = None) -> Tuple[int, Dict[str, Any]]:
    """The fast channel multiple of the table's device and runtime (``--round-to auto``), from a
    width scan of one convolution (cached), and what it was learned from. Under torchrun
    (``dist``) rank 0 scans and every rank gets its answer."""
    if dist is not None and dist.enabled:
        block, info = _once(dist, lambda: learn_round_to(t))
        return int(block), info
    seg = latency_table.scan_segment(t.segments)
    if seg is None:
        return 1, {"learned_from": None, "why": "the model has no convolution to scan"}
    old = set_threads(t.threads)
    try:
        times = t.table.scan(seg, t.device, t.dtype)
    finally:
        set_threads(old)
    t.table.save()
    block, scores = latency_table.learn_block(times)
    return block, {"learned_from": seg.name, "widths": [min(times), max(times)],
                   "scores": {str(k): round(v, 3) for k, v in scores.items()},
                   "off_block_factor": round(latency_table.off_block_factor(times, block), 3),
                   "table": t.table.path}


# --------------------------------------------------------------------------------------------
# The predictor.

class Predictor:
    """Predicted latency of the model with each root layer keeping ``kept[root]`` channels."""

    def __init__(self, t: Table, roots: Dict[str, int], feeds: Dict[str, List[Tuple[str, int]]],
                 fixed: Dict[str, int], block: int, lowest: float, off_block: float = 1.0):
        self.t = t
        self.block = block
        self.off_block = off_block          # time factor of a width off the block multiples
        self.sizes = dict(roots)            # root -> channels before
        self.feeds = feeds                  # root -> [(consumer, features per channel)]
        self.fixed = dict(fixed)            # --layer-ratios layers -> kept channels
        self.segs = t.segments
        self.grids: Dict[str, Tuple[List[int], List[int]]] = {}
        fed: Dict[str, List[Tuple[str, int]]] = {}
        for r, consumers in feeds.items():
            for name, per in consumers:
                fed.setdefault(name, []).append((r, per))
        self.fed = fed                      # consumer -> [(root, features per channel)]
        for name, seg in self.segs.items():
            if name in fed:
                unit = fed[name][0][1]
                cins = latency_table.grid(seg.c_in // unit, lowest, unit,
                                          block if seg.conv else 1)
            else:
                cins = [seg.c_in]
            if name in roots or name in fixed:
                couts = latency_table.grid(seg.c_out, lowest, 1, block if seg.conv else 1)
                if name in fixed:
                    couts = sorted(set(couts) | {fixed[name]})
            else:
                couts = [seg.c_out]
            self.grids[name] = (cins, couts)
        self.offset = 0.0
        self.scale = 1.0

    def calibrate(self, full_ms: float, anchor_kept: Optional[Dict[str, int]] = None,
                  anchor_ms: Optional[float] = None) -> None:
        """offset and scale from the measured original (and an anchor model, when given)."""
        whole = {n: self.full(n) for n in [*self.sizes, *self.fixed]}  # the original's widths
        full = sum(self.layers_ms(whole).values())
        self.scale = 1.0
        if anchor_kept is not None and anchor_ms is not None:
            low = sum(self.layers_ms(anchor_kept).values())
            if full - low > 1e-9:
                self.scale = min(max((full_ms - anchor_ms) / (full - low), SCALE_RANGE[0]),
                                 SCALE_RANGE[1])
        self.offset = full_ms - self.scale * full

    def ensure(self) -> int:
        """Time every grid point not in the table yet; returns how many were timed."""
        before = self.t.table.timed
        old = set_threads(self.t.threads)
        try:
            for name, seg in self.segs.items():
                cins, couts = self.grids[name]
                self.t.table.ensure(seg, cins, couts, self.t.device, self.t.dtype)
        finally:
            set_threads(old)
        self.t.table.save()
        return self.t.table.timed - before

    def full(self, name: str) -> int:
        return self.sizes.get(name) or self.segs[name].c_out

    def kept_of(self, name: str, kept: Dict[str, int]) -> int:
        """Channels ``name`` keeps: ``kept``'s, else its --layer-ratios count, else all."""
        if name in kept:
            return kept[name]
        return self.fixed[name] if name in self.fixed else self.full(name)

    def dims(self, name: str, kept: Dict[str, int]) -> Tuple[int, int]:
        seg = self.segs[name]
        c_in = seg.c_in - sum((self.full(r) - self.kept_of(r, kept)) * per
                              for r, per in self.fed.get(name, ()))
        c_out = self.kept_of(name, kept)
        return c_in, c_out

    def layer_ms(self, name: str, c_in: int, c_out: int) -> float:
        seg = self.segs[name]
        cins, couts = self.grids[name]
        factor = 1.0
        if seg.conv and self.block > 1:
            # a width between blocks costs what the next block costs (times the off-block factor
            # where the runtime's kernels take multiples only); the model's own widths are timed
            if (c_in != seg.c_in and c_in % self.block) or (c_out != seg.c_out
                                                             and c_out % self.block):
                factor = self.off_block
            c_in = latency_table.ceil_to(c_in, self.block, seg.c_in)
            c_out = latency_table.ceil_to(c_out, self.block, seg.c_out)
        return factor * self.t.table.lookup(seg, c_in, c_out, cins, couts)

    def layers_ms(self, kept: Dict[str, int]) -> Dict[str, float]:
        return {n: self.layer_ms(n, *self.dims(n, kept)) for n in self.segs}

    def predict(self, kept: Dict[str, int]) -> float:
        return self.offset + self.scale * sum(self.layers_ms(kept).values())

    def affected(self, root: str) -> List[str]:
        return [n for n in [root] + [c for c, _ in self.feeds.get(root, ())] if n in self.segs]


@mapping.scoped
def _feeds(ranked, names: Dict[nn.Module, str]) -> Dict[str, List[Tuple[str, int]]]:
    """Root -> the prunable layers whose inputs its channels are, with the input features per
    channel, read from the DependencyGraph's pruning group of one channel."""
    graph = ranked.graph
    modules = {n: m for m, n in names.items()}
    out: Dict[str, List[Tuple[str, int]]] = {}
    for r in list(ranked.roots) + [n for n in ranked.fixed if n in modules]:
        m = modules[r]
        group = graph.get_pruning_group(m, graph.get_pruner_of_module(m).prune_out_channels, [0])
        consumers: Dict[str, int] = {}
        for item in group:
            dep, idxs = item.dep, item.idxs
            t = dep.target.module
            if (isinstance(t, pruning.PRUNABLE) and graph.is_in_channel_pruning_fn(dep.handler)
                    and t in names):
                consumers[names[t]] = max(consumers.get(names[t], 0), len(idxs))
        out[r] = sorted(consumers.items())
    return out


# --------------------------------------------------------------------------------------------
# The plan.

@dataclass
class LatencyPlan:
    """How a latency target was reached (report.json ``"target"``)."""

    target_ms: float
    runtime: str
    runtime_version: str
    device: str
    hardware: str
    threads: int
    batch_size: int
    original_ms: float
    predicted_ms: float
    measured_ms: float
    reached: bool
    max_layer_ratio: float
    round_to: Optional[int]
    block: int
    offset_ms: float
    scale: float
    anchor_ms: float                            # measured: uniform ANCHOR_RATIO copy
    channels: Dict[str, List[int]]              # layer -> [before, after]
    rounds: List[Dict[str, float]] = field(default_factory=list)
    table: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    # "latency-aware" (this search's plan), or "uniform" where the guard kept the uniform plan:
    # then measured_ms and channels are uniform's, predicted_ms and rounds the latency-aware plan's
    kept: str = "latency-aware"

    @property
    def prediction_error(self) -> Optional[float]:
        """(predicted - measured) / measured of the final model (None: the guard kept another
        plan than the one predicted)."""
        if self.kept != "latency-aware":
            return None
        return (self.predicted_ms - self.measured_ms) / self.measured_ms

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        err = self.prediction_error
        if self.kept != "latency-aware":
            d["latency_aware_predicted_ms"] = d.pop("predicted_ms")
        d.update(latency_ms=self.target_ms, method=METHOD,
                 prediction_error=None if err is None else round(err, 4),
                 speedup=self.original_ms / self.measured_ms,
                 units="milliseconds per forward pass of a batch of batch_size, median")
        return d


def describe(plan: LatencyPlan) -> str:
    """The terminal line: what was asked, predicted and measured."""
    state = "reached" if plan.reached else "NOT reached"
    err = plan.prediction_error
    predicted = (f"predicted {plan.predicted_ms:.2f} ms (error {100 * err:+.1f}%)"
                 if err is not None else f"the {plan.kept} plan, kept by the latency guard")
    return (f"target {plan.target_ms:g} ms ({plan.runtime} {plan.runtime_version} on "
            f"{plan.device}, {plan.threads} threads, batch {plan.batch_size}): {state}, measured "
            f"{plan.measured_ms:.2f} ms, {predicted}; original {plan.original_ms:.2f} ms, "
            f"{plan.original_ms / plan.measured_ms:.2f}x faster; {len(plan.rounds)} round(s), "
            f"no layer above {plan.max_layer_ratio:g}")


class _Search:
    """Greedy removal by importance per predicted millisecond, resumable with a lower goal."""

    def __init__(self, pred: Predictor, ranked, max_ratio: float, round_to: Optional[int]):
        self.pred = pred
        self.kept: Dict[str, int] = {}
        self.unit: Dict[str, int] = {}
        self.least: Dict[str, int] = {}
        self.prefix: Dict[str, List[float]] = {}
        self.group: Dict[str, int] = {}
        for r, c, g, scores in zip(ranked.roots, ranked.ranking.sizes, ranked.ranking.groups,
                                   ranked.scores):
            u = g * (round_to // math.gcd(round_to, g)) if round_to else g
            units = c // g
            cap = min(int(units * max_ratio), units - 1) * g
            self.unit[r], self.group[r] = u, g
            self.least[r] = max(c - cap, u)
            # rounded down to a multiple, unless that already breaks --max-layer-ratio
            self.kept[r] = c // u * u if c // u * u >= self.least[r] else c
            sums = [0.0]
            for s in sorted(float(v) for v in scores):
                sums.append(sums[-1] + s)
            self.prefix[r] = sums
        self.look = LOOKAHEAD
        self.current = pred.layers_ms(self.kept)
        self.steps = 0

    @property
    def predicted(self) -> float:
        return self.pred.offset + self.pred.scale * sum(self.current.values())

    def _value(self, r: str, kept_from: int, kept_to: int) -> float:
        c, g = self.pred.sizes[r], self.group[r]
        return self.prefix[r][(c - kept_to) // g] - self.prefix[r][(c - kept_from) // g]

    def run(self, goal: float) -> bool:
        """Remove channels until the prediction is at most ``goal``; False when every layer is at
        its limit first."""
        pred = self.pred
        while self.predicted > goal:
            best = finish = None
            for r in self.kept:
                affected = pred.affected(r)
                for m in self.look:
                    k = self.kept[r] - m * self.unit[r]
                    if k < self.least[r]:
                        break
                    trial = dict(self.kept)
                    trial[r] = k
                    new = {n: pred.layer_ms(n, *pred.dims(n, trial)) for n in affected}
                    saved = self.pred.scale * sum(self.current[n] - t for n, t in new.items())
                    if saved <= 1e-9:
                        continue
                    value = self._value(r, self.kept[r], k)
                    price = value / saved
                    if best is None or price < best[0]:
                        best = (price, r, k, new)
                    if self.predicted - saved <= goal and (finish is None or value < finish[0]):
                        finish = (value, r, k, new)
            if best is None:
                return False
            # the last step: of the steps that reach the goal, the one losing the least importance
            _, r, k, new = finish or best
            self.kept[r] = k
            self.current.update(new)
            self.steps += 1
        return True


def plan_config(cfg: pruning.PruneConfig, kept: Dict[str, int], sizes: Dict[str, int],
                groups: Dict[str, int], fixed_ratios: Dict[str, float]) -> pruning.PruneConfig:
    """Per-layer ratios that make torch-pruning keep exactly ``kept[layer]`` of ``sizes[layer]``
    channels: int(C (1 - r)) = C - k with r = (k - 0.5) / C (per group of a GroupNorm of
    ``groups[layer]`` groups)."""
    ratios = dict(fixed_ratios)
    for r, k_kept in kept.items():
        c, g = sizes[r], groups.get(r, 1)
        k = c - k_kept
        if k:
            ratios[r] = (k // g - 0.5) / (c // g)
    return dataclasses.replace(cfg, ratio=0.0, global_pruning=False, layer_ratios=ratios)


def build_predictor(model: nn.Module, spec: ModelSpec, cfg: pruning.PruneConfig,
                    mcfg: latency.LatencyConfig,
                    gradients: Optional[Callable[[nn.Module], None]] = None,
                    cache_dir: Optional[str] = None,
                    min_timed_ms: float = latency_table.MIN_TIMED_MS,
                    log: Callable[[str], None] = print, dist: Optional[Any] = None):
    """The ranked channels (``cfg``'s criterion, global scores), the model's latency table (every
    grid point timed, cached), the :class:`Predictor` (not calibrated yet), the fast-width block
    and how it was learned. Under torchrun (``dist``) rank 0 times the table and every rank
    predicts from rank 0's timings."""
    from tp_vgg.pruning.targets import _Ranked

    max_ratio = cfg.max_layer_ratio
    example = spec.example_input(device=next(model.parameters()).device)
    ranked = _Ranked(model, spec, dataclasses.replace(cfg, global_pruning=True), example,
                     max_ratio, gradients)
    if not ranked.roots:
        raise UserError("no layer is left to prune for the target (every prunable layer is the "
                        "logits layer, fixed by --layer-ratios, or not ranked by the criterion)")
    t = open_table(model, spec, mcfg, cache_dir, min_timed_ms)
    block, learned = learn_round_to(t, dist)
    names = {m: n for n, m in ranked.model.named_modules()}
    fixed = {n: ranked._kept(n, c, r) for n, (c, r) in ranked.fixed.items()}
    pred = Predictor(t, dict(zip(ranked.roots, ranked.ranking.sizes)), _feeds(ranked, names),
                     fixed, block, 1 - max_ratio, learned.get("off_block_factor", 1.0))
    t0 = time.perf_counter()
    timed, entries = _once(dist, lambda: (pred.ensure(), t.table.entries))
    t.table.entries = entries  # under torchrun: rank 0's timings (as JSON carries them) on every rank
    if timed:
        log(f"latency table: timed {timed} layer shapes in {time.perf_counter() - t0:.0f} s "
            f"({mcfg.runtime} on {mcfg.device}, batch {mcfg.batch_sizes[0]}); cached in "
            f"{t.table.path}")
    return ranked, t, pred, block, learned


def uniform_kept(pred: Predictor, ranked, ratio: float,
                 round_to: Optional[int] = None) -> Dict[str, int]:
    """The channels each root keeps under ``--ratio ratio`` (and ``--round-to``)."""
    return {n: pruning.kept_channels(c, ratio, ranked.groups.get(n, 1), round_to)
            for n, c in pred.sizes.items()}


def calibrate(pred: Predictor, ranked, model: nn.Module, spec: ModelSpec,
              cfg: pruning.PruneConfig, measure: Callable[[nn.Module], float], original_ms: float,
              gradients: Optional[Callable[[nn.Module], None]] = None) -> float:
    """Fit the predictor's offset and scale to the measured original and a copy pruned uniformly
    at :data:`ANCHOR_RATIO` (measured here; returned)."""
    ratio = min(ANCHOR_RATIO, cfg.max_layer_ratio or ANCHOR_RATIO)  # inside the table's grid
    anchor = copy.deepcopy(model)
    pruning.prune(anchor, spec, dataclasses.replace(cfg, ratio=ratio, round_to=None),
                  gradients=gradients)
    anchor_ms = measure(anchor)
    pred.calibrate(original_ms, uniform_kept(pred, ranked, ratio), anchor_ms)
    return anchor_ms


def solve(model: nn.Module, spec: ModelSpec, cfg: pruning.PruneConfig, budget: LatencyBudget,
          gradients: Optional[Callable[[nn.Module], None]] = None, device: Optional[str] = None,
          log: Callable[[str], None] = print,
          measure: Optional[Callable[[nn.Module], float]] = None,
          dist: Optional[Any] = None) -> Tuple[pruning.PruneConfig, LatencyPlan]:
    """The ``PruneConfig`` (per-layer ratios) whose pruned model measures at most
    ``budget.ms``, and how it was found. ``model`` is not changed. ``measure`` (default: the
    budget's runtime) times a model in milliseconds. Under torchrun (``dist``) rank 0 times the
    table and measures, and every rank gets its figures: all ranks reach the same plan."""
    from tp_vgg.pruning.targets import DEFAULT_MAX_LAYER_RATIO

    budget.validate()
    mcfg = budget.config(spec, device)
    mcfg.validate()
    measure = measure or (lambda m: measured_ms(m, spec, mcfg))
    if dist is not None:
        measure = dist.shared(measure)
    max_ratio = cfg.max_layer_ratio if cfg.max_layer_ratio is not None else DEFAULT_MAX_LAYER_RATIO
    cfg = dataclasses.replace(cfg, ratio=0.0, max_layer_ratio=max_ratio, global_pruning=False)
    cfg.validate()
    where = (f"{mcfg.runtime} on {mcfg.device}, {mcfg.threads or torch.get_num_threads()} "
             f"threads, batch {mcfg.batch_sizes[0]}")
    original_ms = measure(model)
    if budget.ms >= original_ms:
        raise UserError(f"--target-latency {budget.ms:g} ms is not below the model's measured "
                        f"{original_ms:.2f} ms ({where}); accepted: less than {original_ms:.2f}")
    ranked, t, pred, block, learned = build_predictor(model, spec, cfg, mcfg, gradients,
                                                      budget.cache_dir, budget.table_min_ms, log,
                                                      dist)
    anchor_ms = calibrate(pred, ranked, model, spec, cfg, measure, original_ms, gradients)
    # without --round-to the search moves in whole fast-width blocks: a width off the block
    # multiples runs slower than the table's layers timed alone show (ONNX Runtime leaves its
    # blocked NCHWc kernels; BENCHMARKS.md)
    unit = cfg.round_to or block
    search = _Search(pred, ranked, max_ratio, unit if unit > 1 else None)
    fixed_ratios = {n: r for n, (c, r) in ranked.fixed.items()}
    goal, rounds, reached = budget.ms, [], False
    candidate_cfg, measured = cfg, original_ms
    for i in range(budget.max_rounds):
        ok = search.run(goal)
        limit_ms = None
        if not ok and i == 0:  # the prediction says no: measure the fastest model allowed
            limit = copy.deepcopy(model)
            pruning.prune(limit, spec, plan_config(cfg, search.kept, pred.sizes, search.group,
                                                   fixed_ratios), gradients=gradients)
            limit_ms = measure(limit)
        if limit_ms is not None and limit_ms > budget.ms:
            raise UserError(
                f"--target-latency {budget.ms:g} ms cannot be reached while every layer keeps "
                f"at least {1 - max_ratio:.0%} of its channels: the fastest such model is "
                f"predicted at {search.predicted:.2f} ms and measured at {limit_ms:.2f} ms "
                f"(original measured "
                f"{original_ms:.2f} ms, {where}); raise --max-layer-ratio (now "
                f"{max_ratio:g}) or the target")
        candidate_cfg = plan_config(cfg, search.kept, pred.sizes, search.group, fixed_ratios)
        pruned = copy.deepcopy(model)
        pruning.prune(pruned, spec, candidate_cfg, gradients=gradients)
        measured = measure(pruned)
        rounds.append({"goal_ms": goal, "predicted_ms": search.predicted, "measured_ms": measured})
        log(f"latency target round {i + 1}: predicted {search.predicted:.2f} ms, measured "
            f"{measured:.2f} ms (target {budget.ms:g} ms)")
        if measured <= budget.ms:
            reached = True
            break
        if not ok:  # every layer at its limit: this is the fastest model allowed
            break
        goal = min(goal, search.predicted) * budget.ms / measured
    real = pruning.out_channels(pruned)  # what torch-pruning kept, read from the model
    channels = {r: [pred.sizes[r], real[r]] for r in pred.sizes}
    channels.update({n: [c, real[n]] for n, (c, _) in ranked.fixed.items()})
    notes = list(ranked.notes)
    for seg in t.segments.values():
        if seg.stopped_at:
            notes.append(f"the table times {seg.name} without {seg.stopped_at} and what follows "
                         "it (their time is in the offset, at full width)")
    plan = LatencyPlan(
        target_ms=float(budget.ms), runtime=mcfg.runtime,
        runtime_version=t.table.key.runtime_version, device=mcfg.device,
        hardware=t.table.key.hardware, threads=t.threads, batch_size=mcfg.batch_sizes[0],
        original_ms=original_ms, predicted_ms=rounds[-1]["predicted_ms"] if rounds else
        search.predicted, measured_ms=measured, reached=reached, max_layer_ratio=max_ratio,
        round_to=unit, block=block, offset_ms=pred.offset, scale=pred.scale,
        anchor_ms=anchor_ms, channels=channels,
        rounds=rounds, notes=notes,
        table={"file": t.table.path, "key": dataclasses.asdict(t.table.key),
               "timed_now": t.table.timed, "from_cache": t.table.loaded,
               "layers": len(t.segments), "fast_width": learned})
    return candidate_cfg, plan
