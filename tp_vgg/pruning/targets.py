"""Target-driven pruning: ``--target-speedup X`` (MACs before / after) or ``--target-macs N``.

:func:`solve` finds the pruning ratio that reaches the target by pruning a copy of the model in
small steps -- uniform (every layer loses the same fraction) or ``--global`` (one ranking of all
channels with the criterion, capped per layer) -- and counting its MACs with fvcore after each
step: coarse steps of 2 % of the channels until the target is passed, then steps of 0.2 % from
the last coarse step above it. The answer is a :class:`~tp_vgg.pruning.graph.PruneConfig` whose
``ratio`` reaches the target; pruning the model with it (in one shot or in ``iterative_steps``
steps) gives exactly the per-layer channel counts of the copy, hence the same MACs.

No layer loses more than ``--max-layer-ratio`` of its channels (default
:data:`DEFAULT_MAX_LAYER_RATIO` here, so that no layer collapses to a handful of channels); a
target that cannot be reached within it is refused with the best speed-up that can.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from tp_vgg.errors import UserError
from tp_vgg.models.counting import Counts, count, human
from tp_vgg.models.zoo import ModelSpec, keep_mode
from tp_vgg.pruning import checks
from tp_vgg.pruning import mapping
from tp_vgg.pruning import graph as pruning

DEFAULT_MAX_LAYER_RATIO = 0.75   # every layer keeps at least a quarter of its channels
COARSE_STEP = 0.02
FINE_STEP = 0.002


@dataclass
class Target:
    """Exactly one of ``speedup`` (MACs before / after, > 1), ``macs`` (MACs after) or
    ``latency`` (a measured latency budget: :class:`tp_vgg.latency.budget.LatencyBudget`)."""

    speedup: Optional[float] = None
    macs: Optional[int] = None
    latency: Optional[Any] = None

    def validate(self) -> None:
        if sum(v is not None for v in (self.speedup, self.macs, self.latency)) != 1:
            raise UserError("give one of --target-speedup X, --target-macs N or --target-latency "
                            "MS (Target.speedup, Target.macs or Target.latency)")
        if self.latency is not None:
            if not (hasattr(self.latency, "ms") and hasattr(self.latency, "config")):
                raise UserError(f"Target.latency must be a LatencyBudget, got "
                                f"{type(self.latency).__name__}")
            self.latency.validate()
        if self.speedup is not None and not (isinstance(self.speedup, (int, float))
                                             and math.isfinite(self.speedup) and self.speedup > 1):
            raise UserError(f"--target-speedup must be a number > 1, got {self.speedup!r} "
                            "(Target.speedup)")
        if self.macs is not None and (isinstance(self.macs, bool) or not isinstance(self.macs, int)
                                      or self.macs < 1):
            raise UserError(f"--target-macs must be a positive whole number of MACs, got "
                            f"{self.macs!r} (Target.macs)")

    def goal(self, macs_before: int) -> int:
        """The MACs to reach or go below."""
        if self.speedup is not None:
            return int(macs_before / self.speedup)
        if self.macs >= macs_before:
            raise UserError(f"--target-macs {self.macs} is not below the model's "
                            f"{macs_before} MACs ({human(macs_before)}); accepted: fewer MACs")
        return int(self.macs)

    def describe(self) -> str:
        return (f"--target-speedup {self.speedup:g}" if self.speedup is not None
                else f"--target-macs {self.macs}")


@dataclass
class TargetPlan:
    """How a target was reached: the ratio found, and the MACs of each step of the search."""

    target: Dict[str, Any]
    mode: str                        # "uniform" or "global"
    max_layer_ratio: float
    macs_before: int
    goal_macs: int
    ratio: float                     # the --ratio that reaches the goal
    predicted_macs: int              # MACs of the copy pruned at ``ratio``
    channels: Dict[str, int]         # per-layer channels removed at ``ratio``
    # [ratio, macs] of every step: estimated from fvcore's per-layer counts of the unpruned model;
    # the last entry is fvcore's count of the copy at ``ratio``
    steps: List[List[float]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["predicted_speedup"] = self.macs_before / max(self.predicted_macs, 1)
        d["search"] = {"coarse_step": COARSE_STEP, "fine_step": FINE_STEP,
                       "steps": len(self.steps)}
        return d


class _Ranked:
    """The layers the criterion ranks on a copy of the model, and (global) one ranking of all
    their channels -- the same scores :func:`tp_vgg.pruning.graph.prune` computes."""

    @mapping.scoped
    def __init__(self, model: nn.Module, spec: ModelSpec, cfg: pruning.PruneConfig,
                 example: torch.Tensor, max_ratio: float,
                 gradients: Optional[Callable[[nn.Module], None]]):
        scored = copy.deepcopy(model)
        protected: List[nn.Module] = (pruning.output_layers(scored, cfg.output_layer)
                                      if cfg.output_layer is not None else [])
        ratios = pruning._resolve_layer_ratios(scored, cfg.layer_ratios)
        with keep_mode(scored):
            pruner = pruning._make_pruner(scored, spec, cfg, example, ratios, protected, max_ratio)
            if not protected:
                protected = pruning.output_layers(scored, graph=pruner.DG)
                if not protected:
                    raise UserError(checks.no_output_layer_message(
                        scored, checks.bare_parameters(pruner.DG), pruner.DG))
                pruner.ignored_layers = [s for m in protected for s in m.modules()]
            self.notes = list(pruning._criterion_hook(pruner, "check", scored, gradients) or [])
            fixed = {s for m in ratios for s in m.modules()}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                pruning._criterion_hook(pruner, "prepare", scored, gradients)
                self.ranking = pruning.GlobalRanking(pruner, fixed)
            groups = pruning.channel_groups(pruner)
        self.model, self.graph = scored, pruner.DG
        self.scores = self.ranking.scores
        names = {m: n for n, m in scored.named_modules()}
        # layers feeding a GroupNorm keep the same count in each of its groups
        self.groups = {names[m]: g for m, g in groups.items()}
        self.roots = [names[m] for m in self.ranking.roots]
        protected_set = {s for m in protected for s in m.modules()}
        # layers given their own ratio in --layer-ratios: kept_channels(C, r), as prune() does
        self.fixed: Dict[str, Tuple[int, float]] = {}
        for m, r in ratios.items():
            for sub in m.modules():
                if isinstance(sub, pruning.PRUNABLE) and sub not in protected_set:
                    c = sub.out_channels if isinstance(sub, nn.Conv2d) else sub.out_features
                    self.fixed[names[sub]] = (c, r)
        self.round_to = cfg.round_to
        self.max_ratio = max_ratio
        self.global_pruning = cfg.global_pruning

    def _kept(self, name: str, c: int, r: float) -> int:
        """Channels layer ``name`` of ``c`` keeps at ratio ``r``, as prune() does."""
        return pruning.kept_channels(c, r, self.groups.get(name, 1), self.round_to)

    def empties(self, plan: Dict[str, int]) -> List[str]:
        """The layers ``plan`` would leave with no channel (``--round-to`` rounds a kept count
        below the multiple down to 0)."""
        sizes = dict(zip(self.roots, self.ranking.sizes))
        sizes.update({n: c for n, (c, _) in self.fixed.items()})
        return [n for n, lost in plan.items() if lost >= sizes[n]]

    def plan(self, ratio: float) -> Dict[str, int]:
        """Channels each layer loses at ``ratio``."""
        out = {name: c - self._kept(name, c, r) for name, (c, r) in self.fixed.items()}
        sizes = self.ranking.sizes
        if self.global_pruning:
            removed = self.ranking.removed(ratio, self.max_ratio)
            out.update({n: c - pruning.round_kept((c - k) // g, g, self.round_to)
                        for n, c, k, g in zip(self.roots, sizes, removed, self.ranking.groups)})
        else:
            r = min(ratio, self.max_ratio)
            out.update({n: c - self._kept(n, c, r) for n, c in zip(self.roots, sizes)})
        return out


class _Sizer:
    """A copy of the model pruned to ever larger per-layer channel counts. Which channels go does
    not matter for the count, so none are ranked.

    :meth:`macs` estimates the MACs after each step from fvcore's per-layer counts of the
    unpruned model -- a convolution's or linear layer's multiply-adds scale with its output
    channels times its input channels per group; other ops keep theirs -- so that a step costs no
    trace; :meth:`exact` counts with fvcore."""

    @mapping.scoped
    def __init__(self, model: nn.Module, spec: ModelSpec, example: torch.Tensor, base: Counts):
        self.model = copy.deepcopy(model)
        self.spec = spec
        self.example = example
        self.graph = pruning.build_graph(self.model, spec, example)
        self.modules = dict(self.model.named_modules())
        self.removed: Dict[str, int] = {}
        self.layers = {}
        for l in base.layers:
            m = self.modules.get(l.name)
            if isinstance(m, pruning.PRUNABLE) and l.macs:
                self.layers[l.name] = (l.macs, _in_per_group(m), _out(m))
        self.other = base.macs - sum(macs for macs, _, _ in self.layers.values())

    @mapping.scoped
    def prune_to(self, plan: Dict[str, int]) -> None:
        for name, k in plan.items():
            more = k - self.removed.get(name, 0)
            if more < 0:
                raise AssertionError(f"the plan for {name} shrank")  # plans only grow
            if more:
                root = self.modules[name]
                n = self.graph.get_out_channels(root)
                fn = self.graph.get_pruner_of_module(root).prune_out_channels
                self.graph.get_pruning_group(root, fn, list(range(n - more, n))).prune()
            self.removed[name] = k

    def macs(self, plan: Dict[str, int]) -> int:
        self.prune_to(plan)
        total = self.other
        for name, (macs, cin, cout) in self.layers.items():
            m = self.modules[name]
            total += macs * (_in_per_group(m) / cin) * (_out(m) / cout)
        return int(round(total))

    def exact(self) -> int:
        return count(self.model, self.spec, self.example).macs


def _out(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def _in_per_group(m: nn.Module) -> float:
    return m.in_channels / m.groups if isinstance(m, nn.Conv2d) else m.in_features


def solve(model: nn.Module, spec: ModelSpec, cfg: pruning.PruneConfig, target: Target,
          gradients: Optional[Callable[[nn.Module], None]] = None,
          example: Optional[torch.Tensor] = None) -> Tuple[pruning.PruneConfig, TargetPlan]:
    """The ``PruneConfig`` (``cfg`` with ``ratio`` and ``max_layer_ratio`` set) whose pruning
    reaches ``target``, and how it was found. ``model`` is not changed."""
    target.validate()
    max_ratio = cfg.max_layer_ratio if cfg.max_layer_ratio is not None else DEFAULT_MAX_LAYER_RATIO
    cfg = dataclasses.replace(cfg, ratio=0.0, max_layer_ratio=max_ratio)
    cfg.validate()
    if example is None:
        example = spec.example_input(device=next(model.parameters()).device)
    base = count(model, spec, example)
    macs_before = base.macs
    goal = target.goal(macs_before)
    ranked = _Ranked(model, spec, cfg, example, max_ratio, gradients)
    if not ranked.roots:
        raise UserError("no layer is left to prune for the target (every prunable layer is the "
                        "logits layer, fixed by --layer-ratios, or not ranked by the criterion)")
    top = max_ratio if not cfg.global_pruning else 0.999
    steps: List[List[float]] = []
    emptied: List[str] = []

    def walk(sizer: _Sizer, start: float, stop: float, step: float,
             exact: bool = False) -> Optional[float]:
        """Ratios start+step, start+2*step, ... up to stop: the first that reaches the goal
        (the sizer is left pruned to it)."""
        k = 1
        last_plan = None
        while True:
            r = round(start + k * step, 6)
            if r > stop + 1e-9:
                return None
            plan = ranked.plan(r)
            if ranked.empties(plan):  # ratios from here on would leave a layer empty
                emptied.extend(ranked.empties(plan))
                return None
            if plan != last_plan:  # the same channels: the same MACs
                macs = sizer.macs(plan)
                if exact:
                    macs = sizer.exact()
                steps.append([r, macs])
                last_plan = plan
                if macs <= goal:
                    return r
            k += 1

    coarse = walk(_Sizer(model, spec, example, base), 0.0, top, COARSE_STEP)
    if coarse is None:
        best = min((m for _, m in steps), default=macs_before)
        how = ("every layer keeps", "its") if not cfg.global_pruning else ("the layers keep",
                                                                           "their")
        if emptied:
            raise UserError(
                f"{target.describe()} ({human(goal)} MACs) cannot be reached with --round-to "
                f"{cfg.round_to}: at most {macs_before / max(best, 1):.2f}x ({human(best)} MACs) "
                f"before layer {emptied[0]!r} would keep 0 channels; lower --round-to or the target")
        raise UserError(
            f"{target.describe()} ({human(goal)} MACs) cannot be reached while {how[0]} at least "
            f"{1 - max_ratio:.0%} of {how[1]} channels: at most {macs_before / max(best, 1):.2f}x "
            f"({human(best)} MACs); raise --max-layer-ratio (now {max_ratio:g}) or lower the target")
    lo = max(0.0, round(coarse - COARSE_STEP, 6))
    sizer = _Sizer(model, spec, example, base)
    sizer.prune_to(ranked.plan(lo))
    ratio = walk(sizer, lo, coarse, FINE_STEP)
    if ratio is None:  # the estimate at ``coarse`` was the first below the goal
        ratio = coarse
        sizer.prune_to(ranked.plan(ratio))
    predicted = sizer.exact()  # fvcore's count of the copy at the chosen ratio
    if predicted > goal:  # an op the estimate does not scale: go on, counting with fvcore
        found = walk(sizer, ratio, top, FINE_STEP, exact=True)
        if found is None:
            raise UserError(f"{target.describe()} ({human(goal)} MACs) cannot be reached within "
                            f"--max-layer-ratio {max_ratio:g}")
        ratio, predicted = found, steps[-1][1]
    steps.append([ratio, predicted])
    plan = ranked.plan(ratio)
    cfg = dataclasses.replace(cfg, ratio=ratio)
    return cfg, TargetPlan(
        target=dataclasses.asdict(target), mode="global" if cfg.global_pruning else "uniform",
        max_layer_ratio=max_ratio, macs_before=macs_before, goal_macs=goal, ratio=ratio,
        predicted_macs=int(predicted), channels=plan, steps=steps, notes=ranked.notes)


def describe(plan: TargetPlan, macs_after: int) -> str:
    """One line for the terminal: what was asked, what was reached, how."""
    t = plan.target
    asked = (f"{t['speedup']:g}x fewer MACs" if t.get("speedup") is not None
             else f"{human(t['macs'])} MACs")
    how = (f"--ratio {plan.ratio:g} on every layer" if plan.mode == "uniform"
           else f"global ranking of {plan.ratio:.1%} of all channels")
    return (f"target {asked} ({human(plan.goal_macs)} MACs): reached {human(macs_after)} MACs, "
            f"{plan.macs_before / max(macs_after, 1):.2f}x fewer, with {how} (no layer above "
            f"{plan.max_layer_ratio:g}), found in {len(plan.steps)} pruning steps of a copy")
