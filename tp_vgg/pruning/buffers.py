"""Per-channel registered buffers of the user's own modules, pruned with their channels.

torch-pruning traces through autograd, and a buffer (``register_buffer("scale", torch.ones(1,
C, 1, 1))`` used as ``x * self.scale``) is not in the autograd graph: it keeps its C entries
while the channels it multiplies lose some, and the forward fails. A folded normalization, a
frozen per-channel scale or shift, the running statistics of the user's own norm layer: all are
held so.

While :func:`as_parameters` is open, each such buffer is a parameter of its module, so that
torch-pruning sees it (as a parameter outside its known layers, cut along its only dimension
longer than 1 -- torch-pruning's own rule, which is the channel dimension for the shapes taken
here); on leaving it is a buffer again, under the same name, persistent or not as before, in
its place among the module's buffers. The masked-equivalence check zeroes it like any parameter
and proves the result.

Taken: floating-point buffers of shape ``(C,)``, ``(1, C)`` or ``(1, C, 1, 1)`` (C > 1) held by
modules torch-pruning has no pruner for (a BatchNorm's running statistics are its own).
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Tuple

import torch
import torch.nn as nn

_KNOWN = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
          nn.modules.instancenorm._InstanceNorm, nn.Linear, nn.PReLU, nn.Embedding, nn.RNNBase,
          nn.MultiheadAttention)
_SHAPES = ((-1,), (1, -1), (1, -1, 1, 1))


def _per_channel(t: torch.Tensor) -> bool:
    if t is None or not t.is_floating_point():
        return False
    shape = tuple(t.shape)
    return any(len(shape) == len(s) and all(a == b or (b == -1 and a > 1)
                                            for a, b in zip(shape, s)) for s in _SHAPES)


def candidates(model: nn.Module) -> List[Tuple[str, nn.Module, str]]:
    """``(full name, module, buffer name)`` of every per-channel buffer taken (see above)."""
    return [(f"{mname}.{b}" if mname else b, m, b)
            for mname, m in model.named_modules() if not isinstance(m, _KNOWN)
            for b, t in m._buffers.items() if _per_channel(t)]


class Taken:
    """The buffers :func:`as_parameters` made parameters: name -> shape before pruning."""

    def __init__(self, shapes: Dict[str, tuple]):
        self.shapes = shapes

    def notes(self, model: nn.Module) -> List[str]:
        cut = [(n, s, tuple(model.get_buffer(n).shape)) for n, s in self.shapes.items()
               if tuple(model.get_buffer(n).shape) != s]
        if not cut:
            return []
        shown = ", ".join(f"{n!r} ({_x(a)} -> {_x(b)})" for n, a, b in cut[:4])
        more = f" and {len(cut) - 4} more" if len(cut) > 4 else ""
        return [f"per-channel buffers pruned with their channels: {shown}{more}"]


def _x(shape: tuple) -> str:
    return "x".join(str(int(v)) for v in shape)


@contextlib.contextmanager
def as_parameters(model: nn.Module) -> Iterator[Taken]:
    """While open, every per-channel buffer (:func:`candidates`) is a parameter of its module
    (requiring grad, for autograd to trace it); a buffer again on leaving, in its place."""
    taken = candidates(model)
    orders = {id(m): list(m._buffers) for _, m, _ in taken}
    for _, m, b in taken:
        t = m._buffers.pop(b)
        m._parameters[b] = nn.Parameter(t.detach().clone(), requires_grad=True)
    try:
        yield Taken({full: tuple(m._parameters[b].shape) for full, m, b in taken})
    finally:
        modules = {id(m): m for _, m, _ in taken}
        for _, m, b in taken:
            p = m._parameters.pop(b, None)
            if p is not None:
                m._buffers[b] = p.detach().clone()
        for key, order in orders.items():
            held = modules[key]._buffers
            ordered = [(k, held[k]) for k in order if k in held]
            held.clear()
            held.update(ordered)


def names(model: nn.Module) -> List[str]:
    """The full names of the buffers :func:`as_parameters` would take."""
    return [full for full, _, _ in candidates(model)]
