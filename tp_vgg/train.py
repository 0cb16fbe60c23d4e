"""The training engine: one function per stage.

* :func:`train_one_epoch` -- one pass over the training batches (AMP via an injected autocast
  context, optional GradScaler, per-step LR schedule, NaN/inf guard);
* :func:`evaluate` -- loss, top-1 and top-5 averaged over samples (summed over ranks);
* :func:`fit` -- the epoch loop: writes ``last.pt`` every epoch and ``best.pt`` on a better test
  top-1 (atomic, weights_only-loadable), ``metrics.jsonl`` and the resolved ``config.json``;
  :func:`resume` continues a run exactly from its ``last.pt``; :func:`finetune` trains a
  (pruned) checkpoint's architecture and weights.

Every epoch's randomness is a function of ``(seed, epoch, rank)``: the data order and augmentation
(:class:`tp_vgg.data.Batches`) and the global RNGs (re-seeded at each epoch start; dropout), so a run
resumed from the end of epoch ``e`` -- also after a SIGKILL mid-epoch ``e + 1`` -- repeats exactly
what the uninterrupted run did.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tp_vgg import checkpoint as ckpt_io
from tp_vgg.data import BatchTransform, Batches, DataConfig, ImageData
from tp_vgg.distributed import DistContext
from tp_vgg.errors import UserError
from tp_vgg.files import ensure_dir, write_json, write_text
from tp_vgg.models import ModelSpec, keep_mode, select_logits
from tp_vgg.preprocessing import Preprocessing
from tp_vgg.registry import Registry
from tp_vgg.runtime import resolve_device


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# A checkpoint's preprocessing, or its dict as stored.
PreprocessingLike = Union[Preprocessing, Dict[str, Any]]

# --------------------------------------------------------------------------------------------
# Configuration.

@dataclass
class TrainConfig:
    """How to train. ``None`` means "the optimizer's default" (see :meth:`resolved`).

    ``batch_size`` is per process (torchrun: the global batch is ``batch_size x world_size``).
    ``warmup_epochs`` may be fractional; the schedule is applied per step.
    """

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: Optional[float] = None              # sgd 0.05, adamw 1e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: Optional[float] = None    # sgd 5e-4, adamw 0.05
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    step_size: int = 30                     # step: decay every step_size epochs
    milestones: Optional[List[int]] = None  # multistep: default [epochs/2, 3*epochs/4]
    gamma: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: Optional[float] = None
    augment: bool = True
    seed: int = 0
    sparsity: Optional[str] = None          # sparsity regularizer (tp_vgg.sparsity), e.g. bn-l1
    sparsity_reg: float = 1e-4
    distill: bool = False                   # knowledge distillation from fit(teacher=...)
    distill_temperature: float = 4.0
    distill_alpha: float = 0.9              # weight of the distillation term (1 - alpha: CE)
    # runtime: may differ on --resume without changing the result (except amp)
    device: Optional[str] = None            # None/auto: CUDA when present, else CPU
    amp: str = "auto"                       # auto (bf16/fp16 on CUDA, off on CPU) | bf16 | fp16 | off
    channels_last: bool = True
    compile: bool = False
    progress: str = "auto"                  # auto (bar on a TTY, else plain) | bar | plain | none

    RUNTIME = ("device", "amp", "channels_last", "compile", "progress")

    def resolved(self) -> "TrainConfig":
        opt = OPTIMIZERS.get(self.optimizer)
        milestones = self.milestones
        if self.schedule == "multistep" and not milestones:
            milestones = sorted({max(1, self.epochs // 2), max(1, (3 * self.epochs) // 4)})
        return dataclasses.replace(
            self, lr=opt.lr if self.lr is None else self.lr,
            weight_decay=opt.weight_decay if self.weight_decay is None else self.weight_decay,
            milestones=list(milestones) if milestones else None)

    def validate(self) -> None:
        OPTIMIZERS.get(self.optimizer)
        SCHEDULES.get(self.schedule)
        PROGRESS.get(self.progress)
        if self.amp not in AMP_MODES:
            raise UserError(f"--amp {self.amp!r} is not accepted; accepted: {', '.join(AMP_MODES)}")
        for name in ("epochs", "batch_size", "step_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a number > 0, got {self.lr!r}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum!r}")
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise UserError("--nesterov needs --momentum > 0; pass --no-nesterov or a momentum")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not self.warmup_epochs >= 0:
            raise UserError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise UserError(f"--grad-clip must be > 0, got {self.grad_clip!r}")
        for m in self.milestones or []:
            if not isinstance(m, int) or not 0 < m <= self.epochs:
                raise UserError(f"--milestones must be epochs in 1..{self.epochs}, got {m!r}")
        if not (self.distill_temperature > 0 and math.isfinite(self.distill_temperature)):
            raise UserError(f"--distill-temperature must be a number > 0, got {self.distill_temperature!r}")
        if not 0 <= self.distill_alpha <= 1:
            raise UserError(f"--distill-alpha must be in [0, 1], got {self.distill_alpha!r}")
        if self.sparsity is not None:
            from tp_vgg import sparsity

            sparsity.check(self.sparsity, self.sparsity_reg)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class OptimizerEntry:
    build: Callable[[Any, TrainConfig], torch.optim.Optimizer]
    lr: float
    weight_decay: float


OPTIMIZERS: Registry[OptimizerEntry] = Registry("optimizer")
OPTIMIZERS.register("sgd", OptimizerEntry(
    lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum,
                                      nesterov=c.nesterov and c.momentum > 0,
                                      weight_decay=c.weight_decay),
    lr=0.05, weight_decay=5e-4), "SGD with momentum (default 0.9) and Nesterov")
OPTIMIZERS.register("adamw", OptimizerEntry(
    lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
    lr=1e-3, weight_decay=0.05), "AdamW (decoupled weight decay)")


# A schedule maps (config, steps per epoch) to the LR multiplier of a step after warm-up.
def _cosine(c: TrainConfig, spe: int) -> Callable[[int], float]:
    total, warm = c.epochs * spe, int(round(c.warmup_epochs * spe))
    return lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, total - warm))))


def _step(c: TrainConfig, spe: int) -> Callable[[int], float]:
    return lambda s: c.gamma ** ((s // spe) // c.step_size)


def _multistep(c: TrainConfig, spe: int) -> Callable[[int], float]:
    ms = c.milestones or []
    return lambda s: c.gamma ** sum(1 for m in ms if s // spe >= m)


SCHEDULES: Registry[Callable[[TrainConfig, int], Callable[[int], float]]] = Registry("schedule")
SCHEDULES.register("cosine", _cosine, "cosine decay to 0 after warm-up, per step")
SCHEDULES.register("step", _step, "x gamma every --step-size epochs")
SCHEDULES.register("multistep", _multistep, "x gamma at each of --milestones (epochs)")
SCHEDULES.register("constant", lambda c, spe: (lambda s: 1.0), "constant after warm-up")


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_epochs``, then the schedule; one call per optimizer step."""
    after = SCHEDULES.get(cfg.schedule)(cfg, steps_per_epoch)
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))

    def f(step: int) -> float:
        return (step + 1) / warm if step < warm else after(step)
    return f


