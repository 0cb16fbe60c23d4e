"""After pruning: patterns torch-pruning cannot follow are detected and explained.

torch-pruning follows channels through modules and the tensor ops it traces. It cannot see a size
written into ``forward`` as a number (``x.view(-1, 512 * 7 * 7)``, ``x.reshape(1, 2048)``), it
guesses which dimension of a bare ``nn.Parameter`` is the channel one, and it cannot tell that
``x.mean(1)`` mixes channels. So :func:`tp_vgg.pruning.graph.prune` ends with :func:`check_pruned`:

1. the pruned model's forward runs; a failure names the module and the line of ``forward`` that
   broke, and how to write it instead;
2. the logits keep their shape;
3. on every model, whatever its size, the masked-equivalence invariant holds: the pruned model
   computes what the original computes with the removed channels zeroed. No copy is made:
   before a pruning step, :class:`MaskedOriginal` takes the channels torch-pruning is about to
   remove (the planned groups) and runs the original once on the probe batch with those channels
   zeroed by forward hooks, keeping its logits and each layer's output; after the step the
   pruned model runs on the same batch and is compared. A failure names the first layer whose
   output differs.

Normalization layers: BatchNorm (with or without affine terms or running statistics) and
InstanceNorm normalize each channel on its own, so zeroing a removed channel's input, affine
terms and running mean zeroes its output, and the invariant holds as stated. GroupNorm (and
``GroupNorm(1, C)``, a LayerNorm over C x H x W) normalizes each group over all its channels: a
zeroed channel would still count in its group's mean and variance. There the zeroed original
normalizes each of its groups over the group's kept channels -- what the pruned GroupNorm
computes when every group kept the same number of channels, in order -- so the check stays
exact. Other layers that mix channels (``nn.LayerNorm``, ``nn.LocalResponseNorm``) are named as
such when the check fails there.

Each failure is a :class:`UserError` (one line); nothing is written by the caller.
"""

from __future__ import annotations

import contextlib
import json
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from tp_vgg.errors import UserError, first_line
from tp_vgg.models import outputs
from tp_vgg.models.zoo import ModelSpec, keep_mode
from tp_vgg.pruning import diagnosis

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)
_MIXING = (nn.LayerNorm, nn.LocalResponseNorm, nn.CrossMapLRN2d)  # normalize across channels
_PRUNABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
_LAYERS = _PRUNABLE + _NORMS + _MIXING
_FLATTEN_HINT = ("a size written as a number in view/reshape does not follow pruning: flatten "
                 "with torch.flatten(x, 1), x.view(x.size(0), -1) or nn.Flatten()")


def output_shapes(model: nn.Module, spec: ModelSpec, example: torch.Tensor) -> List[torch.Size]:
    """The shape of every tensor the model outputs, before pruning (eval mode, no grad; the
    caller keeps the modes)."""
    model.eval()
    with torch.no_grad():
        return [t.shape for t in outputs.require_tensors(outputs.run(model, example))]


def bare_parameters(graph: tp.DependencyGraph) -> Dict[str, Tuple[tuple, int]]:
    """Parameters used outside a module torch-pruning knows: name -> (shape, guessed channel dim)."""
    dims = {p: int(dim) for p, dim in graph.unwrapped_parameters}
    return {name: (tuple(p.shape), dims[p])  # in the model's parameter order
            for p, name in getattr(graph, "_param_to_name", {}).items() if p in dims}


def no_output_layer_message(model: nn.Module, bare: Dict[str, Tuple[tuple, int]],
                            graph: Optional[tp.DependencyGraph] = None) -> str:
    """Why the graph found no layer that produces the logits, and what to do."""
    layers = [n for n, m in model.named_modules() if isinstance(m, _PRUNABLE)]
    outside = f" (it computes with parameters outside modules: {', '.join(bare)})" if bare else ""
    if not layers:
        return ("the model has no Conv2d or Linear module" + outside + "; tp-vgg prunes the "
                "channels of nn.Conv2d and nn.Linear modules: write the layers as modules")
    if graph is not None and len(untraced_layers(graph, model)) == len(layers):
        return (untraced_message(layers) + outside + "; nothing could be pruned: keep forward "
                "differentiable for the layers to prune")
    shown = ", ".join(layers[-4:])
    return (f"cannot tell which layer produces the logits: none of the Conv2d/Linear layers is "
            f"traced to them{outside}; name it with --output-layer NAME (e.g. one of {shown})")


