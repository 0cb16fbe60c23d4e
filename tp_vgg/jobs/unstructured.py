"""The unstructured prune job (``--unstructured``): :class:`UnstructuredConfig` and
:func:`prune_unstructured`, magnitude masks (or lottery tickets) in place of channel removal,
then the same recovery and outputs as the structured job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional

import torch

from tp_vgg.jobs.stages import JobResult, Log, Prepared, recover, save_outputs, say_wrote
from tp_vgg.models import counting
from tp_vgg.pruning import graph as pruning
from tp_vgg.pruning import unstructured
from tp_vgg.report import summary as report_json
from tp_vgg.train import loop as train

if TYPE_CHECKING:
    from tp_vgg.jobs.prune import PruneJob


@dataclass
class UnstructuredConfig:
    """Zero single weights by magnitude instead of removing channels: ``PruneConfig.ratio`` is
    the fraction zeroed (per layer, or across layers with ``global_pruning``). With
    ``lottery_rounds``: R rounds of train (``FinetuneConfig.epochs``), prune, rewind to the
    weights after ``rewind_epoch``."""

    lottery_rounds: Optional[int] = None
    rewind_epoch: int = 0


def prune_unstructured(job: PruneJob, prep: Prepared, out_dir: Optional[str],
                       log: Log) -> JobResult:
    """The pipeline with magnitude masks (or lottery tickets) in place of channel removal, made
    permanent in ``out_dir/pruned.pt``; report.json has per-layer sparsity, dense MACs
    (unchanged) and nonzero-weight MACs."""
    loaded, cfg, ucfg = prep.loaded, job.prune, job.unstructured
    model, spec = loaded.model, loaded.spec
    before = counting.count(model, spec)
    keep = pruning.output_layer_names(model, spec, cfg.output_layer)
    config: Dict[str, Any] = {"unstructured": True, "ratio": cfg.ratio, "global": cfg.global_pruning,
                              "method": "torch.nn.utils.prune " + (
                                  "global_unstructured" if cfg.global_pruning else "l1_unstructured"),
                              "not_pruned": keep}
    accuracy: Dict[str, Any] = {}
    rounds = None
    if ucfg.lottery_rounds:
        lcfg = unstructured.LotteryConfig(sparsity=cfg.ratio, rounds=ucfg.lottery_rounds,
                                          epochs=job.finetune.epochs,
                                          rewind_epoch=ucfg.rewind_epoch or 0,
                                          global_ranking=cfg.global_pruning, exclude=keep)
        lcfg.validate()
        config["lottery"] = unstructured.config_dict(lcfg)

        def fit(m, epochs, after_step, on_epoch_end):
            res = train.fit(m, spec, prep.data, dataclasses.replace(prep.train_cfg, epochs=epochs),
                            None, preprocessing=prep.preprocessing, command="lottery",
                            after_step=after_step, on_epoch_end=on_epoch_end)
            m.to("cpu", memory_format=torch.contiguous_format)
            return res.final.top1 if res.final else None

        _, rounds = unstructured.lottery(model, lcfg, fit)
        model.eval()
        accuracy = {"before": prep.top1_before, "finetuned": rounds[-1]["top1"]}
    else:
        unstructured.magnitude_prune(model, cfg.ratio, cfg.global_pruning, keep)
        # fit() keeps the zeros: the meta says "unstructured"
        accuracy = recover(job, prep, model, loaded.history,
                           dict(loaded.meta, unstructured=config), out_dir, log)
    after = counting.count(model, spec)
    sparse = unstructured.sparsity_report(model, after)
    extra: Dict[str, Any] = {"unstructured": sparse}
    if accuracy:
        extra["accuracy"] = accuracy
    if rounds is not None:
        extra["lottery_rounds"] = rounds
    rep = report_json.prune_report(spec, config, before, after, keep, 0, **extra)
    info = dict(config, sparsity=sparse["sparsity"], macs_nonzero=sparse["macs_nonzero"])
    meta = dict(loaded.meta, importance="magnitude (unstructured)", ratio=cfg.ratio,
                config=config, unstructured=info, macs_before=before.macs, macs_after=after.macs,
                params_before=before.params, params_after=after.params,
                **({"accuracy": accuracy} if accuracy else {}))
    save_outputs(out_dir, model, spec, loaded.history, prep.saved_preprocessing, meta, rep)
    log(report_json.format_sparsity_table(sparse))
    for r in rounds or []:
        top = f"top-1 {100 * r['top1']:.2f}%" if r["top1"] is not None else ""
        log(f"lottery round {r['round']}: {100 * r['sparsity']:.1f}% zero, "
            f"{report_json.plural(r['epochs'], 'epoch')}, {top}")
    if accuracy:
        log("top-1: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in accuracy.items()
                                  if v is not None))
    log(unstructured.describe(sparse))
    say_wrote(out_dir, log)
    return JobResult(model, spec, list(loaded.history), before, after, rep, meta,
                     prep.saved_preprocessing, accuracy, out_dir)