AMP_MODES = ("auto", "bf16", "fp16", "off")


def make_amp(device: torch.device, mode: str):
    """``(autocast_factory, scaler_or_None, resolved_mode)``: autocast on CUDA only; bf16 where
    supported, else fp16 with a GradScaler."""
    if mode not in AMP_MODES:
        raise UserError(f"--amp {mode!r} is not accepted; accepted: {', '.join(AMP_MODES)}")
    if device.type != "cuda":
        if mode in ("bf16", "fp16"):
            raise UserError(f"--amp {mode} needs a CUDA device (training on {device}); use --amp off")
        return contextlib.nullcontext, None, "off"
    if mode == "off":
        return contextlib.nullcontext, None, "off"
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if mode == "fp16" else None
    return partial(torch.autocast, "cuda", dtype=dtype), scaler, mode


# --------------------------------------------------------------------------------------------
# Progress: a tqdm bar on a terminal, nothing per step otherwise (fit prints a line per epoch).

class Progress:
    """Per-step progress; the base class shows nothing."""

    def start(self, epoch: int, epochs: int, steps: int) -> None: ...

    def update(self, steps: int, **postfix: Any) -> None: ...

    def close(self) -> None: ...


class TqdmProgress(Progress):
    def __init__(self) -> None:
        self.bar = None

    def start(self, epoch: int, epochs: int, steps: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                        dynamic_ncols=True, file=sys.stderr)

    def update(self, steps: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


PROGRESS: Registry[Callable[[], Progress]] = Registry("progress mode")
PROGRESS.register("auto", lambda: TqdmProgress() if sys.stderr.isatty() else Progress())
PROGRESS.register("bar", TqdmProgress)
PROGRESS.register("plain", Progress)
PROGRESS.register("none", Progress)


# --------------------------------------------------------------------------------------------
# One epoch, evaluation.

@dataclass
class Engine:
    """What one training step needs. ``model`` may be DDP-wrapped or compiled."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None
    criterion: nn.Module = field(default_factory=nn.CrossEntropyLoss)
    autocast: Callable[[], Any] = contextlib.nullcontext
    scaler: Optional[torch.amp.GradScaler] = None
    grad_clip: Optional[float] = None
    output_key: Optional[str] = None
    dist: DistContext = field(default_factory=DistContext)
    check_every: int = 10   # steps between NaN checks / progress updates (each one syncs)
    regularize: Optional[Callable[[], None]] = None  # adds to the gradients (sparsity training)
    after_step: Optional[Callable[[], None]] = None  # after each optimizer step (keep zeros)
    teacher: Optional[nn.Module] = None  # frozen, returns logits: the loss becomes distill_loss
    distill_temperature: float = 4.0
    distill_alpha: float = 0.9

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(loss, logits)`` of one batch, inside the caller's autocast."""
        logits = select_logits(self.model(x), self.output_key)
        if self.teacher is None:
            return self.criterion(logits, y), logits
        with torch.no_grad():
            t_logits = self.teacher(x)
        return distill_loss(logits, t_logits, y, self.criterion, self.distill_temperature,
                            self.distill_alpha), logits


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                 criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 temperature: float, alpha: float) -> torch.Tensor:
    """Knowledge distillation (Hinton et al., 2015)::

        (1 - alpha) * criterion(student, target) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))

    KL is averaged over the batch; ``T^2`` keeps the soft term's gradients on the scale of the
    hard term's. Computed in float32 under autocast."""
    t = float(temperature)
    soft = F.kl_div(F.log_softmax(student.float() / t, dim=1), F.log_softmax(teacher.float() / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    if alpha >= 1:
        return soft
    return (1 - alpha) * criterion(student, target) + alpha * soft


class _TeacherClock:
    """Time spent in the teacher's forward: CUDA events on a GPU (no sync per step), else a clock."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.events: List[Tuple[Any, Any]] = []
        self.seconds = 0.0

    @contextlib.contextmanager
    def __call__(self):
        if self.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            yield
            b.record()
            self.events.append((a, b))
        else:
            t0 = time.perf_counter()
            yield
            self.seconds += time.perf_counter() - t0

    def total(self) -> float:
        if self.events:
            torch.cuda.synchronize()
            self.seconds += sum(a.elapsed_time(b) for a, b in self.events) / 1000.0
            self.events = []
        return self.seconds


class _TimedTeacher(nn.Module):
    """The teacher's logits, timed by ``clock``; eval mode always."""

    def __init__(self, teacher: nn.Module, output_key: Optional[str]) -> None:
        super().__init__()
        self.teacher, self.output_key = teacher, output_key
        self.clock: Optional[_TeacherClock] = None

    def train(self, mode: bool = True) -> "_TimedTeacher":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.clock() if self.clock is not None else contextlib.nullcontext()
        with ctx:
            return select_logits(self.teacher(x), self.output_key)


@dataclass
class EpochStats:
    loss: float
    top1: float
    images: int
    seconds: float
    teacher_seconds: float = 0.0   # of ``seconds``, in the teacher's forward (distillation)

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def train_one_epoch(engine: Engine, batches: Batches, epoch: int = 0,
                    progress: Optional[Progress] = None, epochs: Optional[int] = None) -> EpochStats:
    """One pass over ``batches``; loss and top-1 averaged over the samples of all ranks."""
    model, opt, scaler = engine.model, engine.optimizer, engine.scaler
    progress = progress or Progress()
    model.train()
    dev = batches.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    seen = 0
    last_checked = 0
    progress.start(epoch, epochs or epoch + 1, len(batches))
    clock = None
    if isinstance(engine.teacher, _TimedTeacher):
        clock = engine.teacher.clock = _TeacherClock(dev)
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(batches, 1):
        with engine.autocast():
            loss, logits = engine.loss(x, y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if engine.grad_clip or engine.regularize:
                scaler.unscale_(opt)
            if engine.regularize:
                engine.regularize()
            if engine.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), engine.grad_clip)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            if engine.regularize:
                engine.regularize()
            if engine.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), engine.grad_clip)
            opt.step()
        if engine.after_step is not None:
            engine.after_step()
        if engine.scheduler is not None:
            engine.scheduler.step()
        n = y.shape[0]
        seen += n
        loss_sum += loss.detach().double() * n
        correct += (logits.detach().argmax(1) == y).sum()
        if step % engine.check_every == 0 or step == len(batches):
            _check_finite(engine, loss_sum, epoch, step)
            done = step - last_checked
            last_checked = step
            progress.update(done, loss=f"{loss_sum.item() / seen:.4f}",
                            acc=f"{100 * correct.item() / seen:.1f}%",
                            img_s=f"{seen / (time.perf_counter() - t0):.0f}")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    progress.close()
    totals = engine.dist.all_reduce_sum(
        torch.stack([loss_sum, correct.double(), torch.tensor(float(seen), dtype=torch.float64, device=dev)]))
    n_all = max(totals[2].item(), 1.0)
    return EpochStats(loss=totals[0].item() / n_all, top1=totals[1].item() / n_all,
                      images=int(totals[2].item()), seconds=seconds,
                      teacher_seconds=clock.total() if clock is not None else 0.0)


