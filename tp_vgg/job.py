"""The jobs: the prune job (one :class:`PruneJob` and :func:`run`, a straight pipeline of
stages), the sweep and the sensitivity study.

::

    job = PruneJob(ModelSource(spec=ModelSpec("cifar_vgg11_bn", width=0.25)),
                   PruneConfig(importance="l1"), target=Target(speedup=3),
                   finetune=FinetuneConfig(DataConfig("digits"), TrainConfig(lr=0.01), epochs=1))
    result = run(job, out_dir="runs/p")          # DIR/pruned.pt, DIR/report.json

:func:`run` calls, in order: :func:`load` (the model; data, teacher and top-1 before when the
job fine-tunes), :func:`count`, :func:`solve_target`, :func:`prune_model` (iterative steps
fine-tune in between), :func:`recover` (BN recalibration, fine-tuning, distillation),
:func:`measure` (latency), :func:`make_report` and :func:`save_outputs`. ``--unstructured``
replaces the pruning stage with :func:`prune_unstructured`. A job stopped by SIGINT/SIGTERM while
it fine-tunes is finished by :func:`resume_run` (`tp-vgg prune --resume DIR`) from
``DIR/finetune/last.pt`` and ``DIR/resume.json``. :func:`sweep` runs a job at several
ratios. :func:`run_sensitivity` is `tp-vgg sensitivity` (:class:`SensitivityStudy`). `tp-vgg
prune`, `sweep` and `sensitivity` build a job from their flags and call these.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from tp_vgg.checkpoint.source import Loaded, ModelSource, load_source
from tp_vgg.checkpoint.store import save as save_checkpoint
from tp_vgg.data.datasets import DataConfig, ImageData, load_data
from tp_vgg.data.preprocessing import Preprocessing
from tp_vgg.device import device_name
from tp_vgg.errors import UserError
from tp_vgg.files import atomic_path, ensure_dir, write_json, write_text
from tp_vgg.latency import budget as latency_target
from tp_vgg.latency import timing as latency
from tp_vgg.models import counting, outputs
from tp_vgg.models.counting import Counts, human
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.pruning import graph as pruning
from tp_vgg.pruning import iterative, recipes, sensitivity, sparsity, targets, unstructured
from tp_vgg.pruning.criteria import (DEFAULT_TAYLOR_BATCHES, GradientBatches, needs_gradients,
                                     training_gradients)
from tp_vgg.pruning.targets import Target
from tp_vgg.report import markdown as report_md
from tp_vgg.report import summary as report_json
from tp_vgg.search import widths as search
from tp_vgg.train import evaluation, interrupt
from tp_vgg.train import loop as train
from tp_vgg.train.config import TrainConfig, finetuning
from tp_vgg.train.distributed import DistContext
from tp_vgg.train.evaluation import DEFAULT_BN_RECALIBRATE

Log = Callable[[str], None]

# BatchNorm statistics are re-estimated on DEFAULT_BN_RECALIBRATE training batches after pruning
# when data are given (EagleEye's adaptive BN), before evaluating or fine-tuning.


# --------------------------------------------------------------------------------------------
# The job.

@dataclass
class IterativeConfig:
    """Reach the ratio or target in ``steps`` pruning steps, fine-tuning ``epochs_per_step``
    epochs after each step but the last (on the fine-tuning sub-config's data)."""

    steps: int = 1
    epochs_per_step: int = 0


@dataclass
class UnstructuredConfig:
    """Zero single weights by magnitude instead of removing channels: ``PruneConfig.ratio`` is
    the fraction zeroed (per layer, or across layers with ``global_pruning``). With
    ``lottery_rounds``: R rounds of train (``FinetuneConfig.epochs``), prune, rewind to the
    weights after ``rewind_epoch``."""

    lottery_rounds: Optional[int] = None
    rewind_epoch: int = 0


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


@dataclass
class JobResult:
    model: nn.Module                    # the pruned (and fine-tuned) model, on the CPU
    spec: ModelSpec
    history: List[list]                 # the checkpoint's history, then this job's
    before: Counts
    after: Counts
    report: Dict[str, Any]              # report.json
    meta: Dict[str, Any]                # the checkpoint's meta
    preprocessing: Preprocessing
    accuracy: Dict[str, Optional[float]] = field(default_factory=dict)
    out_dir: Optional[str] = None


# --------------------------------------------------------------------------------------------
# Shared helpers.

def latency_config(cfg: latency.LatencyConfig, spec) -> latency.LatencyConfig:
    """``cfg`` with its device resolved and, when it gives no batch sizes, the defaults for the
    model's input size; validated."""
    sizes = cfg.batch_sizes or latency.default_batch_sizes(spec)
    cfg = dataclasses.replace(cfg, batch_sizes=tuple(sizes),
                              device=device_name(cfg.device))
    cfg.validate()
    return cfg


def check_out_dir(out_dir: Optional[str]) -> None:
    if out_dir and os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir!r} is a file; give a folder")


# --------------------------------------------------------------------------------------------
# Stages.

@dataclass
class Prepared:
    """What :func:`load` gives the later stages."""

    loaded: Loaded
    data: Optional[ImageData] = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    train_cfg: Optional[TrainConfig] = None
    teacher: Optional[train.Teacher] = None
    top1_before: Optional[float] = None  # with FinetuneConfig.evaluates
    top1_sparse: Optional[float] = None  # --recipe: after its sparse learning

    @property
    def saved_preprocessing(self) -> Preprocessing:
        """What pruned.pt records: the data's (resolved) preprocessing once the job evaluated
        on them, else the checkpoint's."""
        return self.preprocessing if self.top1_before is not None else self.loaded.preprocessing


