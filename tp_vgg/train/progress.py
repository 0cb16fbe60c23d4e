"""Per-step progress of training: a tqdm bar on a terminal; ``plain``: a line every
``TrainConfig.log_every_s`` seconds within an epoch (step k/total, running loss and top-1,
images/s); nothing per step otherwise (the epoch loop logs a line per epoch). Chosen by name
from ``PROGRESS`` (``TrainConfig.progress``); each entry is a factory taking the keyword options
``log``, ``every_s`` and ``world_size`` (:func:`make_progress`)."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional

from tp_vgg.registry import Registry

DEFAULT_LOG_EVERY_S = 30.0  # plain: seconds between the lines within an epoch

# --------------------------------------------------------------------------------------------
# Progress: a tqdm bar on a terminal, lines every few seconds (plain), or nothing per step
# (fit prints a line per epoch).

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


class PlainProgress(Progress):
    """A line to ``log`` at the first progress update at least ``every_s`` seconds after the
    previous line (or the epoch's start), the epoch's last step excepted (the epoch line
    follows): ``  step k/total of epoch e/E  loss L  top-1 A  N img/s  (Ts)``. The updates come
    every few steps (:attr:`tp_vgg.train.steps.Engine.check_every`); ``every_s`` 0: at each.
    Images/s are this process's times ``world_size`` (torchrun: all ranks')."""

    def __init__(self, log: Optional[Callable[[str], None]] = None,
                 every_s: float = DEFAULT_LOG_EVERY_S, world_size: int = 1) -> None:
        self.log = log or print
        self.every_s = float(every_s)
        self.world_size = max(1, int(world_size))
        self.epoch = self.epochs = self.total = self.done = 0
        self.t0 = self.last = 0.0

    def start(self, epoch: int, epochs: int, steps: int) -> None:
        self.epoch, self.epochs, self.total, self.done = epoch, epochs, steps, 0
        self.t0 = self.last = time.monotonic()

    def update(self, steps: int, **postfix: Any) -> None:
        self.done += steps
        if not postfix or self.done >= self.total:  # a resumed epoch's skipped steps; the end
            return
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        parts = [f"  step {self.done}/{self.total} of epoch {self.epoch + 1}/{self.epochs}"]
        if "loss" in postfix:
            parts.append(f"loss {postfix['loss']}")
        if "acc" in postfix:
            parts.append(f"top-1 {postfix['acc']}")
        try:
            parts.append(f"{float(postfix['img_s']) * self.world_size:.0f} img/s")
        except (KeyError, TypeError, ValueError):
            pass
        self.log("  ".join(parts) + f"  ({now - self.t0:.0f}s)")


PROGRESS: Registry[Callable[..., Progress]] = Registry("progress mode")
PROGRESS.register("auto", lambda **options: TqdmProgress() if sys.stderr.isatty() else Progress(),
                  "a tqdm bar on a terminal, else one line per epoch")
PROGRESS.register("bar", lambda **options: TqdmProgress(), "a tqdm bar")
PROGRESS.register("plain", lambda **options: PlainProgress(**options),
                  "a line every --log-every seconds within an epoch, and one per epoch")
PROGRESS.register("none", lambda **options: Progress(), "nothing")


def make_progress(name: str, log: Optional[Callable[[str], None]] = None,
                  every_s: float = DEFAULT_LOG_EVERY_S, world_size: int = 1) -> Progress:
    """The progress of mode ``name`` (``PROGRESS``)."""
    return PROGRESS.get(name)(log=log, every_s=every_s, world_size=world_size)
