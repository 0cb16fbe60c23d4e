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
    step: int                       # 1-based
    macs: int
    params: int
    channels: Dict[str, int]        # out channels of every Conv2d/Linear after the step
    top1_pruned: Optional[float] = None
    finetune_epochs: int = 0
    top1_finetuned: Optional[float] = None
    seconds: float = 0.0


@dataclass
class Schedule:
    """``between_steps(step, model)`` for :func:`tp_vgg.pruning.graph.prune`.

    ``finetune(model, epochs)`` trains the model in place and returns its top-1 (or None);
    ``evaluate(model)`` returns top-1 (optional).
    """

    spec: ModelSpec
    steps: int
    epochs_per_step: int
    finetune: Optional[Callable[[nn.Module, int], Optional[float]]] = None
    evaluate: Optional[Callable[[nn.Module], float]] = None
    log: Callable[[str], None] = print
    records: List[StepRecord] = field(default_factory=list)

    def _record(self, step: int, model: nn.Module) -> StepRecord:
        c = count(model, self.spec)
        rec = StepRecord(step=step + 1, macs=c.macs, params=c.params,
                         channels=out_channels(model))
        if self.evaluate is not None:
            rec.top1_pruned = self.evaluate(model)
        return rec

    def __call__(self, step: int, model: nn.Module) -> None:
        t = time.perf_counter()
        rec = self._record(step, model)
        acc = f", top-1 {100 * rec.top1_pruned:.2f}%" if rec.top1_pruned is not None else ""
        self.log(f"step {rec.step}/{self.steps}: {human(rec.macs)} MACs{acc}; fine-tuning "
                 f"{self.epochs_per_step} epochs")
        if self.finetune is not None and self.epochs_per_step > 0:
            rec.top1_finetuned = self.finetune(model, self.epochs_per_step)
            rec.finetune_epochs = self.epochs_per_step
        rec.seconds = time.perf_counter() - t
        self.records.append(rec)

    def finish(self, model: nn.Module, top1_pruned: Optional[float] = None,
               finetune_epochs: int = 0, top1_finetuned: Optional[float] = None) -> None:
        """Record the last step (its fine-tuning, if any, is the caller's)."""
        c = count(model, self.spec)
        self.records.append(StepRecord(step=self.steps, macs=c.macs, params=c.params,
                                       channels=out_channels(model), top1_pruned=top1_pruned,
                                       finetune_epochs=finetune_epochs,
                                       top1_finetuned=top1_finetuned))

    def to_dict(self) -> Dict[str, Any]:
        return {"iterative_steps": self.steps, "finetune_epochs_per_step": self.epochs_per_step,
                "steps": [asdict(r) for r in self.records]}