def load(job: PruneJob, log: Log = print) -> Prepared:
    """The model; with a fine-tuning sub-config its data, the teacher, and top-1 before."""
    loaded = load_source(job.source, log)
    check_classifies(job, loaded.model)
    ft = job.finetune
    if ft is None:
        return Prepared(loaded, preprocessing=Preprocessing.of(loaded.preprocessing))
    cfg = dataclasses.replace(ft.train, epochs=ft.epochs) if ft.epochs else ft.train
    teacher = make_teacher(job, loaded) if cfg.distill else None
    data = load_data(ft.data, log)
    pre = evaluation.resolve_preprocessing(data, loaded.spec, loaded.preprocessing)
    before = (evaluation.evaluate_on(loaded.model, loaded.spec, data, pre, device=cfg.device).top1
              if ft.evaluates else None)
    return Prepared(loaded, data, pre, cfg, teacher, before)


def check_classifies(job: PruneJob, model: nn.Module) -> None:
    """A model that tp-vgg's classification loop cannot run (a detector) is pruned without
    data: fine-tuning, accuracy and data-driven criteria would need its own loss."""
    if outputs.classifies(model) or job.finetune is None:
        return
    what = (f"--finetune-epochs {job.finetune.epochs}" if job.finetune.epochs else "--data")
    raise UserError(
        f"{what} is not accepted for {type(model).__name__}: tp-vgg fine-tunes and evaluates "
        "classifiers, and a detector needs its own loss; prune without --data and fine-tune in "
        "your own training loop (README: \"Your own training loop\")")


def make_teacher(job: PruneJob, loaded: Loaded) -> train.Teacher:
    """``FinetuneConfig.teacher`` (read with the source's consent), else a copy of the model
    before pruning."""
    if job.finetune.teacher:
        return train.Teacher.read(job.finetune.teacher, **job.source.consent())
    return train.Teacher(copy.deepcopy(loaded.model), loaded.spec, list(loaded.history))


def sparse_learning(model: nn.Module, spec, data: Any, preprocessing: Any,
                    stage: recipes.SparseLearning, train_cfg: Any, history: Optional[list] = None,
                    log: Callable[[str], None] = print, dist: Any = None) -> Dict[str, Any]:
    """Train ``model`` in place ``stage.epochs`` epochs with ``train_cfg`` and the recipe's
    regularizer; report.json's ``"sparse_learning"`` block (the BN gamma distribution before and
    after, the top-1 reached)."""
    r = stage.method
    if sparsity.METHODS.get(r.sparsity).needs_bn and not any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine for m in model.modules()):
        raise UserError(f"--recipe {stage.recipe} regularizes BatchNorm gammas but the model has "
                        "no affine BatchNorm layer; use --recipe depgraph (it works without BN)")
    reg = stage.reg if stage.reg is not None else r.reg
    cfg = dataclasses.replace(train_cfg, epochs=stage.epochs, sparsity=r.sparsity,
                              sparsity_reg=reg, distill=False)
    log(f"recipe {stage.recipe}: sparse learning, --sparsity {r.sparsity} --sparsity-reg {reg:g}, "
        f"{stage.epochs} epoch(s)")
    res = train.fit(model, spec, data, cfg, None, history=history, preprocessing=preprocessing,
                    command="sparse-learning", dist=dist, log=log)
    return {"recipe": stage.recipe, "help": recipes.RECIPES.help(stage.recipe),
            "sparsity": r.sparsity,
            "reg": reg, "epochs": stage.epochs, "importance": r.importance,
            "top1": res.final.top1 if res.final else None,
            "gamma_before": (res.sparsity or {}).get("gamma_before"),
            "gamma_after": (res.sparsity or {}).get("gamma_after")}


def gradients(job: PruneJob, prep: Prepared) -> Optional[GradientBatches]:
    """Training batches for ``--importance taylor`` (and ``taylor-raw``)."""
    if not needs_gradients(job.prune.importance):
        return None
    return training_gradients(prep.data, prep.preprocessing, prep.loaded.spec,
                              job.taylor_batches or DEFAULT_TAYLOR_BATCHES, job.prune.seed or 0)


def learn_round_to(job: PruneJob, model: nn.Module, spec, log: Log = print
                   ) -> Optional[Dict[str, Any]]:
    """``--round-to auto``: the fast channel multiple of the device and runtime, learned from a
    width scan in the latency table (:func:`tp_vgg.latency.budget.learn_round_to`, cached); None
    for any other ``round_to``."""
    if job.prune.round_to != "auto":
        return None
    mcfg = job.timing_config(spec)
    t = latency_target.open_table(model, spec, mcfg, job.latency_budget.cache_dir
                                  if job.latency_budget else job.latency_cache)
    block, info = latency_target.learn_round_to(t)
    return dict(info, round_to=block, runtime=mcfg.runtime, device=mcfg.device,
                batch_size=mcfg.batch_sizes[0])


def _say_round_to(learned: Dict[str, Any], used: Optional[int], log: Log) -> None:
    k = learned["round_to"]
    why = (f"widths that are multiples of {k} run fastest in {learned['runtime']} on "
           f"{learned['device']} at batch {learned['batch_size']}, learned from a width scan of "
           f"{learned['learned_from']}" if learned.get("learned_from") else
           "the model has no convolution to scan for fast widths")
    if used != k:
        why += f"; halved to {used} so that every conv keeps a multiple"
    log(f"--round-to auto: {used} ({why}; {learned.get('table')})")


def solve_target(job: PruneJob, model: nn.Module, spec, cfg: pruning.PruneConfig,
                 grads: Optional[GradientBatches], log: Log = print):
    """The ratio (per-layer ratios for a latency target) that reaches ``job.target`` and the
    plan, or ``cfg`` as it is."""
    if job.target is None:
        return cfg, None
    if job.latency_budget is not None:
        return latency_target.solve(model, spec, cfg, job.latency_budget, gradients=grads,
                                    device=job.device, log=log)
    return targets.solve(model, spec, cfg, job.target, gradients=grads)


def search_widths(job: PruneJob, prep: Prepared, model: nn.Module, spec, cfg: pruning.PruneConfig,
                  plan: Optional[targets.TargetPlan], grads: Optional[GradientBatches],
                  log: Log = print, dist: Optional[DistContext] = None):
    """``--search N``: the per-layer widths chosen under the job's budget (a MAC target, the
    MACs of uniform ``--ratio``, or a latency target) and report.json's ``"search"`` block."""
    if job.latency_budget is not None:
        space, budget = search.latency_budget(model, spec, cfg, job.latency_budget, job.device,
                                              grads, log)
    else:
        space, budget = search.mac_budget(model, spec, cfg,
                                          plan.goal_macs if plan is not None else None, grads)
    s = search.Search(model, spec, cfg, space, budget, job.search, prep.data, prep.preprocessing,
                      prep.train_cfg, device=prep.train_cfg.device, log=log, dist=dist,
                      gradients=grads)
    return s.run()


