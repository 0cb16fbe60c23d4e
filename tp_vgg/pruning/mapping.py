"""torch-pruning's index mappings through flattens and concatenations, corrected from the traced
autograd graph.

torch-pruning 1.6.1 maps a channel to the columns of a flattened map with a stride it infers as
``(the next linear layer's in_features) // (the map's channels)`` and places each input of a
``torch.cat`` at offsets counted in *channels*. Both hold for one map flattened into one linear
layer; neither holds for a head that concatenates maps flattened at several depths
(``torch.cat([x1.flatten(1), x2.flatten(1), ...], 1)``, the multi-scale features detection
backbones feed their heads): the stride is the whole head's width over one map's channels, the
offsets skip channels instead of columns, and the mapped indices run past the layer (raw
torch-pruning raises ``IndexError`` or expands indices without end).

The traced graph knows the real sizes: every autograd node records the shape of what it
produced (``grad_fn._input_metadata``). :func:`update_index_mapping` wraps torch-pruning's own
(every ``DependencyGraph`` calls it before it builds a group) while a :func:`scope` is open and, where the recorded shapes say
otherwise, sets

* a ``torch.cat`` along dim 1 to offsets in the units of its inputs' dim 1 (columns for
  flattened maps, channels for feature maps -- where torch-pruning was right already);
* a flatten's stride to *its own* output width over its input's channels;
* a reshape that only adds or drops dimensions of size 1 (a per-channel ``nn.Parameter`` of
  shape (C,) used as ``w.view(1, -1, 1, 1) * x``) to the identity: torch-pruning maps it like a
  flatten and cuts one wrong entry of the parameter.

Where the shapes are not recorded (another PyTorch), torch-pruning's mapping is left as it is;
the masked-equivalence check (:mod:`tp_vgg.pruning.checks`) still refuses a wrong result.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Callable, Iterator, Optional, Sequence

import torch_pruning as tp
from torch_pruning.dependency import index_mapping as _tp_mapping
from torch_pruning.dependency import shape_infer

_ORIGINAL = _tp_mapping.update_index_mapping


def _shape(node) -> Optional[Sequence[int]]:
    """The shape of what ``node``'s operation produced in the traced forward pass, or None."""
    try:
        meta = node.grad_fn._input_metadata
        return tuple(int(s) for s in meta[0].shape) if len(meta) == 1 else None
    except (AttributeError, IndexError, TypeError, RuntimeError):
        return None


def _concat_sizes(node) -> None:
    """A dim-1 ``torch.cat``'s input sizes along dim 1, from the shapes its inputs produced."""
    dim = getattr(node.grad_fn, "_saved_dim", 1)
    out = _shape(node)
    if out is None or len(out) not in (2, 4) or dim not in (1, 1 - len(out)):
        return  # dim 1 holds channels (N, C, H, W) or columns (N, F); of (N, L, C) it is L
    sizes = [_shape(n) for n in node.inputs]
    if any(s is None or len(s) != len(out) for s in sizes) or len(sizes) < 2:
        return
    if sum(s[1] for s in sizes) != out[1]:
        return  # an input used twice, or one tracked elsewhere: leave torch-pruning's
    node.module.concat_sizes = [s[1] for s in sizes]


def _flatten_stride(graph: tp.DependencyGraph, node) -> None:
    """A flatten's stride: its own output width over its input's channels (torch-pruning uses the
    width of the next layer that has one, which a concatenation in between makes larger)."""
    out = _shape(node)
    if out is None:
        return
    ins = [_shape(n) for n in node.inputs]
    if len(ins) == 1 and ins[0] is not None and ins[0] != out and (
            [d for d in ins[0] if d != 1] == [d for d in out if d != 1]):
        _set(node, None, None)  # only singleton dims added or dropped: (C,) -> (1, C, 1, 1)
        return
    if len(out) != 2:
        return
    width = out[1]
    channels = None
    for n in node.inputs:
        channels = shape_infer.infer_out_channels_recursively(graph, n, [0])
        if channels is not None:
            break
    if not channels or width < channels or width % channels:
        return
    stride = width // channels  # 1: a (C, 1, 1) map flattened, one column per channel

    if stride > 1:
        _set(node, _tp_mapping._FlattenIndexMapping(stride, reverse=True),
             _tp_mapping._FlattenIndexMapping(stride, reverse=False))
    else:
        _set(node, None, None)


def _set(node, back, forth) -> None:
    """The index mapping from ``node`` (a reshape) to its inputs and from them to it."""
    for n in node.inputs:
        for dep in node.dependencies:
            if dep.target == n:
                dep.index_mapping[0] = back
        for dep in n.dependencies:
            if dep.target == node:
                dep.index_mapping[0] = forth


def update_index_mapping(graph: tp.DependencyGraph) -> None:
    """torch-pruning's ``update_index_mapping``, with concat offsets and flatten strides read off
    the traced shapes (see the module docstring)."""
    nodes = list(graph.module2node.values())
    for node in nodes:
        if node.type == tp.ops.OPTYPE.CONCAT and node.module.concat_sizes is None:
            _concat_sizes(node)
    _ORIGINAL(graph)
    for node in nodes:
        if node.type == tp.ops.OPTYPE.RESHAPE:
            _flatten_stride(graph, node)


_depth = 0  # open scopes (they nest)


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """While open, torch-pruning's graphs use :func:`update_index_mapping`, and torch-pruning's
    own warnings are not shown (tp-vgg says in one line what went wrong). On leaving the
    outermost scope, torch-pruning's function is put back: raw torch-pruning in the same process
    behaves exactly as if tp-vgg had never run (tests/test_mapping_scope.py). Every tp-vgg call
    that builds, groups or prunes with a graph runs inside one (:func:`scoped`)."""
    global _depth
    if _depth == 0:
        _tp_mapping.update_index_mapping = update_index_mapping
    _depth += 1
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"torch_pruning")
            yield
    finally:
        _depth -= 1
        if _depth == 0:
            _tp_mapping.update_index_mapping = _ORIGINAL


def scoped(fn: Callable) -> Callable:
    """``fn`` run inside :func:`scope`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with scope():
            return fn(*args, **kwargs)
    return wrapper