def _check_finite(engine: Engine, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
    bad = (~torch.isfinite(loss_sum)).to(torch.int64).reshape(1)
    engine.dist.all_reduce_max(bad)
    if bad.item():
        lr = engine.optimizer.param_groups[0]["lr"]
        raise TrainingDiverged(f"the training loss became NaN or infinite at epoch {epoch + 1}, "
                               f"by step {step} (lr {lr:.4g}); try a lower --lr, --warmup-epochs "
                               "or --grad-clip")


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    images: int

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Batches, output_key: Optional[str] = None,
             autocast: Callable[[], Any] = contextlib.nullcontext,
             dist: Optional[DistContext] = None, num_classes: Optional[int] = None) -> EvalResult:
    """Cross-entropy, top-1 and top-5 (top-k for k = min(5, classes)), each averaged over
    samples -- summed over batches and ranks, then divided by the number of samples."""
    dist = dist or DistContext()
    training = model.training
    model.eval()
    dev = batches.device
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, top1, top5, count
    try:
        for x, y in batches:
            with autocast():
                logits = select_logits(model(x), output_key)
            logits = logits.float()
            if num_classes is not None and logits.shape[-1] != num_classes:
                raise UserError(f"the model has {logits.shape[-1]} outputs but the data have "
                                f"{num_classes} classes")
            k = min(5, logits.shape[-1])
            top = logits.topk(k, dim=1).indices
            hit = top == y[:, None]
            sums[0] += nn.functional.cross_entropy(logits, y, reduction="sum").double()
            sums[1] += hit[:, 0].sum()
            sums[2] += hit.any(1).sum()
            sums[3] += y.shape[0]
    finally:
        model.train(training)
    dist.all_reduce_sum(sums)
    n = max(sums[3].item(), 1.0)
    return EvalResult(loss=sums[0].item() / n, top1=sums[1].item() / n, top5=sums[2].item() / n,
                      images=int(sums[3].item()))