def guard_latency(job: PruneJob, prep: Prepared, model: nn.Module, spec,
                  base_cfg: pruning.PruneConfig, cfg: pruning.PruneConfig,
                  plan: "latency_target.LatencyPlan", grads: Optional[GradientBatches],
                  log: Log = print, dist: Optional[DistContext] = None
                  ) -> Tuple[pruning.PruneConfig, Dict[str, Any]]:
    """``--target-latency`` never hands back a plan that scores below the uniform plan meeting
    the same latency: with data, the two are scored alike (adaptive BN, a held-out slice of the
    training data) and measured, and the better is kept (report.json ``"latency_guard"``);
    without data they cannot be scored, and the report says so."""
    if prep.data is None:
        return cfg, {"kept": search.LATENCY_AWARE,
                     "rule": "not compared with the uniform plan: no --data to score them on"}
    kept = {n: after for n, (_, after) in plan.channels.items()}
    if plan.round_to and plan.round_to > 1:  # uniform in the same fast-width steps
        base_cfg = dataclasses.replace(base_cfg, round_to=plan.round_to)
    chosen, rep = search.guard_latency_plan(
        model, spec, base_cfg, job.latency_budget, kept, prep.data, prep.preprocessing,
        prep.train_cfg, device=prep.train_cfg.device, gradients=grads,
        seed=job.prune.seed or 0, log=log, dist=dist)
    plans = rep["plans"]
    other = "uniform" if rep["kept"] == search.LATENCY_AWARE else search.LATENCY_AWARE
    mine, theirs = plans[rep["kept"]], plans.get(other, {})
    log(f"latency guard: kept the {rep['kept']} plan (held-out score {mine['score']:.4f}, "
        f"measured {mine['measured_ms']:.2f} ms) over the {other} plan ("
        f"{theirs.get('score', float('nan')):.4f}, {theirs.get('measured_ms') or float('nan'):.2f}"
        f" ms) at the {rep['budget_ms']:g} ms budget")
    if rep["kept"] == search.LATENCY_AWARE:
        return cfg, rep
    space_sizes = {n: before for n, (before, _) in plan.channels.items()}
    for n, k in rep["widths"].items():
        plan.channels[n] = [space_sizes[n], k]
    plan.kept = rep["kept"]
    plan.measured_ms = mine["measured_ms"]
    plan.reached = mine["measured_ms"] <= plan.target_ms
    if mine["score"] >= theirs["score"]:
        why = (f"scored {mine['score']:.4f} on the held-out slice against the latency-aware "
               f"plan's {theirs['score']:.4f}")
    elif mine["measured_ms"] <= rep["budget_ms"]:
        why = (f"measured within the budget and the latency-aware plan did not "
               f"({theirs.get('measured_ms')} ms)")
    else:
        why = (f"measured faster ({mine['measured_ms']:.2f} against "
               f"{theirs.get('measured_ms')} ms), and neither plan measured within the budget")
    plan.notes.append(f"latency guard: the uniform plan {why}, so the uniform plan is kept "
                      "(predicted_ms and rounds describe the latency-aware plan)")
    return chosen, rep


def fit_round_to(job: PruneJob, cfg: pruning.PruneConfig, model: nn.Module) -> pruning.PruneConfig:
    """With ``round_to="auto"``, halve the multiple (16 -> 8 -> 4 ...) until every conv keeps at
    least one multiple at the largest ratio asked for (for a latency target: at
    ``max_layer_ratio``): a 16-channel layer pruned by 30% keeps 8, not 0. An explicit
    ``round_to`` is left as given."""
    if job.prune.round_to != "auto" or not cfg.round_to:
        return cfg
    ratios = [cfg.ratio or 0.0] + [float(r) for r in (cfg.layer_ratios or {}).values()]
    if cfg.global_pruning or job.latency_budget is not None:
        ratios.append(cfg.max_layer_ratio if cfg.max_layer_ratio is not None else
                      targets.DEFAULT_MAX_LAYER_RATIO if job.latency_budget is not None else 0.9)
    keep = min((int(m.out_channels * (1 - max(ratios))) for m in model.modules()
                if isinstance(m, nn.Conv2d)), default=cfg.round_to)
    k = cfg.round_to
    while k > 1 and keep < k:
        k //= 2
    return dataclasses.replace(cfg, round_to=k)


def schedule(job: PruneJob, prep: Prepared,
             dist: Optional[DistContext] = None) -> Optional[iterative.Schedule]:
    """``between_steps`` of :func:`tp_vgg.pruning.graph.prune` for iterative steps: recalibrate BN and
    evaluate, then fine-tune (against the original teacher throughout; under torchrun every rank
    fine-tunes its shard, so all ranks prune the same weights at the next step)."""
    spec = prep.loaded.spec
    if job.steps <= 1:
        return None
    if job.epochs_per_step <= 0:
        return iterative.Schedule(spec, job.steps, 0)
    data, pre, tcfg = prep.data, prep.preprocessing, prep.train_cfg
    bn = job.finetune.bn_batches if job.finetune.evaluates else 0

    def evaluate(model):  # after re-estimating BN statistics (--bn-recalibrate)
        if bn:
            home = next(model.parameters()).device
            evaluation.recalibrate_on(model, spec, data, pre, bn, tcfg.batch_size, tcfg.device,
                                 tcfg.seed, tcfg.channels_last, dist=dist)
            model.to(home, memory_format=torch.contiguous_format)
        return evaluation.top1(model, spec, data, pre, tcfg.device)

    def finetune(model, epochs):
        home = next(model.parameters()).device
        res = train.fit(model, spec, data, dataclasses.replace(tcfg, epochs=epochs), None,
                        preprocessing=pre, command="finetune-step", teacher=prep.teacher,
                        dist=dist)
        model.to(home, memory_format=torch.contiguous_format)
        return res.final.top1 if res.final else None

    return iterative.Schedule(spec, job.steps, job.epochs_per_step, finetune=finetune,
                              evaluate=evaluate)