def untraced_layers(graph: tp.DependencyGraph, model: nn.Module) -> List[str]:
    """Conv2d/Linear layers the graph did not reach from the logits (unused in eval-mode forward,
    or run under torch.no_grad() / .detach()): torch-pruning leaves them alone."""
    return [n for n, m in model.named_modules()
            if isinstance(m, _PRUNABLE) and m not in graph.module2node]


def untraced_message(untraced: List[str]) -> str:
    shown = ", ".join(untraced[:4]) + (", ..." if len(untraced) > 4 else "")
    return (f"{len(untraced)} Conv2d/Linear layer(s) ({shown}) are not traced from the input to the "
            "logits in eval mode (unused, or run under torch.no_grad() or .detach()), so "
            "torch-pruning cannot prune them")


def coupled_bare_parameters(graph: tp.DependencyGraph, model: nn.Module,
                            skip: Sequence[nn.Module] = ()) -> Dict[str, List[str]]:
    """Layer name -> names of the bare parameters torch-pruning would prune with its channels
    (layers in ``skip`` -- protected, their outputs never pruned -- are not asked)."""
    names = getattr(graph, "_param_to_name", {})
    out: Dict[str, List[str]] = {}
    skip = set(skip)
    if not names:
        return out
    for lname, layer in model.named_modules():
        if not isinstance(layer, _PRUNABLE) or layer not in graph.module2node or layer in skip:
            continue
        try:
            group = graph.get_pruning_group(layer, graph.get_pruner_of_module(layer).prune_out_channels, [0])
        except Exception:
            continue
        params = [names[d.target.module] for d, _ in group
                  if d.target.type == tp.ops.OPTYPE.PARAMETER and d.target.module in names]
        if params:
            out[lname] = params
    return out


def feeders(graph: tp.DependencyGraph, model: nn.Module) -> Callable[[nn.Module], List[str]]:
    """``f(layer)``: the Conv2d/Linear layers whose output channels torch-pruning removes from
    ``layer``'s inputs (those to keep unpruned so that ``layer`` keeps its inputs)."""
    def f(layer: nn.Module) -> List[str]:
        out = []
        for name, m in model.named_modules():
            if not isinstance(m, _PRUNABLE) or m is layer or m not in graph.module2node:
                continue
            try:
                group = graph.get_pruning_group(m, graph.get_pruner_of_module(m).prune_out_channels,
                                                [0])
            except Exception:
                continue
            if any(dep.target.module is layer and dep.handler in (
                    tp.prune_linear_in_channels, tp.prune_conv_in_channels) for dep, _ in group):
                out.append(name)
        return out
    return f


def _shape(s) -> str:
    return "x".join(str(int(v)) for v in s)


def bare_parameter_notes(model: nn.Module, bare: Dict[str, Tuple[tuple, int]],
                         coupled: Dict[str, List[str]], before: Dict[str, int],
                         after: Dict[str, int]) -> List[str]:
    """Say what torch-pruning did with parameters used outside modules (after a passing check)."""
    notes = []
    for name, (shape, dim) in bare.items():
        now = tuple(model.get_parameter(name).shape)
        if now != shape:
            notes.append(f"parameter {name!r} is used outside any module; torch-pruning took its "
                         f"dimension {dim} for channels and cut it ({_shape(shape)} -> {_shape(now)}); "
                         "the pruned model passed the forward check")
        for layer, params in coupled.items():
            if name in params and before.get(layer) == after.get(layer):
                notes.append(f"layer {layer!r} kept all its {before[layer]} channels: it is coupled "
                             f"to parameter {name!r} ({_shape(shape)}), used outside any module, "
                             f"whose dimension {dim} torch-pruning would have to cut with them")
    return notes


def _num_channels(layer: nn.Module) -> int:
    for attr in ("num_features", "num_channels"):  # BatchNorm / InstanceNorm, GroupNorm
        if isinstance(getattr(layer, attr, None), int):
            return getattr(layer, attr)
    return int(layer.weight.shape[0])