def evaluate_on(model: nn.Module, spec: ModelSpec, data: ImageData, preprocessing: PreprocessingLike,
                split: str = "test", batch_size: int = 256,
                device: Optional[str] = None) -> EvalResult:
    """Evaluate ``model`` on one split of ``data`` with the given (checkpoint's) preprocessing."""
    dev = resolve_device(device)
    pre = resolve_preprocessing(data, spec, preprocessing)
    check_model_fits(model.to(dev), spec, data)
    images, labels = data.split(split)
    batches = Batches(images, labels, batch_size,
                      BatchTransform(pre.mean, pre.std, pre.input_size), dev)
    autocast, _, _ = make_amp(dev, "auto")
    return evaluate(model, batches, spec.output_key, autocast)


def top1(model: nn.Module, spec: ModelSpec, data: ImageData, preprocessing: PreprocessingLike,
         device: Optional[str] = None, batch_size: int = 256) -> float:
    """Test top-1 of ``model`` (:func:`evaluate_on`); the model then goes back to the device it
    was on, so that pruning continues there."""
    home = next(model.parameters()).device
    result = evaluate_on(model, spec, data, preprocessing, batch_size=batch_size, device=device).top1
    model.to(home, memory_format=torch.contiguous_format)
    return result


# --------------------------------------------------------------------------------------------
# BatchNorm recalibration.

