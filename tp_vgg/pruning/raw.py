"""Raw torch-pruning, as a new user would run it, with an independent masked-equivalence check.

This is the reference tp-vgg is compared against, so it imports nothing from tp-vgg: only torch,
torch_pruning and the standard library. :func:`raw_prune` does what torch-pruning's README shows::

    DG = tp.DependencyGraph().build_dependency(model, example, forward_fn=...)
    ignored = <the Conv/ConvTranspose/Linear layers nearest to the graph's outputs>
    pruner = tp.pruner.MagnitudePruner(model, example,
                                       importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=0.5, ignored_layers=ignored, forward_fn=...)
    for group in pruner.step(interactive=True):
        group.prune()

and checks the result against a *masked* copy of the unpruned model: a copy taken before pruning
in which forward hooks zero, on every module whose output channels a group removes, exactly the
removed channels. Removing a channel and zeroing it are the same function when nothing mixes
channels between the layer and the next one; then the pruned model's outputs equal the masked
copy's (``"exact"``). A norm that mixes channels (GroupNorm, LayerNorm, weight standardization)
makes them differ (``"wrong"``), as does a pruning step that removes the wrong channels or leaves
a tensor at its old width unnoticed by torch-pruning (which then usually fails: ``"error"``).

Groups are pruned one after another as ``pruner.step()`` prunes them (each group is built after
the previous ones were pruned, so its indices are numbered on the model as it is then); the
indices are mapped back to the original numbering per module before the masked copy is made.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
# Modules whose channels are their output's last dimension (the rest: dimension 1).
_LAST_DIM = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.RNNBase)


@dataclass
class RawResult:
    status: str                   # "exact" | "wrong" | "error"
    rel_err: Optional[float]      # max over output tensors of max|pruned - masked| / max|masked|
    seconds: float                # wall time: output-layer graph + pruner + pruning (no check)
    params_before: int
    params_after: Optional[int]   # None when pruning did not finish
    error: Optional[str]          # "TypeName: first line" on error; for "wrong" with no
                                  # rel_err, what does not match (a shape, the tensor count)


def tensor_leaves(output: Any) -> List[torch.Tensor]:
    """Every tensor in a nested tuple/list/dict, depth-first in order (dicts in their key order);
    leaves that are not tensors (strings, None, numbers) are skipped."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for v in output.values() for t in tensor_leaves(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in tensor_leaves(v)]
    return []


def _default_forward(model: nn.Module, x: torch.Tensor) -> Any:
    return model(x)