class RemovedChannels:
    """The output channels each pruning group removes, in the original numbering, recorded group
    by group before ``group.prune()``; :meth:`zero` zeroes them in an unpruned copy (conv and
    linear rows and biases, the affine terms and running mean of BatchNorm, InstanceNorm and
    GroupNorm, bare parameters along their pruned dimension) and makes each GroupNorm normalize
    over its groups' kept channels."""

    _OUT = (tp.prune_conv_out_channels, tp.prune_linear_out_channels,
            tp.prune_batchnorm_out_channels, tp.prune_instancenorm_out_channels,
            tp.prune_groupnorm_out_channels)

    def __init__(self, model: nn.Module, graph: tp.DependencyGraph):
        self.names = {m: n for n, m in model.named_modules()}
        self.params = getattr(graph, "_param_to_name", {})
        self.alive: Dict[tuple, List[int]] = {}
        self.removed: Dict[tuple, set] = {}

    def record(self, group) -> None:
        seen = set()
        for dep, idxs in group:
            target = dep.target
            if target.type == tp.ops.OPTYPE.PARAMETER and target.module in self.params:
                key = ("param", self.params[target.module], int(target.pruning_dim))
                size = target.module.shape[key[2]]
            elif dep.handler in self._OUT and target.module in self.names:
                key = ("layer", self.names[target.module], 0)
                size = _num_channels(target.module)
            else:
                continue
            if key in seen:
                continue
            seen.add(key)
            live = self.alive.setdefault(key, list(range(size)))
            # torch-pruning ignores indices past the end (a bare parameter whose guessed channel
            # dimension is shorter): so does this record; the forward check then explains it
            gone = [live[int(i)] for i in tp._helpers.to_plain_idxs(idxs) if int(i) < len(live)]
            self.removed.setdefault(key, set()).update(gone)
            drop = set(gone)
            self.alive[key] = [c for c in live if c not in drop]

    @contextlib.contextmanager
    def zeroed(self, model: nn.Module) -> Iterator[None]:
        """While open, ``model`` (unpruned) computes what it computes with the removed channels
        zeroed: a forward hook zeroes each removed output channel of a conv, linear or
        normalization layer (a GroupNorm normalizes each group over its kept channels), and a
        bare parameter's removed slices are zeroed, then restored bit for bit on close."""
        handles, saved = [], []
        try:
            for (kind, name, dim), gone in self.removed.items():
                ii = torch.as_tensor(sorted(gone), dtype=torch.long)
                if kind == "param":
                    p = model.get_parameter(name)
                    with torch.no_grad():
                        saved.append((p, dim, ii.to(p.device), p.index_select(dim, ii.to(p.device))))
                        p.index_fill_(dim, ii.to(p.device), 0)
                    continue
                layer = model.get_submodule(name)
                if isinstance(layer, nn.GroupNorm):
                    handles.append(kept_group_norm(layer, gone))
                else:
                    handles.append(layer.register_forward_hook(_zero_channels(ii)))
            yield
        finally:
            for h in handles:
                h.remove()
            with torch.no_grad():
                for p, dim, ii, values in saved:
                    p.index_copy_(dim, ii, values)


def _zero_channels(ii: torch.Tensor):
    def hook(mod, args, out):
        if isinstance(out, torch.Tensor) and out.dim() >= 2:
            out[:, ii.to(out.device)] = 0  # in place: a fresh output, under no_grad
    return hook


class MaskedOriginal:
    """What the unpruned model computes with the channels about to be removed zeroed, taken on
    the model itself (no copy) before each pruning step: :meth:`take` is given the planned
    groups, records their channels (:class:`RemovedChannels`) and runs the model once on
    ``example`` under :meth:`RemovedChannels.zeroed`, keeping the logits and every layer's
    output for :func:`check_pruned`. A model that cannot run so (it ran while being traced, so
    this is rare) is checked for its forward and logits shape only, as ``logits`` stays None."""

    def __init__(self, model: nn.Module, graph: tp.DependencyGraph, spec: ModelSpec,
                 example: torch.Tensor):
        self.model, self.graph, self.spec, self.example = model, graph, spec, example
        self.logits: Optional[List[torch.Tensor]] = None  # every tensor output
        self.paths: List[str] = []  # where each is in the output (``output['boxes']``)
        self.layers: Dict[str, torch.Tensor] = {}
        self.log: Optional[diagnosis.OpLog] = None  # the tensor ops of that pass

    def take(self, groups) -> None:
        removed = RemovedChannels(self.model, self.graph)
        for group in groups:
            removed.record(group)
        self.logits, self.layers = None, {}
        with keep_mode(self.model):
            self.model.eval()
            try:
                with removed.zeroed(self.model):
                    logits, self.layers, _, self.log, self.paths = _record(
                        self.model, self.example, self.spec)
            except Exception:
                return
        self.logits = logits