def batchnorms(model: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that keep running statistics (used in eval mode)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Batches, num_batches: int,
                   autocast: Callable[[], Any] = contextlib.nullcontext,
                   dist: Optional[DistContext] = None) -> int:
    """Re-estimate the BatchNorm running statistics of ``model`` from ``num_batches`` batches.

    After pruning, the kept channels' inputs changed (their input channels were removed), so the
    stored means and variances no longer describe them; re-estimating them (EagleEye's "adaptive
    BN") recovers much of the accuracy with no training. Each BN layer's statistics are reset and
    averaged cumulatively (``momentum=None``) over the batches, with only the BN layers in train
    mode -- the forward is the eval-mode one (no dropout), and no weight changes. Under torchrun
    each rank uses its shard and the statistics are averaged over ranks. The caller's train/eval
    mode and the layers' momentum are restored. Returns the number of layers re-estimated (0 for
    a model without BatchNorm running statistics, which is left unchanged)."""
    bns = batchnorms(model)
    if not bns or num_batches <= 0:
        return 0
    momenta = [m.momentum for m in bns]
    with keep_mode(model):
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        try:
            for i, (x, _) in enumerate(batches):
                if i >= num_batches:
                    break
                with autocast():
                    model(x)
        finally:
            for m, mom in zip(bns, momenta):
                m.momentum = mom
    dist = dist or DistContext()
    if dist.enabled:
        for m in bns:
            for b in (m.running_mean, m.running_var):
                if b is not None:
                    dist.all_reduce_sum(b)
                    b.div_(dist.world_size)
    return len(bns)


def recalibrate_on(model: nn.Module, spec: ModelSpec, data: ImageData, preprocessing: PreprocessingLike,
                   num_batches: int, batch_size: int = 64, device: Optional[str] = None,
                   seed: int = 0, channels_last: bool = True,
                   dist: Optional[DistContext] = None) -> int:
    """:func:`recalibrate_bn` on ``num_batches`` shuffled, un-augmented batches of ``data``'s
    training split (seeded by ``seed``), with ``preprocessing`` (a checkpoint's or the data's)."""
    dist = dist or DistContext()
    dev = dist.device(device)
    pre = resolve_preprocessing(data, spec, preprocessing)
    model.to(dev)
    batches = Batches(data.train_images, data.train_labels, batch_size,
                      BatchTransform(pre.mean, pre.std, pre.input_size, channels_last), dev,
                      train=True, augment=False, seed=seed, rank=dist.rank,
                      world_size=dist.world_size)
    autocast, _, _ = make_amp(dev, "auto")
    return recalibrate_bn(model, batches, num_batches, autocast, dist)


