"""What broke after pruning, confirmed before it is named.

A failure after pruning has a handful of known causes: a size written as a number in
``view``/``reshape``, a ``torch.cat`` or flatten whose columns torch-pruning mapped wrongly, a
parameter used outside any module whose channel dimension torch-pruning guessed, a reduction or
index over the channel dimension. Each is checked against what the model really did rather than
guessed from the error text: :class:`OpLog` records the tensor operations of a forward pass (the
calls that reshape, concatenate, reduce or index, each with the line of the user's ``forward``
that made it, its input shapes and the sizes it asked for) and which call raised. The pass before
pruning (taken by :class:`tp_vgg.pruning.checks.MaskedOriginal`) is the reference: a ``view``
that asks for the same size at the same line after pruning, while its input shrank, has a size
written as a number.

The functions here return a confirmed :class:`Cause` or None; the message built from None says
that no known cause was confirmed, and suggests nothing.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.overrides import TorchFunctionMode

_RESHAPES = frozenset({"view", "reshape", "flatten"})
_REDUCTIONS = frozenset({"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm",
                         "logsumexp", "softmax", "log_softmax", "prod", "argmax", "argmin",
                         "median", "nansum", "nanmean", "std_mean", "var_mean"})
_WATCH = _RESHAPES | _REDUCTIONS | {"cat", "concat", "concatenate", "__getitem__", "linear",
                                    "matmul", "addmm", "mm"}
_LIBRARY_DIRS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (torch, tp))
_OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # tp_vgg/
_STDLIB = os.path.dirname(os.path.abspath(os.__file__)) + os.sep


def _library(path: str) -> bool:
    path = os.path.abspath(path)
    return path.startswith(_LIBRARY_DIRS + (_OURS,)) or (
        path.startswith(_STDLIB) and "-packages" + os.sep not in path)


def user_site() -> Optional[Tuple[str, int, str]]:
    """(file, line, source text) of the innermost frame of the user's code on the stack."""
    import linecache
    f = sys._getframe(1)
    while f is not None:
        path = f.f_code.co_filename
        if not path.startswith("<") and not _library(path):
            return path, f.f_lineno, linecache.getline(path, f.f_lineno).strip()
        f = f.f_back
    return None


def user_frame(e: BaseException) -> Optional[Tuple[str, int, str]]:
    """(file, line, source text) of the innermost frame of the user's code in ``e``'s
    traceback."""
    import traceback
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith("<") and not _library(f.filename)]
    return (frames[-1].filename, frames[-1].lineno, (frames[-1].line or "").strip()) \
        if frames else None


def show_site(site: Optional[Tuple[str, int, str]]) -> str:
    if site is None:
        return "in forward"
    path, line, text = site
    try:
        rel = os.path.relpath(path)
        path = rel if not rel.startswith("..") else path
    except ValueError:
        pass
    return f"at {path}:{line} `{text}`" if text else f"at {path}:{line}"


@dataclass
class Call:
    """One recorded tensor operation."""
    name: str
    site: Optional[Tuple[str, int, str]]
    shapes: List[Tuple[int, ...]]           # the shapes of its tensor arguments, in order
    args: Tuple[Any, ...] = ()               # its non-tensor arguments (sizes, dims, indices)
    kwargs: Dict[str, Any] = field(default_factory=dict)
    params: List[str] = field(default_factory=list)  # bare parameters among its arguments
    out: Optional[Tuple[int, ...]] = None
    layer: int = 0                           # how many watched layers had run before it

    def sizes(self) -> Optional[Tuple[int, ...]]:
        """The sizes a view/reshape asked for."""
        if self.name not in ("view", "reshape") or not self.args:
            return None
        a = self.args[0] if len(self.args) == 1 and isinstance(self.args[0], (tuple, list)) \
            else self.args
        try:
            return tuple(int(v) for v in a)
        except (TypeError, ValueError):
            return None

    def dims(self) -> Optional[Sequence[int]]:
        """The dimensions a reduction runs over (None: all of them)."""
        d = self.kwargs.get("dim", self.args[0] if self.args else None)
        if d is None or isinstance(d, (int, tuple, list)):
            return None if d is None else ([d] if isinstance(d, int) else list(d))
        return None


def _plain(a: Any) -> Any:
    if isinstance(a, torch.Size):
        return tuple(int(v) for v in a)
    if isinstance(a, (tuple, list)):
        return type(a)(_plain(v) for v in a) if not any(isinstance(v, torch.Tensor) for v in a) \
            else "tensors"
    if isinstance(a, torch.Tensor):
        return "tensor"
    return a


