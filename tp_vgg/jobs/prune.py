"""The prune job: one :class:`PruneJob` (its config) and :func:`run`, a straight pipeline
of the stages in :mod:`tp_vgg.jobs.stages`::

    job = PruneJob(ModelSource(spec=ModelSpec("cifar_vgg11_bn", width=0.25)),
                   PruneConfig(importance="l1"), target=Target(speedup=3),
                   finetune=FinetuneConfig(DataConfig("digits"), TrainConfig(lr=0.01), epochs=1))
    result = run(job, out_dir="runs/p")          # DIR/pruned.pt, DIR/report.json

:func:`run` calls, in order: ``load``, ``count``, ``solve_target``, ``prune_model`` (iterative
steps fine-tune in between), ``recover`` (BN re-estimation, fine-tuning, distillation),
``measure`` (latency), ``make_report`` and ``save_outputs``. ``--unstructured`` replaces the
pruning stage with :func:`tp_vgg.jobs.unstructured.prune_unstructured`; a job stopped while it
fine-tunes is finished by :func:`tp_vgg.jobs.resume.resume_run`. `tp-vgg prune` builds a job
from its flags and calls :func:`run`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import torch

from tp_vgg.checkpoint.source import ModelSource
from tp_vgg.data.datasets import DataConfig
from tp_vgg.device import device_name
from tp_vgg.errors import UserError
from tp_vgg.files import ensure_dir, write_json
from tp_vgg.jobs.resume import RESUME_FILE, complete_report, remove_state, resumable, resume_state
from tp_vgg.jobs.stages import (JobResult, Log, check_out_dir, fit_round_to, gradients,
                                guard_latency, latency_config, learn_round_to, load, make_report,
                                measure, prune_model, recover, save_outputs, say_round_to,
                                say_wrote, schedule, search_widths, solve_target, sparse_learning,
                                summarize)
from tp_vgg.jobs.unstructured import UnstructuredConfig, prune_unstructured
from tp_vgg.latency import budget as latency_target
from tp_vgg.latency import timing as latency
from tp_vgg.models import counting
from tp_vgg.models.zoo import ModelSpec
from tp_vgg.pruning import graph as pruning
from tp_vgg.pruning import recipes
from tp_vgg.pruning.criteria import needs_gradients
from tp_vgg.pruning.targets import Target
from tp_vgg.report import summary as report_json
from tp_vgg.train import interrupt
from tp_vgg.train.config import TrainConfig, finetuning
from tp_vgg.train.distributed import DistContext
from tp_vgg.train.evaluation import DEFAULT_BN_RECALIBRATE


@dataclass
class IterativeConfig:
    """Reach the ratio or target in ``steps`` pruning steps, fine-tuning ``epochs_per_step``
    epochs after each step but the last (on the fine-tuning sub-config's data)."""

    steps: int = 1
    epochs_per_step: int = 0


@dataclass
class FinetuneConfig:
    """Accuracy recovery after pruning, on ``data``: BatchNorm recalibration on ``bn_batches``
    training batches, then ``epochs`` of fine-tuning with ``train`` (default: the fine-tuning
    defaults, :func:`tp_vgg.train.config.finetuning`; ``train.distill``: against
    ``teacher``, a checkpoint, or by default the model before pruning). ``epochs=0`` and
    ``bn_batches=0``: the data only serve a criterion (taylor) or the iterative steps."""

    data: DataConfig
    train: TrainConfig = field(default_factory=finetuning)
    epochs: int = 0
    bn_batches: int = DEFAULT_BN_RECALIBRATE
    teacher: Optional[str] = None
    # also train the pruned architecture from random init (the control): None no, 0 for as many
    # epochs as the source checkpoint was trained (its meta "epoch") plus ``epochs``, else that many
    scratch_epochs: Optional[int] = None

    @property
    def evaluates(self) -> bool:
        """Whether the job measures top-1 before and after pruning."""
        return bool(self.epochs or self.bn_batches)


@dataclass
class PruneJob:
    """Everything one `tp-vgg prune` run does. ``prune.round_to`` may be ``"auto"``: the channel
    multiple learned from a width scan on the device and runtime (:func:`learn_round_to`), halved
    until every conv keeps one. ``latency.batch_sizes`` empty: the defaults for the model's input
    size."""

    source: ModelSource
    prune: pruning.PruneConfig = field(default_factory=pruning.PruneConfig)
    target: Optional[Target] = None
    iterative: Optional[IterativeConfig] = None
    unstructured: Optional[UnstructuredConfig] = None
    finetune: Optional[FinetuneConfig] = None
    latency: Optional[latency.LatencyConfig] = None
    # more runtimes --latency also times the pruned model in (report.json latency_by_runtime)
    latency_runtimes: Sequence[str] = ()
    # where --round-to auto times its width scan without a latency target (runtime, batch size,
    # threads; None: --latency's settings, else torch at the throughput batch), and the folder of
    # the latency tables (None: tp_vgg.latency.table.cache_dir())
    timing: Optional[latency.LatencyConfig] = None
    latency_cache: Optional[str] = None
    taylor_batches: Optional[int] = None
    device: Optional[str] = None
    # --search N: the per-layer widths searched under the budget (tp_vgg.search.widths)
    search: Optional[search.SearchConfig] = None
    # --recipe NAME: sparse learning before pruning (tp_vgg.pruning.recipes); prune must use its
    # criterion and global ranking (SparseLearning.prune_config)
    sparse: Optional[recipes.SparseLearning] = None

    @property
    def steps(self) -> int:
        return self.iterative.steps if self.iterative else 1

    @property
    def epochs_per_step(self) -> int:
        return self.iterative.epochs_per_step if self.iterative else 0

    @property
    def needs_data(self) -> bool:
        """A criterion (taylor) or the iterative schedule uses the fine-tuning data."""
        return needs_gradients(self.prune.importance) or self.epochs_per_step > 0

    @property
    def latency_budget(self) -> Optional[latency_target.LatencyBudget]:
        return self.target.latency if self.target is not None else None

    def prune_config(self, round_to: Optional[int] = None) -> pruning.PruneConfig:
        """``prune`` with the iterative steps, a placeholder ratio while a target decides, and
        ``round_to="auto"`` resolved: ``round_to`` (learned, :func:`learn_round_to`), else the
        device's default multiple (for validation before anything is timed)."""
        cfg = dataclasses.replace(self.prune, iterative_steps=self.steps,
                                  ratio=0.0 if self.target is not None else self.prune.ratio)
        if cfg.round_to == "auto":
            cfg.round_to = round_to or latency.default_round_to(device_name(self.device))
        return cfg

    def timing_config(self, spec: Optional[ModelSpec]) -> latency.LatencyConfig:
        """Where the job's latency is measured: the latency target's settings, else those of
        ``latency`` (--latency), at the throughput batch size for the input size."""
        if self.latency_budget is not None:
            return self.latency_budget.config(spec, self.device)
        cfg = self.timing or self.latency or latency.LatencyConfig(channels_last=True,
                                                                   fuse_bn=True)
        batch = (self.timing.batch_sizes[:1] if self.timing is not None and self.timing.batch_sizes
                 else (latency.default_batch_sizes(spec)[-1],))
        return dataclasses.replace(cfg, batch_sizes=tuple(batch),
                                   device=device_name(cfg.device or self.device))

    def validate(self) -> None:
        self.source.validate()
        if self.unstructured is not None:
            if self.latency is not None:
                raise UserError("--latency with --unstructured would time the same dense layers: "
                                "zeroed weights do not make dense kernels faster "
                                "(PruneJob.latency needs PruneJob.unstructured None)")
            if self.target or self.iterative or self.taylor_batches:
                raise UserError("a target, iterative steps and taylor batches apply to structured "
                                "(channel) pruning, not PruneJob.unstructured")
            if self.search is not None:
                raise UserError("--search chooses channel widths; it does not apply to "
                                "--unstructured")
            if self.sparse is not None:
                raise UserError("--recipe prunes channels; it does not apply to --unstructured "
                                "(PruneJob.sparse needs PruneJob.unstructured None)")
            if self.unstructured.lottery_rounds and not (self.finetune and self.finetune.epochs):
                raise UserError("--lottery-rounds needs --finetune-epochs N (training epochs per "
                                "round) and --data (PruneJob.finetune.epochs)")
            pruning.check_ratio("--ratio", self.prune.ratio, "PruneConfig.ratio")
            return
        self.prune_config().validate()
        if self.sparse is not None:
            self.sparse.validate()
            r = self.sparse.method
            if self.finetune is None:
                raise UserError(f"--recipe {self.sparse.recipe} trains with a regularizer before "
                                "pruning; pass --data D (PruneJob.finetune.data)")
            if self.prune.importance != r.importance or not self.prune.global_pruning:
                raise UserError(f"--recipe {self.sparse.recipe} prunes with --importance "
                                f"{r.importance} --global (PruneJob.prune: "
                                "SparseLearning.prune_config)")
        if self.search is not None:
            self.search.validate()
            if self.finetune is None:
                raise UserError("--search needs data: it scores each candidate on a held-out "
                                "slice of the training data; pass --data D "
                                "(PruneJob.finetune.data)")
            if self.prune.global_pruning or self.steps > 1:
                raise UserError("--search chooses every layer's width itself: it does not "
                                "combine with --global or --iterative-steps")
        if self.target is not None:
            self.target.validate()
            if self.latency_budget is not None and self.steps > 1:
                raise UserError("--target-latency measures one pruned model; --iterative-steps "
                                "applies to --ratio and the MAC targets")
        if self.iterative is not None and self.iterative.epochs_per_step and self.steps < 2:
            raise UserError("--finetune-epochs-per-step needs --iterative-steps K with K >= 2 "
                            "(IterativeConfig.steps)")
        if self.needs_data and self.finetune is None:
            if needs_gradients(self.prune.importance):
                raise UserError(f"--importance {self.prune.importance} needs data: it runs a few "
                                "batches forward and backward for the gradients; pass --data D "
                                "(PruneJob.finetune.data)")
            raise UserError("--finetune-epochs-per-step fine-tunes on data; pass --data D "
                            "(PruneJob.finetune.data)")
        if self.finetune is not None and self.finetune.train.distill and not self.finetune.epochs:
            raise UserError("--distill is given without --finetune-epochs N; distillation "
                            "happens while fine-tuning (FinetuneConfig.epochs)")
        if self.latency is not None:
            latency_config(self.latency, None)
            for runtime in self.latency_runtimes:
                latency_config(dataclasses.replace(self.latency, runtime=runtime), None)
        elif self.latency_runtimes:
            raise UserError("PruneJob.latency_runtimes applies with PruneJob.latency (--latency)")


def run(job: PruneJob, out_dir: Optional[str] = None, log: Log = print,
        dist: Optional[DistContext] = None) -> JobResult:
    """Run ``job``: load -> count -> solve target -> prune -> fine-tune -> measure -> report ->
    save (``out_dir/pruned.pt`` and ``report.json``; nothing is written without ``out_dir``).

    Under torchrun, ``dist`` (:func:`tp_vgg.train.distributed.init`) has every rank prune the same
    channels (the criteria are deterministic) and fine-tune its shard of the data with DDP;
    rank 0 alone logs and writes."""
    dist = dist or DistContext()
    check_out_dir(out_dir)
    job.validate()
    if dist.enabled and (job.latency is not None or job.unstructured is not None):
        raise UserError("--latency and --unstructured run in one process: run them without "
                        "torchrun (PruneJob.latency / PruneJob.unstructured)")
    if not dist.is_main:
        log, out_dir = (lambda s: None), None
    prep = load(job, log)
    if job.unstructured is not None:
        return prune_unstructured(job, prep, out_dir, log)
    model, spec, loaded = prep.loaded.model, prep.loaded.spec, prep.loaded
    sparse = (sparse_learning(model, spec, prep.data, prep.preprocessing, job.sparse,
                                      prep.train_cfg, loaded.history, log, dist)
              if job.sparse is not None else None)
    if sparse is not None:
        prep.top1_sparse = sparse["top1"]
        model.to("cpu", memory_format=torch.contiguous_format).eval()
    grads = gradients(job, prep)
    original = copy.deepcopy(model) if job.latency is not None else None
    before = counting.count(model, spec)
    learned = learn_round_to(job, model, spec, log, dist)
    cfg = job.prune_config(learned["round_to"] if learned else None)
    if job.latency_budget is not None:  # the search removes whole multiples
        cfg = fit_round_to(job, cfg, model)
    searched = guarded = None
    if job.search is not None and job.latency_budget is not None:
        plan = None  # the width search replaces --target-latency's own
        cfg, searched = search_widths(job, prep, model, spec, cfg, None, grads, log, dist)
    else:
        base_cfg = cfg
        cfg, plan = solve_target(job, model, spec, cfg, grads, log, dist)
        if job.latency_budget is None:
            cfg = fit_round_to(job, cfg, model)
        if job.search is not None:
            cfg, searched = search_widths(job, prep, model, spec, cfg, plan, grads, log, dist)
        elif isinstance(plan, latency_target.LatencyPlan):
            cfg, guarded = guard_latency(job, prep, model, spec, base_cfg, cfg, plan, grads, log,
                                         dist)
    if learned:
        say_round_to(learned, cfg.round_to, log)
    steps = schedule(job, prep, dist, log)
    if steps is not None and steps.finetune is None:
        log(f"warning: --iterative-steps {job.steps} with no fine-tuning between the steps"
            + ("" if job.finetune is not None else " and no evaluation (no --data)")
            + ": each step only re-ranks the same weights, which is close to one-shot pruning; "
            "pass --data D --finetune-epochs-per-step N to fine-tune between them")
    result = prune_model(model, spec, cfg, steps, grads)
    after = counting.count(model, spec)
    history = loaded.history + result.history
    interrupt.check()  # before fine-tuning (a signal that a library swallowed)
    extra = {"round_to_auto": learned} if learned else {}
    if searched is not None:
        extra["search"] = searched
    if guarded is not None:
        extra["latency_guard"] = guarded
    if sparse is not None:
        extra["sparse_learning"] = sparse
    if prep.data is not None:  # the preprocessing used, and where its normalization came from
        extra["preprocessing"] = prep.preprocessing.to_dict()
    # the report and meta as known before fine-tuning; accuracy, latency, schedule come after
    partial = make_report(job, spec, cfg, before, after, result, plan, None, **extra)
    meta0 = dict(loaded.meta, importance=cfg.importance, ratio=cfg.ratio,
                 config=partial["config"], macs_before=before.macs, macs_after=after.macs,
                 params_before=before.params, params_after=after.params)
    state = resume_state(job, prep, partial, meta0, steps) if out_dir else None
    saved = []

    def save_state(acc: Dict[str, Optional[float]]) -> None:
        write_json(os.path.join(ensure_dir(out_dir), RESUME_FILE), dict(state, accuracy=acc))
        saved.append(True)

    try:
        accuracy = recover(job, prep, model, history, loaded.meta, out_dir, log, dist,
                           before_finetune=save_state if state is not None else None,
                           steps=steps)
        interrupt.check()
    except interrupt.Interrupted as e:
        raise resumable(e, out_dir, job.source.consent()) if saved else e
    if steps is not None:
        steps.finish(model, accuracy.get("pruned"), job.finetune.epochs if job.finetune else 0,
                     accuracy.get("finetuned"), accuracy.get("recalibrated"))
    acc = {"accuracy": accuracy} if accuracy else {}
    try:
        lat = measure(job.latency, job.latency_runtimes, original, model, spec, before, after, log)
        rep = complete_report(partial, dict(**acc, **lat),
                              steps.to_dict() if steps is not None else None)
        meta = dict(meta0, **acc)
        interrupt.check()
    except interrupt.Interrupted as e:
        raise resumable(e, out_dir, job.source.consent()) if saved else e
    save_outputs(out_dir, model, spec, history, prep.saved_preprocessing, meta, rep)
    if out_dir and searched is not None:
        from tp_vgg.report import plots
        plots.save_png(plots.search_figure(searched), os.path.join(out_dir, "search.png"))
    remove_state(out_dir)
    log(report_json.format_prune_table(rep))
    summarize(job, plan, steps, after, result, log, searched)
    say_wrote(out_dir, log)
    return JobResult(model, spec, history, before, after, rep, meta, prep.saved_preprocessing,
                     accuracy, out_dir)