def kept_group_norm(layer: nn.GroupNorm, gone) -> torch.utils.hooks.RemovableHandle:
    """Make ``layer`` (unpruned) normalize each of its groups over the group's channels not in
    ``gone`` only, and output zero for those in ``gone``: what the pruned GroupNorm computes, when
    every group lost the same number of channels. Returns the hook's handle."""
    size = layer.num_channels // layer.num_groups
    kept = [[c for c in range(g * size, (g + 1) * size) if c not in gone]
            for g in range(layer.num_groups)]

    def hook(mod, args, out):
        x = args[0]
        y = torch.zeros_like(out)
        for channels in kept:
            if channels:
                ii = torch.as_tensor(channels, dtype=torch.long, device=x.device)
                affine = [None if t is None else t[ii] for t in (mod.weight, mod.bias)]
                y[:, ii] = F.group_norm(x[:, ii], 1, *affine, mod.eps)
        return y

    return layer.register_forward_hook(hook)


def check_pruned(model: nn.Module, spec: ModelSpec, example: torch.Tensor,
                 masked: Optional[MaskedOriginal] = None,
                 expect_shape: Optional[List[torch.Size]] = None,
                 bare: Optional[Dict[str, Tuple[tuple, int]]] = None,
                 coupled: Optional[Callable[[], Dict[str, List[str]]]] = None,
                 feeders: Optional[Callable[[nn.Module], List[str]]] = None) -> None:
    """Raise a :class:`UserError` when the pruned ``model`` cannot run, changed its logits' shape
    or (given ``masked``, taken before the step on ``example``) computes something other than the
    original with the removed channels zeroed. Each cause named is first confirmed
    (:mod:`tp_vgg.pruning.diagnosis`); ``feeders(layer)`` names the layers whose channels reach
    ``layer``'s inputs. Eval mode, no grad; the caller keeps the modes."""
    bare = bare or {}
    model.eval()
    with torch.no_grad():
        got = _forward_or_explain(model, spec, example, bare, coupled,
                                  masked.log if masked is not None else None, feeders)
    want = masked.logits if masked is not None else None
    paths = (masked.paths if masked is not None and masked.paths
             else [f"output {i}" for i in range(len(got))])
    if want is not None:
        expect_shape = [w.shape for w in want]
    if expect_shape is not None and [g.shape for g in got] != list(expect_shape):
        if len(got) != len(expect_shape):
            raise UserError(f"after pruning, the model returns {len(got)} tensors instead of "
                            f"{len(expect_shape)}")
        i = next(i for i, (g, e) in enumerate(zip(got, expect_shape)) if g.shape != e)
        what = "the logits" if len(got) == 1 else paths[i]
        raise UserError(
            f"pruning changed {what} from shape {tuple(expect_shape[i])} to "
            f"{tuple(got[i].shape)}: the layer that produces them lost outputs; name it with "
            "--output-layer NAME (a Conv2d or Linear, as in named_modules())")
    if want is None:
        return
    worst = None  # (excess over tolerance, diff, tol, path)
    for g, w, path in zip(got, want, paths):
        if not w.numel() or not torch.isfinite(w).all():
            continue
        scale = float(w.abs().max())
        tol = (1e-4 if w.device.type == "cpu" else 1e-2) * scale + 1e-6
        diff = float((g.float() - w.float()).abs().max())
        if diff > tol and (worst is None or diff / tol > worst[0]):
            worst = (diff / tol, diff, tol, path)
    if worst is None:
        return
    _, diff, tol, path = worst
    which = f" in {path}" if len(got) > 1 else ""
    first, prev, op = _first_divergence(model, masked.layers, spec, example)
    where = ""
    if first is not None:
        where = (f"; the first layer whose output differs is {first!r} "
                 f"({type(model.get_submodule(first)).__name__})"
                 + (f", right after {prev!r}" if prev else ""))
    keep = f" with --layer-ratios '{json.dumps({prev: 0})}'" if prev else ""
    head = ("after pruning, the model no longer computes what the original computes with the "
            f"removed channels zeroed (largest difference{which} {diff:.3g}, tolerance {tol:.3g})"
            f"{where}")
    layer = model.get_submodule(first) if first is not None else None
    if isinstance(layer, nn.GroupNorm) and keep:  # not from torch-pruning's grouping: a history
        raise UserError(
            f"{head}: its {layer.num_groups} groups did not each lose the same number of "
            f"channels, so the kept channels are grouped differently; keep the layer before it "
            f"unpruned{keep}")
    if isinstance(layer, _MIXING) and keep:
        raise UserError(
            f"{head}: {type(layer).__name__} normalizes across channels, so removing channels "
            "changes what the kept ones compute (nn.GroupNorm is pruned group by group "
            f"instead); keep the layer before it unpruned{keep}")
    if op is not None and keep:
        what = ("the indexing {} picks channels" if op.name == "__getitem__" else
                f"the {op.name} {{}} reduces over the channel dimension, mixing the channels")
        raise UserError(
            f"{head}: {what.format(diagnosis.show_site(op.site))}, which torch-pruning cannot "
            f"follow; keep the layer before it unpruned{keep}")
    params = f"; parameters used outside modules: {', '.join(bare)}" if bare else ""
    raise UserError(
        f"{head}: none of the causes tp-vgg knows (a reduction or index over the channel "
        f"dimension, a layer that normalizes across channels) is confirmed{params}")


