"""One training epoch: :class:`Engine` (what a step needs), :func:`train_one_epoch` (AMP via an
injected autocast context, optional GradScaler, per-step LR schedule, NaN/inf guard, a stop after
the current step on SIGINT/SIGTERM, and the continuation of an epoch stopped so) and the
distillation loss."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from tp_vgg.data.batches import Batches
from tp_vgg.errors import UserError
from tp_vgg.models.zoo import select_logits
from tp_vgg.train.distributed import DistContext
from tp_vgg.train import interrupt
from tp_vgg.train.progress import Progress
from tp_vgg.train.rng import set_rng_state


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""



# --------------------------------------------------------------------------------------------
# One epoch.

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


class TimedTeacher(nn.Module):
    """The teacher's logits, timed by ``clock``; eval mode always."""

    def __init__(self, teacher: nn.Module, output_key: Optional[str]) -> None:
        super().__init__()
        self.teacher, self.output_key = teacher, output_key
        self.clock: Optional[_TeacherClock] = None

    def train(self, mode: bool = True) -> "TimedTeacher":
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
    # set when a signal stopped the epoch after step ``stopped_at`` (< the epoch's steps):
    # ``partial`` holds the running sums to continue it (:func:`train_one_epoch`'s ``partial``)
    stopped_at: Optional[int] = None
    partial: Optional[Dict[str, float]] = None

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def train_one_epoch(engine: Engine, batches: Batches, epoch: int = 0,
                    progress: Optional[Progress] = None, epochs: Optional[int] = None, *,
                    skip: int = 0, partial: Optional[Dict[str, float]] = None,
                    rng: Optional[Dict[str, Any]] = None) -> EpochStats:
    """One pass over ``batches``; loss and top-1 averaged over the samples of all ranks.

    After each step but the last, a SIGINT/SIGTERM received (:func:`tp_vgg.train.interrupt.requested`;
    under torchrun agreed by all ranks every ``check_every`` steps) ends the epoch early: the
    result has ``stopped_at`` (the steps done) and ``partial`` (the running sums, this rank's).
    ``skip``, ``partial`` and ``rng`` continue such an epoch exactly: the first ``skip`` batches
    are drawn (the same order and augmentation) but not trained on, then the global RNGs are
    set to ``rng`` (their state when the epoch stopped) and the sums start from ``partial``."""
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
    if isinstance(engine.teacher, TimedTeacher):
        clock = engine.teacher.clock = _TeacherClock(dev)
    n_steps = len(batches)
    it = iter(batches)
    if skip:
        for _ in range(skip):  # the same batches in the same order; not trained on
            next(it)
        if rng:
            set_rng_state(rng)
        part = partial or {}
        loss_sum += float(part.get("loss_sum", 0.0))
        correct += int(part.get("correct", 0))
        seen = int(part.get("seen", 0))
        last_checked = skip
        progress.update(skip)
    t0 = time.perf_counter() - float((partial or {}).get("seconds", 0.0) if skip else 0.0)
    for step, (x, y) in enumerate(it, skip + 1):
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
        if step < n_steps and _stop_requested(engine, step, dev):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            progress.close()
            part = {"loss_sum": loss_sum.item(), "correct": int(correct.item()), "seen": seen,
                    "seconds": time.perf_counter() - t0}
            return EpochStats(loss=part["loss_sum"] / max(seen, 1),
                              top1=part["correct"] / max(seen, 1), images=seen,
                              seconds=part["seconds"], stopped_at=step, partial=part)
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


def _stop_requested(engine: Engine, step: int, device: torch.device) -> bool:
    """Whether to stop after ``step``: a signal was received (one process), or by any rank
    (torchrun: asked every ``check_every`` steps, so that all ranks stop at the same step)."""
    if not engine.dist.enabled:
        return interrupt.requested() is not None
    if step % engine.check_every:
        return False
    flag = torch.tensor([1 if interrupt.requested() is not None else 0], dtype=torch.int64,
                        device=device)
    engine.dist.all_reduce_max(flag)
    return bool(flag.item())


def _check_finite(engine: Engine, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
    bad = (~torch.isfinite(loss_sum)).to(torch.int64).reshape(1)
    engine.dist.all_reduce_max(bad)
    if bad.item():
        lr = engine.optimizer.param_groups[0]["lr"]
        raise TrainingDiverged(f"the training loss became NaN or infinite at epoch {epoch + 1}, "
                               f"by step {step} (lr {lr:.4g}); try a lower --lr or --grad-clip")