def _deepcopy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also for a model holding computed (non-leaf) tensors as plain
    attributes, as the hook-based ``torch.nn.utils.weight_norm``/``spectral_norm`` leave
    ``module.weight``: those are copied detached (their hooks recompute them on each forward)."""
    memo: Dict[int, Any] = {}
    for m in model.modules():
        for v in vars(m).values():
            if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter) and not v.is_leaf:
                memo[id(v)] = v.detach().clone()
    return copy.deepcopy(model, memo)


def _error_text(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0].strip()}" if lines else type(e).__name__


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def output_layers(DG: tp.DependencyGraph, outputs: Sequence[torch.Tensor] = ()) -> List[nn.Module]:
    """The Conv2d/ConvTranspose2d/Linear modules nearest to the graph's outputs, found by walking
    back through every other node from the graph's sinks (nodes without outputs) and from the
    nodes that made ``outputs`` (the traced output tensors: an output that is also fed on inside
    the model, such as an embedding returned next to the logits read from it, is no sink)."""
    made = {t.grad_fn for t in outputs if t.grad_fn is not None}
    found: List[nn.Module] = []
    seen = set()
    stack = [node for node in DG.module2node.values() if not node.outputs or node.grad_fn in made]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, _LAYERS):
            if all(node.module is not m for m in found):
                found.append(node.module)
            continue
        stack.extend(node.inputs)
    return found


def _out_channels(DG: tp.DependencyGraph, module: nn.Module) -> Optional[int]:
    try:
        n = DG.get_out_channels(module)
    except Exception:  # noqa: BLE001 -- a module type torch-pruning cannot measure
        return None
    return n if isinstance(n, int) else None


def _zero_hook(idxs: List[int], last_dim: bool) -> Callable:
    def hook(module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        dim = out.dim() - 1 if last_dim else 1
        index = torch.as_tensor(idxs, dtype=torch.long, device=out.device)
        out = out.index_fill(dim, index, 0.0)
        return (out,) + tuple(output[1:]) if isinstance(output, tuple) else out
    return hook


def _rel_err(pruned: List[torch.Tensor], masked: List[torch.Tensor]) -> "float | str":
    """Max over the tensors of max|pruned - masked| / max|masked|, or what does not match (the
    number of tensors or a shape)."""
    if len(pruned) != len(masked):
        return f"{len(pruned)} output tensors, not {len(masked)}"
    worst = 0.0
    for i, (p, m) in enumerate(zip(pruned, masked)):
        if p.shape != m.shape:
            return f"output {i} has shape {tuple(p.shape)}, not {tuple(m.shape)}"
        if p.numel() == 0:
            continue
        p, m = p.detach().double(), m.detach().double()
        scale = m.abs().max().item()
        worst = max(worst, (p - m).abs().max().item() / (scale if scale > 0 else 1.0))
    return worst


def raw_prune(model: nn.Module, example: torch.Tensor, ratio: float = 0.5,
              forward_fn: Optional[Callable[[nn.Module, torch.Tensor], Any]] = None,
              tol: float = 1e-4) -> RawResult:
    """Prune a deep copy of ``model`` (eval mode; ``model`` itself is left alone) with raw
    torch-pruning at ``ratio`` and check it against the masked unpruned copy.

    ``forward_fn(model, x)`` gives the model's raw output (default ``model(x)``); the pruner and
    the graph trace ``tensor_leaves`` of it. Any exception while building, pruning or running
    is status ``"error"``."""
    fwd = forward_fn or _default_forward

    traced: List[torch.Tensor] = []

    def leaves_fn(m, x):
        out = tensor_leaves(fwd(m, x))
        traced[:] = out     # the last trace's output tensors, for output_layers
        return out

    before = _n_params(model)
    seconds = 0.0
    t0: Optional[float] = None          # set while a timed stage runs
    after: Optional[int] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            work = _deepcopy(model).eval()
            t0 = time.perf_counter()
            with torch.enable_grad():
                DG = tp.DependencyGraph().build_dependency(work, example, forward_fn=leaves_fn)
                ignored = output_layers(DG, traced)
                del DG, traced[:]
                pruner = tp.pruner.MagnitudePruner(
                    work, example, importance=tp.importance.MagnitudeImportance(p=1),
                    pruning_ratio=ratio, ignored_layers=ignored, forward_fn=leaves_fn)
            seconds += time.perf_counter() - t0
            t0 = None

            masked = _deepcopy(work)            # before any group is pruned
            name_of = {id(m): n for n, m in work.named_modules()}
            alive: Dict[int, List[int]] = {}    # module id -> its alive channels, original numbers
            removed: Dict[int, List[int]] = {}  # module id -> removed channels, original numbers
            last_dim: Dict[int, bool] = {}
            width = {id(m): _out_channels(pruner.DG, m)     # out channels before pruning
                     for m in pruner.DG.module2node if id(m) in name_of}

            t0 = time.perf_counter()
            groups = pruner.step(interactive=True)
            for group in groups:
                t1 = time.perf_counter()
                for dep, idxs in group:
                    module = dep.target.module
                    if id(module) not in name_of or not pruner.DG.is_out_channel_pruning_fn(
                            dep.handler):
                        continue
                    plain = [int(i) for i in tp._helpers.to_plain_idxs(idxs)]
                    if id(module) not in alive:       # its width before any group was pruned
                        n = width.get(id(module)) or max(plain, default=-1) + 1
                        alive[id(module)] = list(range(n))
                        removed[id(module)] = []
                        last_dim[id(module)] = isinstance(module, _LAST_DIM)
                    now = alive[id(module)]
                    gone = {now[i] for i in plain}
                    removed[id(module)].extend(sorted(gone))
                    alive[id(module)] = [c for c in now if c not in gone]
                t0 += time.perf_counter() - t1      # the bookkeeping is the check's, not timed
                group.prune()
            seconds += time.perf_counter() - t0
            t0 = None
            after = _n_params(work)

            for key, idxs in removed.items():
                if idxs:
                    target = masked.get_submodule(name_of[key])
                    target.register_forward_hook(_zero_hook(sorted(set(idxs)), last_dim[key]))
            with torch.no_grad():
                want = tensor_leaves(fwd(masked, example))
                got = tensor_leaves(fwd(work, example))
        except Exception as e:  # noqa: BLE001 -- any failure is the result being measured
            if t0 is not None:              # failed while building or pruning
                seconds += time.perf_counter() - t0
            return RawResult("error", None, seconds, before, after, _error_text(e))
    err = _rel_err(got, want)
    if isinstance(err, str):
        return RawResult("wrong", None, seconds, before, after, err)
    return RawResult("exact" if err <= tol else "wrong", err, seconds, before, after, None)