def prune_model(model: nn.Module, spec, cfg: pruning.PruneConfig,
                steps: Optional[iterative.Schedule],
                grads: Optional[GradientBatches]) -> pruning.PruneResult:
    """:func:`tp_vgg.pruning.graph.prune` with the schedule between steps."""
    return pruning.prune(model, spec, cfg, gradients=grads, between_steps=steps)


def recover(job: PruneJob, prep: Prepared, model: nn.Module, history: List[list],
            meta: Dict[str, Any], out_dir: Optional[str], log: Log,
            dist: Optional[DistContext] = None,
            before_finetune: Optional[Callable[[Dict[str, Optional[float]]], None]] = None
            ) -> Dict[str, Optional[float]]:
    """Recalibrate BN and fine-tune ``model`` in place (``out_dir/finetune/``); return the
    top-1 fractions: before, pruned, recalibrated, finetuned. Nothing without
    ``FinetuneConfig.evaluates``. Under torchrun (``dist``) each rank re-estimates the statistics
    on its shard (averaged over ranks) and fine-tunes its shard with DDP."""
    ft = job.finetune
    if ft is None or not ft.evaluates:
        return {}
    spec, data, pre, cfg = prep.loaded.spec, prep.data, prep.preprocessing, prep.train_cfg
    dev = cfg.device
    pruned = evaluation.evaluate_on(model, spec, data, pre, device=dev).top1
    acc = {"before": prep.top1_before, "pruned": pruned}
    msg = f"top-1 before pruning {100 * prep.top1_before:.2f}%"
    if prep.top1_sparse is not None:
        acc["sparse_learned"] = prep.top1_sparse
        msg += f", after sparse learning {100 * prep.top1_sparse:.2f}%"
    msg += f", after pruning {100 * pruned:.2f}%"
    if ft.bn_batches:
        n = evaluation.recalibrate_on(model, spec, data, pre, ft.bn_batches, cfg.batch_size, dev,
                                 cfg.seed, cfg.channels_last, dist=dist)
        if n:
            acc["recalibrated"] = evaluation.evaluate_on(model, spec, data, pre, device=dev).top1
            used = min(ft.bn_batches, -(-len(data.train_labels) // cfg.batch_size))
            msg += (f", after re-estimating {n} BatchNorm layers' statistics on "
                    f"{used} batches {100 * acc['recalibrated']:.2f}%")
        else:
            msg += " (no BatchNorm running statistics to re-estimate)"
    if ft.epochs:
        log(msg + f"; fine-tuning {report_json.plural(ft.epochs, 'epoch')}"
            + (" with distillation" if cfg.distill else ""))
        if before_finetune is not None:  # e.g. what `prune --resume` needs to finish the job
            before_finetune(dict(acc))
        res = train.fit(model, spec, data, cfg,
                        os.path.join(out_dir, "finetune") if out_dir else None,
                        data_cfg=ft.data, history=history, preprocessing=pre, meta=meta,
                        command="finetune", teacher=prep.teacher, dist=dist)
        acc["finetuned"] = res.final.top1 if res.final else acc.get("recalibrated", pruned)
    else:
        log(msg)
    model.to("cpu", memory_format=torch.contiguous_format).eval()
    if ft.scratch_epochs is not None:
        acc["scratch"] = scratch_control(job, prep, history, out_dir, log, dist)
    return acc


def scratch_control(job: PruneJob, prep: Prepared, history: List[list], out_dir: Optional[str],
                    log: Log, dist: Optional[DistContext] = None) -> Optional[float]:
    """Top-1 of the pruned architecture trained from a random initialization (the unpruned
    model's own, seeded, with ``history`` replayed) for ``FinetuneConfig.scratch_epochs`` with the
    training recipe (the optimizer's training LR, 1 warm-up epoch) into ``out_dir/scratch/``:
    the control of Liu et al., "Rethinking the Value of Network Pruning" (2019)."""
    ft, loaded = job.finetune, prep.loaded
    epochs = ft.scratch_epochs or int(loaded.meta.get("epoch") or 0) + ft.epochs
    cfg = dataclasses.replace(ft.train, epochs=epochs, lr=None, warmup_epochs=1.0,
                              distill=False)
    train.seed_everything(cfg.seed)
    fresh = (loaded.checkpoint.build_unpruned() if loaded.checkpoint is not None
             else build_model(loaded.spec))  # consent as the source was read with
    model = pruning.replay(fresh, loaded.spec, history)
    log(f"scratch control: the pruned architecture from random initialization, "
        f"{cfg.epochs} epochs")
    res = train.fit(model, loaded.spec, prep.data, cfg,
                    os.path.join(out_dir, "scratch") if out_dir else None, data_cfg=ft.data,
                    history=history, preprocessing=prep.preprocessing,
                    meta={"scratch": True}, command="scratch", dist=dist)
    return res.final.top1 if res.final else None


def measure(job: PruneJob, original: Optional[nn.Module], pruned: nn.Module, spec,
            before: Counts, after: Counts, log: Log) -> Dict[str, Any]:
    """``{"latency": ...}``: the pruned model timed against the original (empty without
    ``job.latency``); logs the table."""
    if original is None:
        return {}
    cfg = latency_config(job.latency, spec)
    reps = {}
    for runtime in dict.fromkeys([cfg.runtime, *job.latency_runtimes]):
        rep = latency.compare(original, pruned, spec, dataclasses.replace(cfg, runtime=runtime),
                              before.macs, after.macs)
        log(latency.format_latency_table(rep))
        reps[runtime] = rep.to_dict()
    out = {"latency": reps[cfg.runtime]}
    if len(reps) > 1:
        out["latency_by_runtime"] = reps
    return out


def make_report(job: PruneJob, spec, cfg: pruning.PruneConfig, before: Counts, after: Counts,
                result: pruning.PruneResult, plan: Optional[targets.TargetPlan],
                steps: Optional[iterative.Schedule], **extra: Any) -> Dict[str, Any]:
    """report.json of a structured prune."""
    more: Dict[str, Any] = dict(extra)
    if isinstance(plan, latency_target.LatencyPlan):
        more["target"] = dict(plan.to_dict(), reached_macs=after.macs,
                              how=latency_target.describe(plan))
    elif plan is not None:
        d = plan.to_dict()
        d.update(reached_macs=after.macs, reached_speedup=plan.macs_before / max(after.macs, 1),
                 how=targets.describe(plan, after.macs))
        more["target"] = d
    if steps is not None:
        more["schedule"] = steps.to_dict()
    if result.notes:
        more["notes"] = list(result.notes)
    return report_json.prune_report(spec, cfg, before, after, result.output_layers,
                               len(result.history), **more)


def save_outputs(out_dir: Optional[str], model: nn.Module, spec, history: List[list],
                 preprocessing: Preprocessing, meta: Dict[str, Any], rep: Dict[str, Any]) -> None:
    """``out_dir/pruned.pt`` and ``report.json``, both or neither: pruned.pt is written whole
    under a temp name, report.json is written (atomically), and only then is pruned.pt renamed
    into place. A SIGINT/SIGTERM meanwhile is held until pruned.pt is whole, then stops the job
    before report.json is written."""
    if not out_dir:
        return
    ensure_dir(out_dir)
    # A signal meanwhile waits, then stops the job before report.json: both files or neither.
    with interrupt.deferred(), atomic_path(os.path.join(out_dir, "pruned.pt")) as ckpt_tmp:
        save_checkpoint(ckpt_tmp, model, spec, history=history, preprocessing=preprocessing,
                        meta=meta, atomic=False)
        interrupt.check()
        write_json(os.path.join(out_dir, "report.json"), rep)


def _summary(job: PruneJob, plan, steps, after: Counts, result: pruning.PruneResult, log: Log,
             searched: Optional[Dict[str, Any]] = None) -> None:
    if searched is not None:
        ms = next((f.get("measured_ms") for f in searched.get("finalists", [])
                   if f["id"] == searched["chosen"]), None)
        goal = searched["budget"]["goal"]
        measured = ("" if ms is None else f"; measured {ms:.2f} ms" +
                    (f", OVER the {goal:g} ms budget (no finalist measured within it)"
                     if ms > goal else ""))
        log(f"width search: candidate {searched['chosen']} ({searched['chosen_origin']}) of "
            f"{searched['scored']} within {searched['budget']['describe']}{measured}; uniform "
            f"ranked {searched['uniform_rank']} by the held-out score")
    elif isinstance(plan, latency_target.LatencyPlan):
        log(latency_target.describe(plan))
    elif plan is not None:
        log(targets.describe(plan, after.macs))
    if steps is not None:
        for r in steps.records:
            acc = "".join(f", top-1 {k} {100 * v:.2f}%" for k, v in
                          (("pruned", r.top1_pruned), ("fine-tuned", r.top1_finetuned))
                          if v is not None)
            log(f"step {r.step}/{job.steps}: {human(r.macs)} MACs, {human(r.params)} params"
                f"{acc}" + (f" ({report_json.plural(r.finetune_epochs, 'epoch')})"
                            if r.finetune_epochs else ""))
    for note in result.notes:
        log(f"note: {note}")


def _wrote(out_dir: Optional[str], log: Log) -> None:
    if out_dir:
        log(f"wrote {os.path.join(out_dir, 'pruned.pt')} and report.json")


# --------------------------------------------------------------------------------------------
# The pipeline.

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
    learned = learn_round_to(job, model, spec, log)
    cfg = job.prune_config(learned["round_to"] if learned else None)
    if job.latency_budget is not None:  # the search removes whole multiples
        cfg = fit_round_to(job, cfg, model)
    searched = guarded = None
    if job.search is not None and job.latency_budget is not None:
        plan = None  # the width search replaces --target-latency's own
        cfg, searched = search_widths(job, prep, model, spec, cfg, None, grads, log, dist)
    else:
        base_cfg = cfg
        cfg, plan = solve_target(job, model, spec, cfg, grads, log)
        if job.latency_budget is None:
            cfg = fit_round_to(job, cfg, model)
        if job.search is not None:
            cfg, searched = search_widths(job, prep, model, spec, cfg, plan, grads, log, dist)
        elif isinstance(plan, latency_target.LatencyPlan):
            cfg, guarded = guard_latency(job, prep, model, spec, base_cfg, cfg, plan, grads, log,
                                         dist)
    if learned:
        _say_round_to(learned, cfg.round_to, log)
    steps = schedule(job, prep, dist)
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
                           before_finetune=save_state if state is not None else None)
        interrupt.check()
    except interrupt.Interrupted as e:
        raise _resumable(e, out_dir, job.source.consent()) if saved else e
    if steps is not None:
        steps.finish(model, accuracy.get("pruned"), job.finetune.epochs if job.finetune else 0,
                     accuracy.get("finetuned"))
    acc = {"accuracy": accuracy} if accuracy else {}
    try:
        lat = measure(job, original, model, spec, before, after, log)
        rep = complete_report(partial, dict(**acc, **lat),
                              steps.to_dict() if steps is not None else None)
        meta = dict(meta0, **acc)
        interrupt.check()
    except interrupt.Interrupted as e:
        raise _resumable(e, out_dir, job.source.consent()) if saved else e
    save_outputs(out_dir, model, spec, history, prep.saved_preprocessing, meta, rep)
    if out_dir and searched is not None:
        from tp_vgg.report import plots
        plots.save_png(plots.search_figure(searched), os.path.join(out_dir, "search.png"))
    _remove_state(out_dir)
    log(report_json.format_prune_table(rep))
    _summary(job, plan, steps, after, result, log, searched)
    _wrote(out_dir, log)
    return JobResult(model, spec, history, before, after, rep, meta, prep.saved_preprocessing,
                     accuracy, out_dir)


# --------------------------------------------------------------------------------------------
# An interrupted prune job, finished by `tp-vgg prune --resume DIR` (:func:`resume_run`).

RESUME_FILE = "resume.json"  # in DIR while the job fine-tunes; removed once pruned.pt is written
_TAIL = ("schedule", "notes")  # make_report's last keys, after the extras


def resume_state(job: PruneJob, prep: Prepared, partial: Dict[str, Any], meta: Dict[str, Any],
                 steps: Optional[iterative.Schedule]) -> Dict[str, Any]:
    """What :func:`resume_run` needs besides ``DIR/finetune/last.pt`` (the pruned model, its
    history and the fine-tuning state): the report and meta known before fine-tuning and the
    stages after it (scratch control, latency). Written to ``DIR/resume.json`` (atomically)
    when fine-tuning starts, with the accuracy so far."""
    ft = job.finetune
    scratch = None
    if ft is not None and ft.scratch_epochs is not None:
        epochs = ft.scratch_epochs or int(prep.loaded.meta.get("epoch") or 0) + ft.epochs
        scratch = dataclasses.replace(ft.train, epochs=epochs, lr=None, warmup_epochs=1.0,
                                      distill=False).to_dict()
    return {"job": "prune", "report": partial, "meta": meta,
            "schedule": steps.to_dict() if steps is not None else None,
            "finetune_epochs": ft.epochs if ft is not None else 0,
            "source_history": len(prep.loaded.history),
            "latency": dataclasses.asdict(job.latency) if job.latency is not None else None,
            "latency_runtimes": list(job.latency_runtimes), "scratch": scratch,
            "scratch_data": dataclasses.asdict(ft.data) if scratch else None}


def _resumable(e: interrupt.Interrupted, out_dir: str, consent: Dict[str, bool]
               ) -> interrupt.Interrupted:
    """``e`` continued by `tp-vgg prune --resume DIR` (the fine-tuning checkpoint is kept)."""
    kept = e.kept or os.path.join(out_dir, "finetune", "last.pt")
    trust = bool((e.resume and e.resume.trust_model_code) or consent.get("trust_model_code"))
    out = interrupt.Interrupted(e.signum, kept, e.where, interrupt.Resume(
        "prune", out_dir, trust, bool(consent.get("allow_changed_model_code"))))
    return out


def _remove_state(out_dir: Optional[str]) -> None:
    if out_dir and os.path.exists(os.path.join(out_dir, RESUME_FILE)):
        os.remove(os.path.join(out_dir, RESUME_FILE))


def complete_report(partial: Dict[str, Any], middle: Dict[str, Any],
                    schedule: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """report.json from the part known before fine-tuning (:func:`make_report` without accuracy,
    latency and schedule), ``middle`` (accuracy, latency) and the schedule, keys in
    :func:`make_report`'s order."""
    keys = list(partial)
    cut = keys.index("layers") + 1 if "layers" in keys else len(keys)
    out = {k: partial[k] for k in keys[:cut]}
    out.update(middle)
    tail = dict({"schedule": schedule} if schedule is not None else {},
                **{k: partial[k] for k in keys[cut:] if k in _TAIL})
    out.update({k: partial[k] for k in keys[cut:] if k not in _TAIL})
    out.update({k: tail[k] for k in _TAIL if k in tail})
    return out


def read_resume_state(out_dir: str) -> Dict[str, Any]:
    """``DIR/resume.json`` of an interrupted prune job; a UserError naming what DIR holds."""
    path = os.path.join(out_dir, RESUME_FILE)
    if not os.path.isdir(out_dir):
        raise UserError(f"--resume {out_dir!r} is not a folder; give the --out DIR of an "
                        "interrupted tp-vgg prune")
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(out_dir, "pruned.pt")):
            raise UserError(f"--resume {out_dir!r}: that prune job has finished "
                            "(pruned.pt and report.json are there); nothing to resume")
        raise UserError(f"--resume {out_dir!r} holds no interrupted prune job ({RESUME_FILE} is "
                        "written when fine-tuning starts; a job stopped before it starts anew: "
                        "run the prune command again)")
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path!r}: {e}") from e
    if not isinstance(state, dict) or state.get("job") != "prune":
        raise UserError(f"{path!r} is not a tp-vgg prune job's resume file")
    return state