# --------------------------------------------------------------------------------------------

def _forward_or_explain(model: nn.Module, spec: ModelSpec, example: torch.Tensor,
                        bare: Dict[str, Tuple[tuple, int]],
                        coupled: Optional[Callable[[], Dict[str, List[str]]]],
                        before: Optional[diagnosis.OpLog] = None,
                        feeders: Optional[Callable[[nn.Module], List[str]]] = None
                        ) -> List[torch.Tensor]:
    names = {m: n for n, m in model.named_modules()}
    stack: List[nn.Module] = []
    last_layer: List[Optional[str]] = [None]  # the last Conv/Linear that ran

    def enter(m, args):
        stack.append(m)

    def leave(m, args, out):
        if stack and stack[-1] is m:
            stack.pop()
        if isinstance(m, _PRUNABLE):
            last_layer[0] = names.get(m)

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(enter))
        handles.append(m.register_forward_hook(leave))
    log = diagnosis.OpLog(diagnosis.bare_ids(model, list(bare)))
    try:
        with log:
            out = outputs.require_tensors(outputs.run(model, example))
    except UserError:
        raise
    except Exception as e:
        failed_in = next((m for m in reversed(stack) if names.get(m)), None)
        raise UserError(_forward_failure(e, failed_in and names[failed_in], failed_in, model,
                                         bare, coupled, last_layer[0], log, before,
                                         feeders)) from e
    finally:
        for h in handles:
            h.remove()
    return out


def _empty_layers(model: nn.Module) -> List[str]:
    return [n for n, m in model.named_modules()
            if (isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and (m.out_channels == 0 or m.in_channels == 0))
            or (isinstance(m, nn.Linear) and (m.out_features == 0 or m.in_features == 0))]


def _keep(layers: List[str]) -> str:
    return f"--layer-ratios '{json.dumps({n: 0 for n in layers})}'"


