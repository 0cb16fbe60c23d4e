"""Iterative pruning: ``iterative_steps`` pruning steps with fine-tuning between them.

torch-pruning's linear schedule takes every layer a ``1/K`` of the way to its final channel count
per step (counts computed from the unpruned layer), so the last step lands on exactly the counts
of one-shot pruning at the same ratio -- the same final MACs. With ``--global`` the per-layer
counts come from one global ranking made before the first step (see
:func:`tp_vgg.pruning.graph.prune`); each step then re-ranks the channels inside each layer on the
fine-tuned weights.

:class:`Schedule` is the ``between_steps`` callback: after each step but the last it counts MACs
and parameters, evaluates, fine-tunes and evaluates again, and keeps one record per step for
the report. The caller appends the last step with :meth:`Schedule.finish`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch.nn as nn

from tp_vgg.models.counting import count, human
from tp_vgg.models.zoo import ModelSpec
from tp_vgg.pruning.graph import out_channels


@dataclass
class StepRecord:
    """One pruning step. Every top-1 is of this step alone, against the model just before it:
    ``top1_before`` (the previous step's fine-tuned model, or the original for step 1),
    ``top1_pruned`` (raw, right after the step), ``top1_recalibrated`` (after re-estimating the
    BatchNorm statistics), ``top1_finetuned`` (after ``finetune_epochs``)."""

    step: int                       # 1-based
    macs: int
    params: int
    channels: Dict[str, int]        # out channels of every Conv2d/Linear after the step
    top1_pruned: Optional[float] = None
    finetune_epochs: int = 0
    top1_finetuned: Optional[float] = None
    seconds: float = 0.0
    top1_before: Optional[float] = None
    top1_recalibrated: Optional[float] = None

    @property
    def top1_end(self) -> Optional[float]:
        """Top-1 of the model this step hands on (the next step's ``top1_before``)."""
        for v in (self.top1_finetuned, self.top1_recalibrated, self.top1_pruned):
            if v is not None:
                return v
        return None


@dataclass
class Schedule:
    """``between_steps(step, model)`` for :func:`tp_vgg.pruning.graph.prune`.

    ``finetune(model, epochs)`` trains the model in place and returns its top-1 (or None);
    ``evaluate(model)`` returns top-1 (optional); ``recalibrate(model)`` re-estimates the
    BatchNorm statistics in place (optional: then each step is evaluated raw, then again after
    it). ``top1_start``: the original model's top-1, step 1's ``top1_before``.
    """

    spec: ModelSpec
    steps: int
    epochs_per_step: int
    finetune: Optional[Callable[[nn.Module, int], Optional[float]]] = None
    evaluate: Optional[Callable[[nn.Module], float]] = None
    log: Callable[[str], None] = print
    records: List[StepRecord] = field(default_factory=list)
    recalibrate: Optional[Callable[[nn.Module], None]] = None
    top1_start: Optional[float] = None

    def _before(self) -> Optional[float]:
        return self.records[-1].top1_end if self.records else self.top1_start

    def _record(self, step: int, model: nn.Module) -> StepRecord:
        c = count(model, self.spec)
        rec = StepRecord(step=step + 1, macs=c.macs, params=c.params,
                         channels=out_channels(model), top1_before=self._before())
        if self.evaluate is not None:
            rec.top1_pruned = self.evaluate(model)
            if self.recalibrate is not None:
                self.recalibrate(model)
                rec.top1_recalibrated = self.evaluate(model)
        return rec

    def __call__(self, step: int, model: nn.Module) -> None:
        t = time.perf_counter()
        rec = self._record(step, model)
        if self.finetune is not None and self.epochs_per_step > 0:
            rec.top1_finetuned = self.finetune(model, self.epochs_per_step)
            rec.finetune_epochs = self.epochs_per_step
        rec.seconds = time.perf_counter() - t
        self.records.append(rec)
        self.log(f"step {rec.step}/{self.steps}: {human(rec.macs)} MACs, {human(rec.params)} "
                 f"params{describe(rec)}")

    def finish(self, model: nn.Module, top1_pruned: Optional[float] = None,
               finetune_epochs: int = 0, top1_finetuned: Optional[float] = None,
               top1_recalibrated: Optional[float] = None) -> None:
        """Record the last step (its fine-tuning, if any, is the caller's)."""
        c = count(model, self.spec)
        self.records.append(StepRecord(step=self.steps, macs=c.macs, params=c.params,
                                       channels=out_channels(model), top1_pruned=top1_pruned,
                                       finetune_epochs=finetune_epochs,
                                       top1_finetuned=top1_finetuned,
                                       top1_before=self._before(),
                                       top1_recalibrated=top1_recalibrated))

    def to_dict(self) -> Dict[str, Any]:
        return {"iterative_steps": self.steps, "finetune_epochs_per_step": self.epochs_per_step,
                "note": "each step's top-1 is against the model just before it (top1_before: "
                        "the previous step's fine-tuned model, or the original)",
                "steps": [asdict(r) for r in self.records]}


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def describe(rec: StepRecord) -> str:
    """``"; top-1 before this step 60.50%, pruned 10.60%, ..."`` (empty without figures)."""
    parts = [(k, v) for k, v in (("before this step", rec.top1_before),
                                 ("pruned", rec.top1_pruned),
                                 ("BN re-estimated", rec.top1_recalibrated),
                                 (f"fine-tuned {rec.finetune_epochs} epoch"
                                  f"{'s' if rec.finetune_epochs != 1 else ''}",
                                  rec.top1_finetuned)) if v is not None]
    return "".join([("; top-1 " if i == 0 else ", ") + f"{k} {_pct(v)}"
                    for i, (k, v) in enumerate(parts)])


def format_table(records: List[StepRecord]) -> str:
    """The steps side by side: MACs, params, and top-1 before the step, right after pruning,
    after BN re-estimation and after fine-tuning -- each step against the model before it."""
    head = ("step | MACs | params | top-1 before step | pruned | BN re-estimated | fine-tuned "
            "(epochs)")
    rows = [head, "-" * len(head)]
    for r in records:
        ft = (f"{_pct(r.top1_finetuned)} ({r.finetune_epochs})" if r.top1_finetuned is not None
              else "-")
        rows.append(f"{r.step} | {human(r.macs)} | {human(r.params)} | {_pct(r.top1_before)} | "
                    f"{_pct(r.top1_pruned)} | {_pct(r.top1_recalibrated)} | {ft}")
    return "\n".join(rows)