def resume_run(out_dir: str, log: Log = print, dist: Optional[DistContext] = None, *,
               trust_model_code: bool = False, allow_changed_model_code: bool = False,
               runtime: Optional[Dict[str, Any]] = None) -> JobResult:
    """Finish the prune job interrupted in ``out_dir`` (`tp-vgg prune --resume DIR`): continue
    its fine-tuning exactly from ``DIR/finetune/last.pt`` (:func:`tp_vgg.train.loop.resume`),
    then the stages after it (scratch control, latency), and write ``pruned.pt`` and
    ``report.json`` as the uninterrupted job would have. ``trust_model_code``: the model is a
    user factory (as for :func:`tp_vgg.load_checkpoint`); ``runtime``: device, progress, ..."""
    dist = dist or DistContext()
    state = read_resume_state(out_dir)
    consent = {"trust_model_code": trust_model_code,
               "allow_changed_model_code": allow_changed_model_code}
    if not dist.is_main:
        log = lambda s: None  # noqa: E731
    ft_dir = os.path.join(out_dir, "finetune")
    last = os.path.join(ft_dir, "last.pt")
    if not os.path.isfile(last):
        raise UserError(f"--resume {out_dir!r}: {last!r} is missing; the job cannot be finished, "
                        "run the prune command again")
    point = train.ResumePoint.read(last, **consent)
    data = load_data(point.data, log)
    ck = point.checkpoint
    done = int(ck.train_state["epoch"])
    step = int(ck.train_state.get("step") or 0)
    log(f"resuming the prune job in {out_dir}: fine-tuning after epoch {done}/"
        f"{point.config.epochs}" + (f" and step {step}" if step else ""))
    try:
        res = train.resume(point, data, ft_dir, runtime=runtime, dist=dist, log=log)
        model = res.model.to("cpu", memory_format=torch.contiguous_format).eval()
        spec, history = ck.spec, list(ck.history)
        accuracy = dict(state.get("accuracy") or {})
        accuracy["finetuned"] = (res.final.top1 if res.final is not None
                                 else ck.meta.get("test_top1", accuracy.get("recalibrated")))
        if state.get("scratch"):
            accuracy["scratch"] = _resume_scratch(state, ck, data, out_dir, history, log, dist)
        interrupt.check()
        n_src = int(state.get("source_history") or 0)
        steps = None
        if state.get("schedule"):
            sch = state["schedule"]
            steps = iterative.Schedule(spec, sch["iterative_steps"], sch["finetune_epochs_per_step"])
            steps.records = [iterative.StepRecord(**r) for r in sch["steps"]]
            steps.finish(model, accuracy.get("pruned"), state.get("finetune_epochs") or 0,
                         accuracy.get("finetuned"))
        original = pruning.replay(ck.build_unpruned(), spec, history[:n_src]).eval()
        before, after = counting.count(original, spec), counting.count(model, spec)
        lat: Dict[str, Any] = {}
        if state.get("latency") is not None:
            lcfg = dict(state["latency"], batch_sizes=tuple(state["latency"]["batch_sizes"]))
            rjob = PruneJob(ModelSource(spec=spec), latency=latency.LatencyConfig(**lcfg),
                            latency_runtimes=tuple(state.get("latency_runtimes") or ()))
            lat = measure(rjob, original, model, spec, before, after, log)
        acc = {"accuracy": accuracy}
        rep = complete_report(state["report"], dict(**acc, **lat),
                              steps.to_dict() if steps is not None else None)
        meta = dict(state["meta"], **acc)
        interrupt.check()
    except interrupt.Interrupted as e:
        raise _resumable(e, out_dir, consent)
    if dist.is_main:
        save_outputs(out_dir, model, spec, history, ck.preprocessing, meta, rep)
        _remove_state(out_dir)
    log(report_json.format_prune_table(rep))
    _wrote(out_dir if dist.is_main else None, log)
    return JobResult(model, spec, history, before, after, rep, meta, ck.preprocessing, accuracy,
                     out_dir)