class OpLog(TorchFunctionMode):
    """Records the watched tensor operations of forward passes run under it (see the module
    docstring): ``calls`` in order, ``failed`` the call that raised, and for each output of a
    reshape or concatenation the call that produced it (:meth:`producer`)."""

    def __init__(self, params: Optional[Dict[int, str]] = None):
        super().__init__()
        self.calls: List[Call] = []
        self.failed: Optional[Call] = None
        self.failed_from: Optional[Call] = None  # what made the failed call's first input
        self.params = params or {}
        self.layers = 0  # advanced by the caller's hooks
        self.ends: Dict[str, int] = {}  # layer name -> ``layers`` once it first ran
        self._made: Dict[int, Tuple[torch.Tensor, Call]] = {}

    def _bare(self, values) -> List[str]:
        out = []
        for a in values:
            for t in (a, getattr(a, "_base", None)):
                if isinstance(t, torch.Tensor) and id(t) in self.params:
                    out.append(self.params[id(t)])
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        flat = list(args) + list(kwargs.values())
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        if name in ("cat", "concat", "concatenate") and args and isinstance(args[0], (list, tuple)):
            tensors = [a for a in args[0] if isinstance(a, torch.Tensor)]
        bare = self._bare(tensors) if self.params else []
        call = None
        if name in _WATCH or bare:
            rest = tuple(_plain(a) for a in args if not isinstance(a, torch.Tensor))
            if name in ("cat", "concat", "concatenate"):
                rest = tuple(_plain(a) for a in args[1:])
            call = Call(name, user_site(), [tuple(t.shape) for t in tensors], rest,
                        {k: _plain(v) for k, v in kwargs.items()}, bare, layer=self.layers)
            self.calls.append(call)
        try:
            out = func(*args, **kwargs)
        except Exception:
            if self.failed is None:
                self.failed = call or Call(name, user_site(), [tuple(t.shape) for t in tensors],
                                           layer=self.layers)
                self.failed_from = self.producer(tensors[0]) if tensors else None
            raise
        if call is not None:
            if isinstance(out, torch.Tensor):
                call.out = tuple(out.shape)
                if name in _RESHAPES or name in ("cat", "concat", "concatenate"):
                    self._made[id(out)] = (out, call)  # the tensor kept: its id stays unique
        return out

    def producer(self, t: Any) -> Optional[Call]:
        """The reshape or concatenation that produced tensor ``t``, if one did."""
        got = self._made.get(id(t)) if isinstance(t, torch.Tensor) else None
        return got[1] if got is not None and got[0] is t else None

    def reshapes(self) -> Dict[Tuple[Any, int], Call]:
        """Each view/reshape call keyed by (site, occurrence at that site)."""
        seen: Dict[Any, int] = {}
        out = {}
        for c in self.calls:
            if c.name in ("view", "reshape"):
                k = seen.get(c.site, 0)
                seen[c.site] = k + 1
                out[(c.site, k)] = c
        return out


def bare_ids(model: nn.Module, names: Sequence[str]) -> Dict[int, str]:
    return {id(model.get_parameter(n)): n for n in names}


# --------------------------------------------------------------------------------------------
# Causes, each confirmed against the recorded calls.

@dataclass
class Cause:
    kind: str        # "constant-size", "concat", "flatten", "bare-parameter", "channel-op",
                     # "empty-layer"
    call: Optional[Call] = None
    detail: str = ""


def _same_call_before(call: Call, now: OpLog, before: Optional[OpLog]) -> Optional[Call]:
    if before is None:
        return None
    key = next((k for k, c in now.reshapes().items() if c is call), None)
    return before.reshapes().get(key) if key is not None else None


def constant_size(call: Optional[Call], now: OpLog, before: Optional[OpLog]) -> Optional[Cause]:
    """A view/reshape that asks for the size it asked for before pruning while its input
    shrank: a size written as a number."""
    if call is None or call.sizes() is None:
        return None
    then = _same_call_before(call, now, before)
    if then is not None and then.sizes() == call.sizes() and then.shapes[:1] != call.shapes[:1]:
        was = "x".join(map(str, then.shapes[0])) if then.shapes else "?"
        got = "x".join(map(str, call.shapes[0])) if call.shapes else "?"
        return Cause("constant-size", call,
                     f"asks for {list(call.sizes())} as before pruning, but its input is now "
                     f"{got} (was {was})")
    return None


def linear_input(now: OpLog, before: Optional[OpLog]) -> Optional[Cause]:
    """A linear layer whose input does not fit: confirm what made the input -- a view/reshape
    with a size written as a number, a torch.cat or a flatten whose width torch-pruning
    mapped wrongly."""
    made = now.failed_from
    if made is None:
        return None
    found = constant_size(made, now, before)
    if found is not None:
        return found
    width = made.out[1] if made.out and len(made.out) > 1 else "?"
    if made.name in ("cat", "concat", "concatenate"):
        parts = " + ".join(str(s[1]) if len(s) > 1 else "?" for s in made.shapes)
        return Cause("concat", made, f"now gives {parts} = {width} columns")
    if made.name in _RESHAPES:
        return Cause("flatten", made, f"now gives {width} columns")
    return None


def channel_ops(log: OpLog, after_layer: int, before_layer: int) -> Optional[Call]:
    """The first reduction over, or index into, the channel dimension (dim 1) recorded between
    two layers (by the count of layers run)."""
    for c in log.calls:
        if not after_layer <= c.layer <= before_layer or not c.shapes:
            continue
        nd = len(c.shapes[0])
        if nd < 2:
            continue
        if c.name in _REDUCTIONS:
            dims = c.dims()
            if dims is None and c.name in ("softmax", "log_softmax"):
                continue
            if dims is None or any(int(d) % nd == 1 for d in dims):
                return c
        if c.name == "__getitem__" and c.args:
            idx = c.args[0]
            idx = idx if isinstance(idx, tuple) else (idx,)
            if len(idx) > 1 and idx[0] == slice(None) and not (
                    isinstance(idx[1], slice) and idx[1] == slice(None)) and idx[1] is not Ellipsis:
                return c
    return None