# --------------------------------------------------------------------------------------------
# Preprocessing, seeding, RNG state.

def resolve_preprocessing(data: ImageData, spec: ModelSpec,
                          stored: Optional[PreprocessingLike] = None) -> Preprocessing:
    """The preprocessing to use: ``stored`` (a checkpoint's) where it has mean/std, else the
    data's statistics; input size and channels from the model."""
    pre = data.preprocessing()
    stored = Preprocessing.of(stored)
    if stored.normalized:
        pre.mean, pre.std = list(stored.mean), list(stored.std)
    s = spec.resolved()
    pre.input_size, pre.in_channels = s.input_size, s.in_channels
    if len(pre.mean) != data.in_channels:
        raise UserError(f"the stored preprocessing has {len(pre.mean)} channel means but "
                        f"{data.name} images have {data.in_channels} channels")
    return pre


def check_model_fits(model: nn.Module, spec: ModelSpec, data: ImageData) -> None:
    """The model takes the data's channels and has one output per class."""
    s = spec.resolved()
    if s.in_channels != data.in_channels:
        raise UserError(f"the model takes {s.in_channels}-channel input but {data.name} images have "
                        f"{data.in_channels} channels")
    dev = next(model.parameters()).device
    with keep_mode(model), torch.no_grad():
        model.eval()
        out = select_logits(model(s.example_input(batch=2, device=dev)), s.output_key)
    if out.shape[-1] != data.num_classes:
        raise UserError(f"the model has {out.shape[-1]} outputs but {data.name} has "
                        f"{data.num_classes} classes; pass --num-classes {data.num_classes} "
                        "(train) or use a checkpoint trained on these classes")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 65_537 + rank * 257 + 1) % 2**62


