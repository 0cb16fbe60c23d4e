"""The stages a prune job is made of, shared by :mod:`tp_vgg.jobs.prune`, ``resume``,
``unstructured`` and ``sweep``: :func:`load` (the model; data, teacher and top-1 before when the
job fine-tunes), :func:`sparse_learning` (``--recipe``), :func:`gradients`,
:func:`learn_round_to`, :func:`solve_target` (a MAC or latency target -> ratios),
:func:`search_widths` (``--search``), :func:`guard_latency`, :func:`schedule` (iterative steps),
:func:`prune_model`, :func:`recover` (BN re-estimation, fine-tuning, distillation, the scratch
control), :func:`measure` (latency), :func:`make_report` and :func:`save_outputs`. Each takes
what it needs and returns what the next one uses; :func:`tp_vgg.jobs.prune.run` calls them in
order.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from tp_vgg.checkpoint.source import Loaded, load_source
from tp_vgg.checkpoint.store import save as save_checkpoint
from tp_vgg.data.datasets import ImageData, load_data
from tp_vgg.data.preprocessing import Preprocessing
from tp_vgg.device import device_name
from tp_vgg.errors import UserError
from tp_vgg.files import atomic_path, ensure_dir, write_json
from tp_vgg.latency import budget as latency_target
from tp_vgg.latency import timing as latency
from tp_vgg.models import outputs
from tp_vgg.models.counting import Counts
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.pruning import graph as pruning
from tp_vgg.pruning import iterative, recipes, sparsity, targets
from tp_vgg.pruning.criteria import (DEFAULT_TAYLOR_BATCHES, GradientBatches, needs_gradients,
                                     training_gradients)
from tp_vgg.report import summary as report_json
from tp_vgg.search import widths as search
from tp_vgg.train import evaluation, interrupt
from tp_vgg.train import loop as train
from tp_vgg.train.config import TrainConfig
from tp_vgg.train.distributed import DistContext


if TYPE_CHECKING:
    from tp_vgg.jobs.prune import PruneJob

Log = Callable[[str], None]

# BatchNorm statistics are re-estimated on DEFAULT_BN_RECALIBRATE training batches after pruning
# when data are given (EagleEye's adaptive BN), before evaluating or fine-tuning.

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


def learn_round_to(job: PruneJob, model: nn.Module, spec, log: Log = print,
                   dist: Optional[DistContext] = None) -> Optional[Dict[str, Any]]:
    """``--round-to auto``: the fast channel multiple of the device and runtime, learned from a
    width scan in the latency table (:func:`tp_vgg.latency.budget.learn_round_to`, cached; under
    torchrun by rank 0, for every rank); None for any other ``round_to``."""
    if job.prune.round_to != "auto":
        return None
    mcfg = job.timing_config(spec)
    t = latency_target.open_table(model, spec, mcfg, job.latency_budget.cache_dir
                                  if job.latency_budget else job.latency_cache)
    block, info = latency_target.learn_round_to(t, dist)
    return dict(info, round_to=block, runtime=mcfg.runtime, device=mcfg.device,
                batch_size=mcfg.batch_sizes[0])


def say_round_to(learned: Dict[str, Any], used: Optional[int], log: Log) -> None:
    k = learned["round_to"]
    why = (f"widths that are multiples of {k} run fastest in {learned['runtime']} on "
           f"{learned['device']} at batch {learned['batch_size']}, learned from a width scan of "
           f"{learned['learned_from']}" if learned.get("learned_from") else
           "the model has no convolution to scan for fast widths")
    if used != k:
        why += f"; halved to {used} so that every conv keeps a multiple"
    log(f"--round-to auto: {used} ({why}; {learned.get('table')})")


def solve_target(job: PruneJob, model: nn.Module, spec, cfg: pruning.PruneConfig,
                 grads: Optional[GradientBatches], log: Log = print,
                 dist: Optional[DistContext] = None):
    """The ratio (per-layer ratios for a latency target) that reaches ``job.target`` and the
    plan, or ``cfg`` as it is. Under torchrun (``dist``) a latency target is timed and measured
    by rank 0, for every rank."""
    if job.target is None:
        return cfg, None
    if job.latency_budget is not None:
        return latency_target.solve(model, spec, cfg, job.latency_budget, gradients=grads,
                                    device=job.device, log=log, dist=dist)
    return targets.solve(model, spec, cfg, job.target, gradients=grads)


def search_widths(job: PruneJob, prep: Prepared, model: nn.Module, spec, cfg: pruning.PruneConfig,
                  plan: Optional[targets.TargetPlan], grads: Optional[GradientBatches],
                  log: Log = print, dist: Optional[DistContext] = None):
    """``--search N``: the per-layer widths chosen under the job's budget (a MAC target, the
    MACs of uniform ``--ratio``, or a latency target) and report.json's ``"search"`` block."""
    if job.latency_budget is not None:
        space, budget = search.latency_budget(model, spec, cfg, job.latency_budget, job.device,
                                              grads, log, dist)
    else:
        space, budget = search.mac_budget(model, spec, cfg,
                                          plan.goal_macs if plan is not None else None, grads)
    if job.search.default:  # not asked for: say so, and what it costs, before it starts
        log(f"width search: --search {job.search.candidates} is the default with --data at a MAC "
            f"budget (it beat uniform pruning at every budget measured); it costs "
            f"{search.DEFAULT_COST}; --search 0 prunes uniformly")
    s = search.Search(model, spec, cfg, space, budget, job.search, prep.data, prep.preprocessing,
                      prep.train_cfg, device=prep.train_cfg.device, log=log, dist=dist,
                      gradients=grads)
    cfg, rep = s.run()
    rep["default"] = job.search.default
    return cfg, rep


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


