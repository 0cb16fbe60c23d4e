"""Ctrl-C (SIGINT) and SIGTERM, honoured at every moment without leaving half a result.

The command line :func:`install`\\s the handler before its heavy imports. Its mode says what a
signal does:

* ``"exit"`` (imports and argument parsing: nothing is written yet): one line, then the process
  exits at once with 128 + the signal (130 for SIGINT, 143 for SIGTERM), no traceback -- also
  inside an import that would swallow a ``KeyboardInterrupt`` (torch-pruning's ``try: import
  timm / except:``);
* ``"raise"`` (the command runs: data loading, pruning, latency): :class:`Interrupted` is raised
  where the program is; the request is also remembered, so that :func:`check` raises it again at
  the next stage boundary should a library have swallowed it;
* ``"defer"`` (inside :func:`deferred`: the training steps): the first signal only sets the
  request; the step loop sees :func:`requested` after the current step, writes a resumable
  ``last.pt`` and raises :class:`Interrupted`. A second signal raises at once.

Without :func:`install` (the library used from Python), :func:`deferred` installs the deferring
handler for SIGINT for its duration (main thread only) and restores the previous one.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Resume:
    """How to continue an interrupted run: ``tp-vgg COMMAND --resume PATH`` (``command`` train,
    finetune or prune), with ``--trust-model-code`` when the model is a user factory."""

    command: str
    path: str
    trust_model_code: bool = False
    allow_changed_model_code: bool = False


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised at a safe point. ``kept``: the resumable checkpoint written
    (``where`` says where the run stopped); ``resume``: how to continue (None: start again)."""

    def __init__(self, signum: int = signal.SIGINT, kept: Optional[str] = None,
                 where: str = "", resume: Optional[Resume] = None) -> None:
        super().__init__(signal_name(signum))
        self.signum, self.kept, self.where, self.resume = signum, kept, where, resume

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def exit_code(signum: Optional[int]) -> int:
    """128 + the signal: 130 for SIGINT (also a plain KeyboardInterrupt), 143 for SIGTERM."""
    return 128 + int(signum or signal.SIGINT)


class _State:
    installed = False
    mode = "raise"
    requested: Optional[int] = None
    message = "tp-vgg: interrupted"


_state = _State()


def _handler(signum: int, frame) -> None:  # noqa: ARG001
    first = _state.requested is None
    if first:
        _state.requested = signum
    if _state.mode == "exit":
        try:
            sys.stderr.write(_state.message + "\n")
            sys.stderr.flush()
        finally:
            os._exit(exit_code(signum))
    if _state.mode == "defer" and first:
        return  # the step loop stops after this step
    raise Interrupted(signum)


def install(mode: str = "exit", message: str = "tp-vgg: interrupted") -> None:
    """Handle SIGINT and SIGTERM from now on (main thread only; the command line)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _state.mode, _state.message = mode, message
    for s in SIGNALS:
        signal.signal(s, _handler)
    _state.installed = True


def installed() -> bool:
    """Whether :func:`install` took over the signals (the command line)."""
    return _state.installed


def set_mode(mode: str) -> None:
    """``"exit"``, ``"raise"`` or ``"defer"`` (see the module docstring)."""
    if mode not in ("exit", "raise", "defer"):
        raise ValueError(mode)
    _state.mode = mode


def requested() -> Optional[int]:
    """The signal received and not yet acted on, or None."""
    return _state.requested


def check() -> None:
    """Raise :class:`Interrupted` if a signal was received (a stage boundary)."""
    if _state.requested is not None:
        raise Interrupted(_state.requested)


def reset() -> None:
    """Forget a received signal (tests; a caller that handled it)."""
    _state.requested = None


@contextmanager
def deferred() -> Iterator[None]:
    """Signals only set :func:`requested` inside (the first one; a second raises at once)."""
    if _state.installed:
        old = _state.mode
        _state.mode = "defer"
        try:
            yield
        finally:
            _state.mode = old
        return
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # someone else handles SIGINT
        return
    old_mode = _state.mode
    _state.mode = "defer"
    signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _state.mode = old_mode
        _state.requested = None  # acted on: the Interrupted raised inside
