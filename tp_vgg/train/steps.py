"""One training epoch: :class:`Engine` (what a step needs), :func:`train_one_epoch` (AMP via an
injected autocast context, optional GradScaler, per-step LR schedule, NaN/inf guard) and the
distillation loss."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from tp_vgg.data.batches import Batches
from tp_vgg.errors import UserError
from tp_vgg.models.zoo import select_logits
from tp_vgg.train.distributed import DistContext
from tp_vgg.train.progress import Progress


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
    if isinstance(engine.teacher, TimedTeacher):
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
