"""Where and how the work runs: the one device resolver and the one place that sets the number
of CPU threads. The caller passes these settings in (``--device``, ``--threads``); they are set
once."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from tp_vgg.errors import UserError

# What ``--device`` accepts where training runs; latency measurement takes cpu and cuda only.
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(requested: Optional[str], accepted: Sequence[str] = DEVICES,
                   check: bool = True) -> torch.device:
    """``None``/``auto``: CUDA when present, else the CPU. Any other name must be a device of a
    type in ``accepted`` and, with ``check``, exist on this machine; a UserError names the
    value and what is accepted."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    listed = ", ".join(accepted)
    try:
        dev = torch.device(requested)
    except (RuntimeError, TypeError):
        raise UserError(f"--device {requested!r} is not a device; accepted: {listed}") from None
    if dev.type not in {a.split(":")[0] for a in accepted}:
        raise UserError(f"--device {requested!r} is not supported; accepted: {listed}")
    if not check:
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {requested!r} but CUDA is not available on "
                            "this machine; accepted here: cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {requested!r}: this machine has "
                            f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps")
                                    and torch.backends.mps.is_available()):
        raise UserError(f"--device {requested!r} was requested but MPS is not available; "
                        "accepted here: cpu")
    return dev


def device_name(requested: Optional[str]) -> str:
    """:func:`resolve_device` as a name, unchecked (e.g. where the pruned model will run)."""
    return str(resolve_device(requested, check=False))


def set_threads(threads: Optional[int]) -> int:
    """``torch.set_num_threads(threads)`` (None: leave as is); returns the count before."""
    before = torch.get_num_threads()
    if threads is None:
        return before
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"--threads must be a positive integer, got {threads!r}")
    torch.set_num_threads(threads)
    return before
