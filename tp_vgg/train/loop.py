"""The epoch loop, built from one module per idea: :mod:`tp_vgg.train.config` (the recipe,
optimizer and schedule registries, AMP), :mod:`tp_vgg.train.progress`, :mod:`tp_vgg.train.steps`
(:func:`~tp_vgg.train.steps.train_one_epoch`), :mod:`tp_vgg.train.evaluation` (evaluate, BN recalibration)
and :mod:`tp_vgg.train.rng`.

* :func:`fit` -- the epoch loop: writes ``last.pt`` every epoch and ``best.pt`` on a better test
  top-1 (atomic, weights_only-loadable), ``metrics.jsonl`` and the resolved ``config.json``;
  :func:`resume` continues a run exactly from its ``last.pt``; :func:`finetune` trains a
  (pruned) checkpoint's architecture and weights.

On SIGINT/SIGTERM (:mod:`tp_vgg.train.interrupt`) the run stops after the current step, writes
``last.pt`` at that step (``train_state["step"]``: steps done in the epoch after
``train_state["epoch"]``) and raises :class:`~tp_vgg.train.interrupt.Interrupted`;
:func:`resume` continues it from that step, exactly.

Every epoch's randomness is a function of ``(seed, epoch, rank)``: the data order and augmentation
(:class:`tp_vgg.data.batches.Batches`) and the global RNGs (re-seeded at each epoch start; dropout), so a run
resumed from the end of epoch ``e`` -- also after a SIGKILL mid-epoch ``e + 1`` -- repeats exactly
what the uninterrupted run did.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from tp_vgg.checkpoint import store as ckpt_io
from tp_vgg.data.batches import BatchTransform
from tp_vgg.data.datasets import DataConfig, ImageData
from tp_vgg.errors import UserError
from tp_vgg.files import ensure_dir, write_json, write_text
from tp_vgg.models.zoo import ModelSpec
from tp_vgg.train import interrupt
from tp_vgg.train.config import OPTIMIZERS, TrainConfig, lr_lambda, make_amp
from tp_vgg.train.distributed import DistContext
from tp_vgg.train.evaluation import (EvalResult, PreprocessingLike, channels_last_runs,
                                     check_model_fits, evaluate, resolve_preprocessing)
from tp_vgg.train.progress import Progress, make_progress
from tp_vgg.train.rng import epoch_seed, rng_state, seed_everything, set_rng_state
from tp_vgg.train.steps import Engine, TimedTeacher, train_one_epoch

# --------------------------------------------------------------------------------------------
# The epoch loop.

@dataclass
class Teacher:
    """The model a student is distilled from (``TrainConfig.distill``): built from ``spec`` and
    pruned by ``history`` (empty: the unpruned model), so that ``fit`` can save it next to
    ``last.pt`` for an exact ``resume``."""

    model: nn.Module
    spec: ModelSpec
    history: List[list] = field(default_factory=list)

    @classmethod
    def read(cls, path: str, **consent: bool) -> "Teacher":
        """The model in checkpoint ``path`` (``consent``: as for :func:`tp_vgg.load_checkpoint`)."""
        ck = ckpt_io.load_checkpoint(path, **consent)
        return cls(ck.build(), ck.spec, ck.history)


TEACHER_FILE = "teacher.pt"


@dataclass
class FitResult:
    epochs: int                         # epochs completed
    best_top1: float
    final: Optional[EvalResult]
    records: List[Dict[str, Any]]
    model: nn.Module                    # the trained (unwrapped) model
    out_dir: Optional[str] = None
    sparsity: Optional[Dict[str, Any]] = None  # cfg.sparsity: the regularizer's report


def fit(model: nn.Module, spec: ModelSpec, data: ImageData, cfg: TrainConfig,
        out_dir: Optional[str] = None, *, data_cfg: Optional[DataConfig] = None,
        history: Optional[List[list]] = None, preprocessing: Optional[PreprocessingLike] = None,
        meta: Optional[Dict[str, Any]] = None, dist: Optional[DistContext] = None,
        resume_state: Optional[Dict[str, Any]] = None, log: Callable[[str], None] = print,
        command: str = "train", after_step: Optional[Callable[[], None]] = None,
        on_epoch_end: Optional[Callable[[int, nn.Module], None]] = None,
        teacher: Optional[Teacher] = None) -> FitResult:
    """Train ``model`` (built from ``spec``, pruned by ``history``) on ``data``.

    ``after_step()`` runs after every optimizer step (a checkpoint whose meta has
    ``unstructured`` keeps its zero weights at zero by default); ``on_epoch_end(epoch, model)``
    after each epoch (1-based). ``cfg.sparsity`` adds a sparsity regularizer to the gradients and
    writes ``sparsity.json``/``bn_gamma.png`` (BN gamma before and after) to ``out_dir``.

    With ``out_dir``, rank 0 writes ``last.pt`` each epoch (with the training state for
    :func:`resume`), ``best.pt`` on a better test top-1, ``metrics.jsonl`` and ``config.json``.
    ``resume_state`` is a ``last.pt``'s ``train_state``: training continues after its epoch
    (and, for a run stopped by a signal, after its ``step`` within the next epoch).

    A SIGINT/SIGTERM stops the run after the current step (:mod:`tp_vgg.train.interrupt`): with
    ``out_dir``, ``last.pt`` is written at that step; then
    :class:`~tp_vgg.train.interrupt.Interrupted` is raised (``kept``: that last.pt).

    ``cfg.distill`` trains against ``teacher`` (:func:`distill_loss`); the teacher is moved to the
    device, frozen, kept in eval mode, never wrapped in DDP or compiled, and saved once as
    ``teacher.pt`` in ``out_dir`` (for :func:`resume`). Its forward time is in each epoch's log.
    """
    dist = dist or DistContext()
    cfg.validate()
    cfg = cfg.resolved()
    device = dist.device(cfg.device)
    autocast, scaler, amp_mode = make_amp(device, cfg.amp)
    history = list(history or [])
    pre = resolve_preprocessing(data, spec, preprocessing)
    if cfg.channels_last and not channels_last_runs(model.to(device), spec, device):
        log("channels-last off: the model's forward cannot take channels-last input (a "
            "view() of a conv's output); training on contiguous batches")
        cfg = dataclasses.replace(cfg, channels_last=False)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    check_model_fits(model, spec, data)
    timed_teacher = None
    if cfg.distill:
        if teacher is None:
            raise UserError("distillation (TrainConfig.distill) needs a teacher: pass "
                            "fit(..., teacher=Teacher(model, spec)) (tp_vgg.train.loop.Teacher; "
                            "e.g. the model before pruning), or teacher=Teacher.read(CKPT)")
        teacher.model.to(device, memory_format=memory_format).eval().requires_grad_(False)
        check_model_fits(teacher.model, teacher.spec, data)
        timed_teacher = TimedTeacher(teacher.model, teacher.spec.output_key)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    transform = BatchTransform(pre.mean, pre.std, pre.input_size, cfg.channels_last)
    train_b = data.batches("train", cfg.batch_size, transform, device, train=True,
                           augment=cfg.augment, seed=cfg.seed, rank=dist.rank,
                           world_size=dist.world_size)
    test_b = data.batches("test", cfg.batch_size, transform, device, rank=dist.rank,
                          world_size=dist.world_size)
    optimizer = OPTIMIZERS.get(cfg.optimizer).build(model.parameters(), cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, len(train_b)))

    start_epoch, best, records = 0, -1.0, []
    start_step, partial, step_rng = 0, None, None
    if resume_state is not None:
        start_epoch = int(resume_state["epoch"])
        start_step = int(resume_state.get("step") or 0)  # stopped by a signal mid-epoch
        if start_step:
            partial, step_rng = resume_state.get("partial"), resume_state.get("rng")
        best = float(resume_state.get("best_top1", -1.0))
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        if resume_state.get("rng"):
            set_rng_state(resume_state["rng"])
        records = [r for r in _read_records(out_dir) if r.get("epoch", 0) <= start_epoch]
        planned = int((resume_state.get("config") or {}).get("epochs") or cfg.epochs)
        if planned != cfg.epochs:  # continued for more epochs: the schedule as if planned so
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]

    regularizer = None
    if cfg.sparsity:
        from tp_vgg.pruning.sparsity import Regularizer

        regularizer = Regularizer(model, spec, cfg.sparsity, cfg.sparsity_reg)
    if after_step is None and (meta or {}).get("unstructured"):
        from tp_vgg.pruning.unstructured import ZeroMask

        after_step = ZeroMask.from_zeros(model)  # fine-tuning keeps pruned weights at zero
    raw = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    engine = Engine(model, optimizer, scheduler,
                    nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), autocast, scaler,
                    cfg.grad_clip, spec.output_key, dist, regularize=regularizer,
                    after_step=after_step, teacher=timed_teacher,
                    distill_temperature=cfg.distill_temperature, distill_alpha=cfg.distill_alpha)

    quiet = cfg.progress == "none" or not dist.is_main
    say = (lambda s: None) if quiet else log
    if start_epoch >= cfg.epochs:
        say(f"nothing to do: the run already completed its {cfg.epochs} epochs")
        return FitResult(epochs=cfg.epochs, best_top1=best, final=None, records=records,
                         model=raw, out_dir=None)
    writes = out_dir is not None and dist.is_main
    resolved = {"command": command, "resumed_after_epoch": start_epoch or None,
                **({"resumed_at_step": start_step} if start_step else {}),
                "train": cfg.to_dict(),
                "runtime": {"device": str(device), "amp": amp_mode, "world_size": dist.world_size,
                            "backend": dist.backend, "threads": torch.get_num_threads(),
                            "torch": torch.__version__},
                "data": dataclasses.asdict(data_cfg) if data_cfg else {"name": data.name},
                "model": spec.to_dict(), "pruning_steps": len(history), "preprocessing": pre.to_dict()}
    if writes:
        ensure_dir(out_dir)
        write_json(os.path.join(out_dir, "config.json"), resolved)
        if teacher is not None and cfg.distill and resume_state is None:
            ckpt_io.save(os.path.join(out_dir, TEACHER_FILE), teacher.model, teacher.spec,
                         teacher.history, pre, {"role": "distillation teacher"})
    progress = Progress() if quiet else make_progress(cfg.progress, say, cfg.log_every_s,
                                                       dist.world_size)
    final: Optional[EvalResult] = None
    data_dict = dataclasses.asdict(data_cfg) if data_cfg else {"name": data.name}

    def train_state(epoch: int, **more: Any) -> Dict[str, Any]:
        """What last.pt holds for :func:`resume` after ``epoch`` whole epochs (``more``: the
        step reached in the next one, when a signal stopped it)."""
        state = {"epoch": epoch, "best_top1": best, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict() if scaler is not None else {},
                 "rng": rng_state(), "config": cfg.to_dict(), "data": data_dict,
                 "command": command, **more}
        if cfg.distill:
            state["teacher"] = TEACHER_FILE
        return state

    def stopped(kept: Optional[str], where: str) -> interrupt.Interrupted:
        resume_cmd = "train" if command == "train" else "finetune"
        return interrupt.Interrupted(
            interrupt.requested() or signal.SIGINT, kept, where,
            interrupt.Resume(resume_cmd, kept, spec.is_user_factory) if kept else None)

    interrupt.check()  # a signal before training (e.g. one that a library swallowed)
    last_path = os.path.join(out_dir, "last.pt") if writes else None
    with interrupt.deferred():  # a signal stops the run after the current step
        for epoch in range(start_epoch, cfg.epochs):
            seed_everything(epoch_seed(cfg.seed, epoch, dist.rank))
            train_b.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            skip = start_step if epoch == start_epoch else 0
            stats = train_one_epoch(engine, train_b, epoch, progress, cfg.epochs, skip=skip,
                                    partial=partial if skip else None,
                                    rng=step_rng if skip else None)
            if stats.stopped_at is not None:  # SIGINT/SIGTERM: last.pt at this step
                where = f"epoch {epoch + 1}/{cfg.epochs}, step {stats.stopped_at}/{len(train_b)}"
                if writes:
                    meta_s = dict(meta or {}, epoch=epoch, step=stats.stopped_at,
                                  dataset=data.name, train=cfg.to_dict())
                    if final is not None:
                        meta_s.update(test_top1=final.top1, test_top5=final.top5,
                                      test_loss=final.loss)
                    ckpt_io.save(last_path, raw, spec, history, pre, meta_s, train_state(
                        epoch, step=stats.stopped_at, steps_per_epoch=len(train_b),
                        partial=stats.partial, lr=lr))
                say(f"stopped at {where} ({interrupt.signal_name(interrupt.requested() or signal.SIGINT)})"
                    + (f"; wrote {last_path}" if writes else ""))
                raise stopped(last_path, where)
            # The unwrapped model: DDP's forward would join collectives, and ranks may hold
            # unequal numbers of test batches; BN buffers are made rank 0's first.
            dist.broadcast_buffers(raw)
            final = evaluate(raw, test_b, spec.output_key, autocast, dist)
            improved = final.top1 > best
            best = max(best, final.top1)
            rec = {"epoch": epoch + 1, "lr": lr, "train_loss": stats.loss,
                   "train_top1": stats.top1, "test_loss": final.loss, "test_top1": final.top1,
                   "test_top5": final.top5, "images_per_s": stats.images_per_s * dist.world_size,
                   "epoch_s": stats.seconds, "best_top1": best, "planned_epochs": cfg.epochs}
            if cfg.distill:
                rec["teacher_s"] = stats.teacher_seconds
            if device.type == "cuda":
                rec["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            records.append(rec)
            if writes:
                meta_e = dict(meta or {}, epoch=epoch + 1, test_top1=final.top1,
                              test_top5=final.top5, test_loss=final.loss, dataset=data.name,
                              train=cfg.to_dict())
                ckpt_io.save(last_path, raw, spec, history, pre, meta_e, train_state(epoch + 1))
                if improved:
                    ckpt_io.save(os.path.join(out_dir, "best.pt"), raw, spec, history, pre, meta_e)
                write_text(os.path.join(out_dir, "metrics.jsonl"),
                           "".join(json.dumps(r) + "\n" for r in records))
            say(f"epoch {epoch + 1}/{cfg.epochs}  lr {lr:.4g}  train loss {stats.loss:.4f} "
                f"top-1 {100 * stats.top1:.2f}%  test loss {final.loss:.4f} top-1 "
                f"{100 * final.top1:.2f}% top-5 {100 * final.top5:.2f}%  "
                f"{stats.images_per_s * dist.world_size:.0f} img/s  {stats.seconds:.1f}s"
                + (f" (teacher {stats.teacher_seconds:.1f}s)" if cfg.distill else ""))
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, raw)
            if interrupt.requested() is not None and epoch + 1 < cfg.epochs:
                # the signal came in the epoch's last step or its evaluation: last.pt is whole
                raise stopped(last_path, f"the end of epoch {epoch + 1}/{cfg.epochs}")
    sparse = None
    if regularizer is not None:
        from tp_vgg.pruning import sparsity

        sparse = sparsity.finish(regularizer, out_dir if writes else None,
                                 log if dist.is_main else (lambda s: None))
    dist.barrier()
    return FitResult(epochs=cfg.epochs, best_top1=best, final=final, records=records,
                     model=raw, out_dir=out_dir, sparsity=sparse)


def _read_records(out_dir: Optional[str]) -> List[Dict[str, Any]]:
    path = os.path.join(out_dir, "metrics.jsonl") if out_dir else None
    if not path or not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def finetune(checkpoint: str | ckpt_io.Checkpoint, data: ImageData, cfg: TrainConfig,
             out_dir: Optional[str] = None, scratch: bool = False, **kwargs: Any) -> FitResult:
    """Train a checkpoint's (pruned) architecture starting from its weights, or with
    ``scratch=True`` from a random initialization (:func:`scratch_model`: the control of
    Liu et al., "Rethinking the Value of Network Pruning", 2019)."""
    ck = ckpt_io.load_checkpoint(checkpoint) if isinstance(checkpoint, str) else checkpoint
    model = scratch_model(ck, cfg.seed) if scratch else ck.build()
    kwargs.setdefault("preprocessing", ck.preprocessing)
    kwargs.setdefault("meta", dict({k: v for k, v in ck.meta.items() if k not in ("train",)},
                                   **({"scratch": True} if scratch else {})))
    kwargs.setdefault("command", "scratch" if scratch else "finetune")
    return fit(model, ck.spec, data, cfg, out_dir, history=ck.history, **kwargs)


def scratch_model(ck: ckpt_io.Checkpoint, seed: int = 0) -> nn.Module:
    """The checkpoint's pruned architecture with fresh weights: the unpruned model built from the
    spec with its own initialization (seeded), then the pruning history replayed on it."""
    from tp_vgg.pruning.graph import replay

    seed_everything(seed)
    model = ck.build_unpruned()  # a user factory only with the consent ck was read with
    return replay(model, ck.spec, ck.history)


@dataclass
class ResumePoint:
    """What a ``last.pt`` holds to continue a run."""

    checkpoint: ckpt_io.Checkpoint
    config: TrainConfig
    data: DataConfig
    command: str

    @classmethod
    def read(cls, path: str, **consent: bool) -> "ResumePoint":
        """``consent``: trust_model_code / allow_changed_model_code (tp_vgg.load_checkpoint)."""
        ck = ckpt_io.load_checkpoint(path, **consent)
        st = ck.train_state
        if not st or "optimizer" not in st or "config" not in st:
            raise UserError(f"--resume {path!r} holds no training state; give the last.pt that "
                            "tp-vgg train or finetune wrote")
        return cls(ck, TrainConfig.from_dict(st["config"]), DataConfig.from_dict(st["data"]),
                   st.get("command", "train"))

    def replans(self, epochs: Optional[int]) -> bool:
        """Whether resuming with ``epochs`` continues the run past its own epochs (refused
        unless more than the epochs done)."""
        if epochs is None or epochs == self.config.epochs:
            return False
        done = int(self.checkpoint.train_state["epoch"])
        if not (isinstance(epochs, int) and epochs > done):
            raise UserError(f"--epochs {epochs!r} with --resume must be more than the {done} "
                            "epochs the run has done (or leave --epochs out to finish it as planned)")
        return True


def resume(point: ResumePoint, data: ImageData, out_dir: Optional[str] = None,
           runtime: Optional[Dict[str, Any]] = None, epochs: Optional[int] = None,
           **kwargs: Any) -> FitResult:
    """Continue the run of ``point`` exactly; ``runtime`` may change device/progress/compile.

    ``epochs`` above the run's own continues it for more epochs (timm's ``--resume --epochs``):
    the LR schedule becomes the one a run planned for ``epochs`` would have, from the epoch
    reached on (warm-up is not repeated; a finished cosine run climbs back to that schedule's
    value there). Data order and augmentation stay those of (seed, epoch)."""
    ck = point.checkpoint
    cfg = point.config
    if point.replans(epochs):
        cfg = dataclasses.replace(cfg, epochs=epochs)
    if runtime:
        bad = [k for k in runtime if k not in TrainConfig.RUNTIME]
        if bad:
            raise UserError(f"{bad[0]} cannot change on resume")
        cfg = dataclasses.replace(cfg, **runtime)
    model = ck.build()
    meta = {k: v for k, v in ck.meta.items()
            if k not in ("epoch", "step", "test_top1", "test_top5", "test_loss", "dataset",
                         "train")}
    if cfg.distill and "teacher" not in kwargs:
        kwargs["teacher"] = read_teacher(ck)
    return fit(model, ck.spec, data, cfg, out_dir or os.path.dirname(os.path.abspath(ck.path)),
               data_cfg=point.data, history=ck.history, preprocessing=ck.preprocessing, meta=meta,
               resume_state=ck.train_state, command=point.command, **kwargs)


def read_teacher(ck: ckpt_io.Checkpoint) -> Teacher:
    """The distillation teacher saved next to a ``last.pt`` (``train_state["teacher"]``)."""
    name = (ck.train_state or {}).get("teacher") or TEACHER_FILE
    path = os.path.join(os.path.dirname(os.path.abspath(ck.path or ".")), os.path.basename(name))
    if not os.path.exists(path):
        raise UserError(f"{ck.path!r} was distilled from a teacher, but {path!r} is missing; "
                        "resume needs the teacher.pt that the run wrote next to it")
    t = ckpt_io.load_checkpoint(path, **ck.consent())  # the consent the run was resumed with
    return Teacher(t.build(), t.spec, t.history)
