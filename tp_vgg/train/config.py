"""How to train: :class:`TrainConfig` (the recipe and the runtime settings), the optimizer and
LR-schedule registries, and mixed precision (:func:`make_amp`)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Optional

import torch

from tp_vgg.errors import UserError, naming_fields
from tp_vgg.registry import Registry
from tp_vgg.train.progress import DEFAULT_LOG_EVERY_S, PROGRESS

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
    sparsity: Optional[str] = None          # sparsity regularizer (tp_vgg.pruning.sparsity), e.g. bn-l1
    sparsity_reg: float = 1e-4
    distill: bool = False                   # knowledge distillation from fit(teacher=...)
    distill_temperature: float = 4.0
    distill_alpha: float = 0.9              # weight of the distillation term (1 - alpha: CE)
    # runtime: may differ on --resume without changing the result (except amp)
    device: Optional[str] = None            # None/auto: CUDA when present, else CPU
    amp: str = "auto"                       # auto (bf16/fp16 on CUDA, off on CPU) | bf16 | fp16 | off
    channels_last: bool = True
    compile: bool = False
    progress: str = "auto"                  # auto (bar on a TTY, else epoch lines) | bar | plain | none
    log_every_s: float = DEFAULT_LOG_EVERY_S  # plain: seconds between lines within an epoch

    RUNTIME = ("device", "amp", "channels_last", "compile", "progress", "log_every_s")

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
        with naming_fields("TrainConfig"):
            self._check()

    def _check(self) -> None:
        OPTIMIZERS.get(self.optimizer)
        SCHEDULES.get(self.schedule)
        PROGRESS.get(self.progress)
        v = self.log_every_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v)):
            raise UserError(f"--log-every {v!r} is not accepted; accepted: seconds >= 0 between "
                            "the progress lines within an epoch (--progress plain)")
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
            from tp_vgg.pruning import sparsity

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


# Fine-tuning starts from trained weights: a fifth of the optimizer's default LR, no warm-up.
FINETUNE_LR_SCALE = 0.2
FINETUNE_DEFAULTS = {"warmup_epochs": 0.0}


def finetuning(**given: Any) -> TrainConfig:
    """A :class:`TrainConfig` for fine-tuning: what is ``given``, and for the rest the fine-tuning
    defaults (``FINETUNE_LR_SCALE`` of the optimizer's LR, ``FINETUNE_DEFAULTS``) over the
    training ones."""
    cfg = TrainConfig(**given)
    if "lr" not in given:
        cfg.lr = OPTIMIZERS.get(cfg.optimizer).lr * FINETUNE_LR_SCALE
    for k, v in FINETUNE_DEFAULTS.items():
        if k not in given:
            setattr(cfg, k, v)
    return cfg


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
