"""Per-step progress of training: a tqdm bar on a terminal, nothing per step otherwise (the epoch
loop logs a line per epoch). Chosen by name from ``PROGRESS`` (``TrainConfig.progress``)."""

from __future__ import annotations

import sys
from typing import Any, Callable

from tp_vgg.registry import Registry

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