def _forward_failure(e: BaseException, module_name: Optional[str], module: Optional[nn.Module],
                     model: nn.Module, bare: Dict[str, Tuple[tuple, int]],
                     coupled: Optional[Callable[[], Dict[str, List[str]]]],
                     last_layer: Optional[str], log: diagnosis.OpLog,
                     before: Optional[diagnosis.OpLog],
                     feeders: Optional[Callable[[nn.Module], List[str]]]) -> str:
    """The line for a forward that fails after pruning: where, and the cause -- only once it is
    confirmed against the recorded calls (:mod:`tp_vgg.pruning.diagnosis`)."""
    failed = log.failed
    where = []
    if module_name:
        where.append(f"in module {module_name!r} ({type(module).__name__})")
    site = failed.site if failed is not None else None
    if site is not None:
        where.append(diagnosis.show_site(site))
    msg = f"after pruning, the model's forward fails {' '.join(where) or 'in forward'} " \
          f"({type(e).__name__}: {first_line(e)})"
    op = f"{failed.name} " if failed is not None else ""

    found = diagnosis.constant_size(failed, log, before)
    if found is None and failed is not None and failed.name in ("linear", "matmul", "addmm",
                                                                "mm"):
        found = diagnosis.linear_input(log, before)
    if found is not None and found.kind == "constant-size":
        sizes = found.call.sizes() or ()
        fix = (_FLATTEN_HINT.split(": ", 1)[1] if len(sizes) == 2 else
               "write the sizes from x.size() (e.g. x.size(0), x.size(1)) or -1")
        which = ("it" if found.call is failed else
                 f"the {found.call.name} {diagnosis.show_site(found.call.site)}")
        return f"{msg}: {which} {found.detail}: a size written as a number does not follow " \
               f"pruning; {fix}"
    if found is not None:  # a torch.cat or flatten torch-pruning mapped to the wrong columns
        what = "torch.cat" if found.kind == "concat" else found.call.name
        fed = (feeders(module) if feeders is not None and isinstance(module, nn.Linear)
               else [])
        keep = f"; keep the layers that feed it unpruned with {_keep(fed)}" if fed else ""
        width = module.in_features if isinstance(module, nn.Linear) else "?"
        return (f"{msg}: the {what} {diagnosis.show_site(found.call.site)} {found.detail}, but "
                f"{module_name!r} keeps {width} inputs: torch-pruning mapped the removed "
                f"channels through it to the wrong columns{keep}")

    cut = {n: (s, d, tuple(model.get_parameter(n).shape)) for n, (s, d) in bare.items()
           if tuple(model.get_parameter(n).shape) != s}
    used = [n for n in (failed.params if failed is not None else []) if n in cut]
    if used:
        name = used[0]
        shape, dim, now = cut[name]
        fed = [layer for layer, ps in (coupled() if coupled else {}).items() if name in ps]
        keep = f", or keep the layers it is coupled to unpruned with {_keep(fed)}" if fed else ""
        return (f"{msg}: parameter {name!r} is used outside any module, so torch-pruning guessed "
                f"its channel dimension and cut dimension {dim} ({_shape(shape)} -> {_shape(now)}); "
                f"make it a per-channel (1, C, 1, 1) parameter or part of a module{keep}")
    empty = _empty_layers(model)
    if empty:
        return (f"{msg}: torch-pruning removed all the channels of {', '.join(map(repr, empty))}, "
                "more than the ratio asks: its index mapping went wrong there")
    return (f"{msg}: none of the causes tp-vgg knows (a size written as a number in view/reshape, "
            "a torch.cat or flatten mapped to the wrong columns, a parameter used outside "
            f"modules) is confirmed; the {op}call that failed is "
            "the one named here")


def _record(model: nn.Module, example: torch.Tensor, spec: ModelSpec
            ) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor], List[str], diagnosis.OpLog,
                       List[str]]:
    """(every output tensor, each conv/linear/normalization layer's first output, their
    execution order, the tensor ops recorded, with ``log.layers`` counting the layers run, the
    path of each output tensor)."""
    outs: Dict[str, torch.Tensor] = {}
    order: List[str] = []
    log = diagnosis.OpLog()
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, _LAYERS):
            def hook(mod, args, out, name=name):
                log.layers += 1
                if isinstance(out, torch.Tensor) and name not in outs:
                    outs[name] = out.detach()
                    order.append(name)
                    log.ends[name] = log.layers
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad(), log:
            out = outputs.run(model, example)
    finally:
        for h in handles:
            h.remove()
    return outputs.require_tensors(out), outs, order, log, outputs.tensor_paths(out)


def _channel_subsequence(p: torch.Tensor, z: torch.Tensor) -> bool:
    """Is ``p`` (pruned) ``z`` (zeroed original) with some channels (dim 1) left out?"""
    tol = 1e-4 * float(z.abs().max()) + 1e-6 if z.numel() else 1e-6
    if p.shape == z.shape:
        return bool((p - z).abs().max() <= tol) if p.numel() else True
    if (p.dim() != z.dim() or p.dim() < 2 or p.shape[0] != z.shape[0]
            or p.shape[2:] != z.shape[2:] or p.shape[1] > z.shape[1]):
        return False
    j = 0
    for i in range(p.shape[1]):
        while j < z.shape[1] and not bool(((p[:, i] - z[:, j]).abs() <= tol).all()):
            j += 1
        if j == z.shape[1]:
            return False
        j += 1
    return True


def _first_divergence(pruned: nn.Module, want: Dict[str, torch.Tensor], spec: ModelSpec,
                      example: torch.Tensor
                      ) -> Tuple[Optional[str], Optional[str], Optional[diagnosis.Call]]:
    """(first layer whose output is not the masked original's (``want``, by layer) minus the
    removed channels, the Conv/Linear before it, the reduction or index over the channel
    dimension recorded between the two), in execution order."""
    try:
        _, got, order, log, _ = _record(pruned, example, spec)
    except Exception:
        return None, None, None
    prev, since = None, 0
    for name in order:
        if name in want and not _channel_subsequence(got[name], want[name]):
            return name, prev, diagnosis.channel_ops(log, since, log.ends[name] - 1)
        if isinstance(pruned.get_submodule(name), _PRUNABLE):
            prev, since = name, log.ends[name]
    return None, prev, None
