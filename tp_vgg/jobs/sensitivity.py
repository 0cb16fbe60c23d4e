"""The sensitivity study (`tp-vgg sensitivity`): :class:`SensitivityStudy` and
:func:`run_sensitivity` -- each layer pruned alone at several ratios, evaluated, and the
``--layer-ratios`` a top-1 budget allows recommended (:mod:`tp_vgg.pruning.sensitivity` does
the analysis).
"""

from __future__ import annotations

import copy
import json
import os
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import torch

from tp_vgg.checkpoint.source import ModelSource, load_source
from tp_vgg.data.datasets import DataConfig, load_data
from tp_vgg.errors import UserError
from tp_vgg.files import ensure_dir, write_json, write_text
from tp_vgg.models import counting
from tp_vgg.models.counting import human
from tp_vgg.pruning import sensitivity
from tp_vgg.pruning.criteria import (DEFAULT_TAYLOR_BATCHES, needs_gradients, training_gradients)
from tp_vgg.report import summary as report_json
from tp_vgg.train import evaluation
from tp_vgg.train.evaluation import DEFAULT_BN_RECALIBRATE


@dataclass
class SensitivityStudy:
    """What :func:`run_sensitivity` studies: the model (``source``), on ``data``'s test split (a seeded
    sample of ``eval_images``), each of ``layers`` (default all but the logits layer) pruned
    alone at ``ratios`` by ``importance``; ``budget`` top-1 points per layer sets the
    recommended ``--layer-ratios``. ``source_flags``: how the suggested `tp-vgg prune` command
    names the model (default ``--model NAME`` / ``--checkpoint FILE``). ``bn_batches``: each
    pruned copy's BatchNorm statistics are re-estimated on that many training batches before it
    is evaluated (EagleEye's adaptive-BN evaluation, which ranks pruned candidates far better
    than raw pruned accuracy); 0 evaluates the raw pruned copy."""

    source: ModelSource
    data: DataConfig
    ratios: Sequence[float] = sensitivity.DEFAULT_RATIOS
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
    bn_batches: int = DEFAULT_BN_RECALIBRATE  # re-estimate BN before each evaluation


def _subset(data, n: Optional[int], seed: int):
    if not n or n >= len(data.test_labels):
        return data
    idx = torch.randperm(len(data.test_labels), generator=torch.Generator().manual_seed(seed))[:n]
    idx = idx.sort().values
    return data.subset("test", idx)


def run_sensitivity(study: SensitivityStudy, out_dir: Optional[str] = None,
        log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Load, analyze, recommend; write ``out_dir/sensitivity.csv``, ``sensitivity.png``,
    ``layer_ratios.json`` and ``report.json`` (nothing without ``out_dir``); return the report."""
    if out_dir and os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir!r} is a file; give a folder")
    if study.taylor_batches and not needs_gradients(study.importance):
        raise UserError("--taylor-batches applies to --importance taylor or taylor-raw "
                        "(SensitivityStudy.taylor_batches)")
    loaded = load_source(study.source, log)
    model, spec = loaded.model, loaded.spec
    data = load_data(study.data, log)
    pre = evaluation.resolve_preprocessing(data, spec, loaded.preprocessing)
    test = _subset(data, study.eval_images, study.seed)
    gradients = (training_gradients(data, pre, spec, study.taylor_batches or DEFAULT_TAYLOR_BATCHES,
                                    study.seed) if needs_gradients(study.importance) else None)

    cl = evaluation.channels_last_runs(model, spec)  # channels-last scoring: faster on a CPU

    def evaluate(m):
        if study.bn_batches:  # every point, and the reference, re-estimated the same way
            if m is model:  # the reference: a copy, so that the pruned copies start from model
                m = copy.deepcopy(model)
            evaluation.recalibrate_on(m, spec, data, pre, study.bn_batches, device=study.device,
                                      seed=study.seed)
        return evaluation.top1(m, spec, test, pre, study.device, study.batch_size,
                               channels_last=cl)

    res = sensitivity.analyze(model, spec, evaluate, ratios=study.ratios, importance=study.importance,
                  layers=study.layers, seed=study.seed, output_layer=study.output_layer,
                  gradients=gradients)
    ratios = sensitivity.recommend(res, study.budget)
    trial = sensitivity._pruned_copy(model, spec, ratios, study.output_layer)
    after = counting.count(trial if trial is not None else model, spec)
    source = study.source_flags or shlex.join(
        ["--checkpoint", study.source.checkpoint] if study.source.checkpoint else
        ["--model", spec.name])
    command = (f"tp-vgg prune {source} --ratio 0 --layer-ratios "
               f"{shlex.quote(json.dumps(ratios))} --out DIR") if ratios else None
    least = sorted(res.layers, key=lambda l: min((r["drop_points"] for r in res.curve(l)),
                                                 default=float("inf")))[:3]
    rep = {
        "units": report_json.MAC_NOTE, "model": spec.to_dict(), "data": data.name,
        "test_images": len(test.test_labels), "importance": study.importance,
        "budget_points": study.budget, "baseline_top1": res.baseline_top1,
        "bn_recalibrate_batches": study.bn_batches,
        "baseline_note": ("the unpruned model after the same BatchNorm re-estimation as every "
                          "point" if study.bn_batches else "the unpruned model as loaded"),
        "layer_ratios": ratios,
        "predicted": {"macs_before": res.baseline_macs, "macs_after": after.macs,
                      "macs_reduction": res.baseline_macs / max(after.macs, 1),
                      "note": "layers pruned together may cost more than each alone; fine-tune"},
        "command": command, "least_sensitive": least, "rows": res.rows,
        "skipped": res.skipped,
    }
    if out_dir:
        ensure_dir(out_dir)
        sensitivity.write_csv(os.path.join(out_dir, "sensitivity.csv"), res)
        sensitivity.plot(os.path.join(out_dir, "sensitivity.png"), res, study.budget,
             f"{spec.name}: sensitivity to pruning ({study.importance}, {data.name})")
        write_text(os.path.join(out_dir, "layer_ratios.json"), json.dumps(ratios, indent=2) + "\n")
        write_json(os.path.join(out_dir, "report.json"), rep)
    log(sensitivity.format_table(res, ratios))
    if ratios:
        log(f"budget {study.budget:g} top-1 points per layer: {len(ratios)} of "
            f"{len(res.layers)} layers pruned, {human(res.baseline_macs)} -> {human(after.macs)} "
            f"MACs ({res.baseline_macs / max(after.macs, 1):.2f}x fewer) before fine-tuning")
        log(f"next: {command}")
    else:
        log(f"no layer stays within {study.budget:g} top-1 points at the smallest ratio tried "
            f"({min(res.ratios):g}), so there is nothing to recommend; the least sensitive "
            f"layers: {', '.join(least)}. Raise --budget, or prune with --ratio and fine-tune "
            "(--finetune-epochs N --data D)")
    if out_dir:
        log(f"wrote {os.path.join(out_dir, 'sensitivity.csv')}, sensitivity.png, "
            "layer_ratios.json, report.json")
    return rep