def rng_state() -> Dict[str, Any]:
    """torch, CUDA, numpy and Python RNG states as tensors and plain values (weights_only-safe)."""
    keys, pos, has_gauss, cached = np.random.get_state()[1:]
    version, pstate, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(pstate, dtype=torch.int64),
                   "gauss": gauss},
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


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
    ``resume_state`` is a ``last.pt``'s ``train_state``: training continues after its epoch.

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
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    check_model_fits(model, spec, data)
    timed_teacher = None
    if cfg.distill:
        if teacher is None:
            raise UserError("distillation (--distill, TrainConfig.distill) needs a teacher: the "
                            "model before pruning (prune --distill) or --teacher CKPT")
        teacher.model.to(device, memory_format=memory_format).eval().requires_grad_(False)
        check_model_fits(teacher.model, teacher.spec, data)
        timed_teacher = _TimedTeacher(teacher.model, teacher.spec.output_key)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    transform = BatchTransform(pre.mean, pre.std, pre.input_size, cfg.channels_last)
    train_b = Batches(data.train_images, data.train_labels, cfg.batch_size, transform, device,
                      train=True, pad=data.pad, flip=data.flip, augment=cfg.augment, seed=cfg.seed,
                      rank=dist.rank, world_size=dist.world_size)
    test_b = Batches(data.test_images, data.test_labels, cfg.batch_size, transform, device,
                     rank=dist.rank, world_size=dist.world_size)
    optimizer = OPTIMIZERS.get(cfg.optimizer).build(model.parameters(), cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, len(train_b)))

    start_epoch, best, records = 0, -1.0, []
    if resume_state is not None:
        start_epoch = int(resume_state["epoch"])
        best = float(resume_state.get("best_top1", -1.0))
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        if resume_state.get("rng"):
            set_rng_state(resume_state["rng"])
        records = [r for r in _read_records(out_dir) if r.get("epoch", 0) <= start_epoch]

    regularizer = None
    if cfg.sparsity:
        from tp_vgg.sparsity import Regularizer

        regularizer = Regularizer(model, spec, cfg.sparsity, cfg.sparsity_reg)
    if after_step is None and (meta or {}).get("unstructured"):
        from tp_vgg.unstructured import ZeroMask

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
    progress = Progress() if quiet else PROGRESS.get(cfg.progress)()
    final: Optional[EvalResult] = None
    for epoch in range(start_epoch, cfg.epochs):
        seed_everything(_epoch_seed(cfg.seed, epoch, dist.rank))
        train_b.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(engine, train_b, epoch, progress, cfg.epochs)
        # The unwrapped model: DDP's forward would join collectives, and ranks may hold unequal
        # numbers of test batches; BN buffers are made rank 0's first.
        dist.broadcast_buffers(raw)
        final = evaluate(raw, test_b, spec.output_key, autocast, dist)
        improved = final.top1 > best
        best = max(best, final.top1)
        rec = {"epoch": epoch + 1, "lr": lr, "train_loss": stats.loss, "train_top1": stats.top1,
               "test_loss": final.loss, "test_top1": final.top1, "test_top5": final.top5,
               "images_per_s": stats.images_per_s * dist.world_size, "epoch_s": stats.seconds,
               "best_top1": best}
        if cfg.distill:
            rec["teacher_s"] = stats.teacher_seconds
        if device.type == "cuda":
            rec["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        records.append(rec)
        if writes:
            meta_e = dict(meta or {}, epoch=epoch + 1, test_top1=final.top1, test_top5=final.top5,
                          test_loss=final.loss, dataset=data.name, train=cfg.to_dict())
            state = {"epoch": epoch + 1, "best_top1": best, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict() if scaler is not None else {},
                     "rng": rng_state(), "config": cfg.to_dict(),
                     "data": dataclasses.asdict(data_cfg) if data_cfg else {"name": data.name},
                     "command": command}
            if cfg.distill:
                state["teacher"] = TEACHER_FILE
            ckpt_io.save(os.path.join(out_dir, "last.pt"), raw, spec, history, pre, meta_e, state)
            if improved:
                ckpt_io.save(os.path.join(out_dir, "best.pt"), raw, spec, history, pre, meta_e)
            write_text(os.path.join(out_dir, "metrics.jsonl"),
                       "".join(json.dumps(r) + "\n" for r in records))
        say(f"epoch {epoch + 1}/{cfg.epochs}  lr {lr:.4g}  train loss {stats.loss:.4f} "
            f"top-1 {100 * stats.top1:.2f}%  test loss {final.loss:.4f} top-1 {100 * final.top1:.2f}% "
            f"top-5 {100 * final.top5:.2f}%  {stats.images_per_s * dist.world_size:.0f} img/s  "
            f"{stats.seconds:.1f}s" + (f" (teacher {stats.teacher_seconds:.1f}s)" if cfg.distill else ""))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, raw)
    if regularizer is not None:
        from tp_vgg import sparsity

        sparsity.finish(regularizer, out_dir if writes else None,
                        log if dist.is_main else (lambda s: None))
    dist.barrier()
    return FitResult(epochs=cfg.epochs, best_top1=best, final=final, records=records,
                     model=raw, out_dir=out_dir)


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
    from tp_vgg.pruning import replay

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
        return cls(ck, TrainConfig.from_dict(st["config"]), DataConfig(**st["data"]),
                   st.get("command", "train"))


def resume(point: ResumePoint, data: ImageData, out_dir: Optional[str] = None,
           runtime: Optional[Dict[str, Any]] = None, **kwargs: Any) -> FitResult:
    """Continue the run of ``point`` exactly; ``runtime`` may change device/progress/compile."""
    ck = point.checkpoint
    cfg = point.config
    if runtime:
        bad = [k for k in runtime if k not in TrainConfig.RUNTIME]
        if bad:
            raise UserError(f"{bad[0]} cannot change on resume")
        cfg = dataclasses.replace(cfg, **runtime)
    model = ck.build()
    meta = {k: v for k, v in ck.meta.items()
            if k not in ("epoch", "test_top1", "test_top5", "test_loss", "dataset", "train")}
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