def _resume_scratch(state: Dict[str, Any], ck, data: ImageData, out_dir: str,
                    history: List[list], log: Log, dist: Optional[DistContext]) -> Optional[float]:
    """The scratch control of a resumed job: continued from ``DIR/scratch/last.pt`` when it
    holds a run in progress, else trained as :func:`scratch_control` does."""
    folder = os.path.join(out_dir, "scratch")
    last = os.path.join(folder, "last.pt")
    if os.path.isfile(last):
        point = train.ResumePoint.read(last, **ck.consent())
        res = train.resume(point, data, folder, dist=dist, log=log)
        return res.final.top1 if res.final else point.checkpoint.meta.get("test_top1")
    cfg = TrainConfig.from_dict(state["scratch"])
    train.seed_everything(cfg.seed)
    model = pruning.replay(ck.build_unpruned(), ck.spec, history)
    log(f"scratch control: the pruned architecture from random initialization, "
        f"{cfg.epochs} epochs")
    res = train.fit(model, ck.spec, data, cfg, folder,
                    data_cfg=DataConfig(**state["scratch_data"]), history=history,
                    preprocessing=ck.preprocessing, meta={"scratch": True}, command="scratch",
                    dist=dist)
    return res.final.top1 if res.final else None


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
    _wrote(out_dir, log)
    return JobResult(model, spec, list(loaded.history), before, after, rep, meta,
                     prep.saved_preprocessing, accuracy, out_dir)