def schedule(job: PruneJob, prep: Prepared, dist: Optional[DistContext] = None,
             log: Log = print) -> Optional[iterative.Schedule]:
    """``between_steps`` of :func:`tp_vgg.pruning.graph.prune` for iterative steps: evaluate each
    step raw, then after re-estimating BN, then fine-tune (against the original teacher
    throughout; under torchrun every rank fine-tunes its shard, so all ranks prune the same
    weights at the next step). Without data the steps run back to back, unevaluated."""
    spec = prep.loaded.spec
    if job.steps <= 1:
        return None
    if job.finetune is None or not job.finetune.evaluates:
        return iterative.Schedule(spec, job.steps, 0, log=log)
    data, pre, tcfg = prep.data, prep.preprocessing, prep.train_cfg
    bn = job.finetune.bn_batches

    def evaluate(model):
        return evaluation.top1(model, spec, data, pre, tcfg.device)

    def recalibrate(model):  # --bn-recalibrate, as after the last step
        home = next(model.parameters()).device
        evaluation.recalibrate_on(model, spec, data, pre, bn, tcfg.batch_size, tcfg.device,
                                  tcfg.seed, tcfg.channels_last, dist=dist)
        model.to(home, memory_format=torch.contiguous_format)

    def finetune(model, epochs):
        home = next(model.parameters()).device
        res = train.fit(model, spec, data, dataclasses.replace(tcfg, epochs=epochs), None,
                        preprocessing=pre, command="finetune-step", teacher=prep.teacher,
                        dist=dist)
        model.to(home, memory_format=torch.contiguous_format)
        return res.final.top1 if res.final else None

    return iterative.Schedule(spec, job.steps, job.epochs_per_step,
                              finetune=finetune if job.epochs_per_step > 0 else None,
                              evaluate=evaluate, recalibrate=recalibrate if bn else None,
                              log=log, top1_start=(prep.top1_sparse if prep.top1_sparse is not None
                                                   else prep.top1_before))


def prune_model(model: nn.Module, spec, cfg: pruning.PruneConfig,
                steps: Optional[iterative.Schedule],
                grads: Optional[GradientBatches]) -> pruning.PruneResult:
    """:func:`tp_vgg.pruning.graph.prune` with the schedule between steps."""
    return pruning.prune(model, spec, cfg, gradients=grads, between_steps=steps)


def recover(job: PruneJob, prep: Prepared, model: nn.Module, history: List[list],
            meta: Dict[str, Any], out_dir: Optional[str], log: Log,
            dist: Optional[DistContext] = None,
            before_finetune: Optional[Callable[[Dict[str, Optional[float]]], None]] = None,
            steps: Optional[iterative.Schedule] = None) -> Dict[str, Optional[float]]:
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
    acc = {"before": prep.top1_before}
    msg = f"top-1 before pruning {100 * prep.top1_before:.2f}%"
    if steps is not None and steps.records and steps.records[-1].top1_end is not None:
        # the figures below are the last step's alone: set them against the model before it
        acc["before_last_step"] = steps.records[-1].top1_end
        msg = (f"top-1 of the original {100 * prep.top1_before:.2f}%; the last step "
               f"({steps.steps}/{steps.steps}) starts from {100 * acc['before_last_step']:.2f}%")
    acc["pruned"] = pruned
    if prep.top1_sparse is not None:
        acc["sparse_learned"] = prep.top1_sparse
        msg += f", after sparse learning {100 * prep.top1_sparse:.2f}%"
    msg += (", after its pruning" if "before_last_step" in acc else ", after pruning") + \
        f" {100 * pruned:.2f}%"
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


def measure(config: Optional[latency.LatencyConfig], runtimes: Sequence[str],
            original: Optional[nn.Module], pruned: nn.Module, spec, before: Counts,
            after: Counts, log: Log) -> Dict[str, Any]:
    """``{"latency": ...}``: the pruned model timed against the original with ``config`` (the
    job's --latency), also in ``runtimes``; empty without ``original``. Logs the table."""
    if original is None or config is None:
        return {}
    cfg = latency_config(config, spec)
    reps = {}
    for runtime in dict.fromkeys([cfg.runtime, *runtimes]):
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
    """report.json of a structured prune, with ``removed_channels``: the output channels each
    layer lost in this job, numbered as in the model before it
    (:func:`tp_vgg.report.summary.removed_channels` of this job's history)."""
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
    removed = report_json.removed_channels(result.history, result.channels_before)
    return report_json.prune_report(spec, cfg, before, after, result.output_layers,
                               len(result.history), removed, **more)


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


def summarize(job: PruneJob, plan, steps, after: Counts, result: pruning.PruneResult, log: Log,
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
    if steps is not None and steps.records:
        log(f"iterative pruning, {job.steps} steps (each step's top-1 against the model just "
            "before it):\n" + iterative.format_table(steps.records))
    for note in result.notes:
        log(f"note: {note}")


def say_wrote(out_dir: Optional[str], log: Log) -> None:
    if out_dir:
        log(f"wrote {os.path.join(out_dir, 'pruned.pt')} and report.json")