# --------------------------------------------------------------------------------------------
# A sweep: the job at several ratios.

def run_dir_name(ratio: float) -> str:
    """0.5 -> 'ratio_0.50', 0.125 -> 'ratio_0.125'."""
    text = f"{ratio:.4f}".rstrip("0")
    return "ratio_" + (text if len(text.split(".")[1]) >= 2 else f"{ratio:.2f}")


def sweep(job: PruneJob, ratios: Sequence[float], out_dir: str, log: Log = print,
          latency_label: Optional[str] = None) -> Dict[str, Any]:
    """:func:`run` ``job`` at each ratio into ``out_dir/ratio_R/``; ``out_dir/sweep.json`` lists
    the runs (rewritten after each) and ``report.md`` shows the trade-off curves.
    ``latency_label`` is what sweep.json records for the latency setting (default: the batch
    sizes, or ``"default"``).

    With ``job.latency`` the runs are not timed one by one: once all are pruned,
    :func:`measure_sweep` times the original once, interleaved with every pruned model in one
    session (per runtime), so that every speed-up -- in each run's report.json, in sweep.json,
    report.md and the printed table -- is the one baseline shown / that model's ms."""
    if job.target is not None:
        raise UserError("a sweep sets the ratio: leave PruneJob.target (--target-*) out")
    check_out_dir(out_dir)
    ratios = sorted(dict.fromkeys(float(r) for r in ratios))
    for r in ratios:
        pruning.check_ratio("--ratios", r, "sweep's ratios")
    job.validate()
    ensure_dir(out_dir)
    if latency_label is None and job.latency is not None:
        latency_label = ",".join(map(str, job.latency.batch_sizes)) or "default"
    runs = [{"ratio": r, "dir": run_dir_name(r)} for r in ratios]
    ft = job.finetune
    record = {"model": job.source.describe(), "ratios": ratios, "runs": runs,
              "finetune_epochs": (ft.epochs or None) if ft else None,
              "data": ft.data.name if ft else None, "latency": latency_label}
    path = os.path.join(out_dir, report_md.SWEEP_FILE)
    write_json(path, record)
    each = _untimed(job)
    results: Dict[str, JobResult] = {}
    for i, entry in enumerate(runs):
        t0 = time.perf_counter()
        log(f"== sweep {i + 1}/{len(runs)}: ratio {entry['ratio']} -> "
            f"{os.path.join(out_dir, entry['dir'])}")
        results[entry["dir"]] = run(
            dataclasses.replace(each, prune=dataclasses.replace(job.prune, ratio=entry["ratio"])),
            os.path.join(out_dir, entry["dir"]), log)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        write_json(path, record)
    if job.latency is not None:
        measure_sweep(job, record, results, out_dir, log)
        write_json(path, record)
    written = report_md.write_report(out_dir)
    log(f"wrote {path} and {written.markdown}")
    return record


def _untimed(job: PruneJob) -> PruneJob:
    """``job`` without its latency measurement (the sweep times all runs together), the
    ``--round-to auto`` scan still where --latency's settings would have put it."""
    if job.latency is None:
        return job
    timing = job.timing
    if timing is None and job.prune.round_to == "auto":
        timing = dataclasses.replace(job.latency, batch_sizes=())
    return dataclasses.replace(job, latency=None, latency_runtimes=(), timing=timing)


def measure_sweep(job: PruneJob, record: Dict[str, Any], results: Dict[str, "JobResult"],
                  out_dir: str, log: Log = print) -> None:
    """Time the original (the sweep's source, rebuilt) once, interleaved with every run's pruned
    model, per runtime; write each run's latency into its report.json (speed-up = the shared
    original's ms / its ms) and into ``record`` (sweep.json): ``latency_baseline_ms`` (runtime
    -> batch size -> the original's median ms) and, per run, ``latency`` (runtime -> a row per
    batch size: original_ms, pruned_ms, speedup, mac_ratio, efficiency)."""
    if not results:
        return
    first = next(iter(results.values()))
    spec = first.spec
    original = load_source(job.source, lambda s: None).model
    before = first.before.macs
    cfg = latency_config(job.latency, spec)
    label = {d: f"ratio {r['ratio']}" for r in record["runs"] for d in [r["dir"]]}
    names = [r["dir"] for r in record["runs"] if r["dir"] in results]
    session = (f"one interleaved session: the original and the {len(names)} pruned models of "
               f"the sweep (ratios {', '.join(str(r['ratio']) for r in record['runs'])})")
    by_runtime: Dict[str, Dict[str, latency.LatencyReport]] = {}
    for runtime in dict.fromkeys([cfg.runtime, *job.latency_runtimes]):
        log(f"== sweep latency ({runtime}): the original and {len(names)} pruned models, "
            "interleaved in one session")
        reps = latency.compare_each(original, {n: results[n].model for n in names}, spec,
                                    dataclasses.replace(cfg, runtime=runtime), before,
                                    {n: results[n].after.macs for n in names}, session)
        log(latency.format_session_table(reps, label))
        by_runtime[runtime] = reps
    main = by_runtime[cfg.runtime]
    record["latency_baseline_ms"] = {
        rt: {str(k.batch_size): k.original.median_ms
             for k in next(iter(reps.values())).comparisons} for rt, reps in by_runtime.items()}
    record["latency_note"] = ("the original was timed once per runtime, interleaved with every "
                              "ratio's pruned model in one session; speed-up = "
                              "latency_baseline_ms / pruned_ms")
    for entry in record["runs"]:
        name = entry["dir"]
        if name not in main:
            continue
        entry["latency"] = {rt: [{"batch_size": k.batch_size,
                                  "original_ms": k.original.median_ms,
                                  "pruned_ms": k.pruned.median_ms, "speedup": k.speedup,
                                  "mac_ratio": k.mac_ratio, "efficiency": k.efficiency}
                                 for k in reps[name].comparisons]
                             for rt, reps in by_runtime.items()}
        lat = {"latency": main[name].to_dict()}
        if len(by_runtime) > 1:
            lat["latency_by_runtime"] = {rt: reps[name].to_dict()
                                         for rt, reps in by_runtime.items()}
        rep = dict(results[name].report, **lat)
        results[name].report.update(lat)
        write_json(os.path.join(out_dir, name, report_md.REPORT_FILE), rep)


# --------------------------------------------------------------------------------------------
# The study: `tp-vgg sensitivity` as one call.

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

    def evaluate(m):
        if study.bn_batches and m is not model:  # a pruned copy; the baseline keeps its own
            evaluation.recalibrate_on(m, spec, data, pre, study.bn_batches, device=study.device,
                                      seed=study.seed)
        return evaluation.top1(m, spec, test, pre, study.device, study.batch_size)

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
               f"{shlex.quote(json.dumps(ratios))} --out DIR")
    rep = {
        "units": report_json.MAC_NOTE, "model": spec.to_dict(), "data": data.name,
        "test_images": len(test.test_labels), "importance": study.importance,
        "budget_points": study.budget, "baseline_top1": res.baseline_top1,
        "bn_recalibrate_batches": study.bn_batches,
        "layer_ratios": ratios,
        "predicted": {"macs_before": res.baseline_macs, "macs_after": after.macs,
                      "macs_reduction": res.baseline_macs / max(after.macs, 1),
                      "note": "layers pruned together may cost more than each alone; fine-tune"},
        "command": command, "rows": res.rows, "skipped": res.skipped,
    }
    if out_dir:
        ensure_dir(out_dir)
        sensitivity.write_csv(os.path.join(out_dir, "sensitivity.csv"), res)
        sensitivity.plot(os.path.join(out_dir, "sensitivity.png"), res, study.budget,
             f"{spec.name}: sensitivity to pruning ({study.importance}, {data.name})")
        write_text(os.path.join(out_dir, "layer_ratios.json"), json.dumps(ratios, indent=2) + "\n")
        write_json(os.path.join(out_dir, "report.json"), rep)
    log(sensitivity.format_table(res, ratios))
    log(f"budget {study.budget:g} top-1 points per layer: {len(ratios)} of {len(res.layers)} "
        f"layers pruned, {human(res.baseline_macs)} -> {human(after.macs)} MACs "
        f"({res.baseline_macs / max(after.macs, 1):.2f}x fewer) before fine-tuning")
    log(f"next: {command}")
    if out_dir:
        log(f"wrote {os.path.join(out_dir, 'sensitivity.csv')}, sensitivity.png, "
            "layer_ratios.json, report.json")
    return rep
