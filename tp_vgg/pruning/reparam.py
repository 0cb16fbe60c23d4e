"""Layers whose weight is computed from other tensors: spectral norm and weight norm.

``torch.nn.utils.parametrizations.spectral_norm`` / ``weight_norm`` (and the older hook-based
``torch.nn.utils.spectral_norm`` / ``weight_norm``) make ``layer.weight`` a function of
``original`` (spectral norm, with power-iteration vectors ``_u``, ``_v``) or of ``original0`` /
``original1`` (weight norm's g and v). torch-pruning reassigns ``layer.weight``, which a
parametrization refuses (``KeyError: attribute 'weight' already exists``), and it would not prune
``original`` or the buffers anyway.

So :func:`unwrapped` takes the parametrization off for the time of pruning: each such layer holds
its *effective* weight as a plain parameter (what its forward computes, in eval mode), which
torch-pruning traces, ranks and prunes like any layer -- the masked-equivalence check runs on it
and is exact. Right before the groups are pruned, :meth:`Unwrapped.tracking` writes into every
such weight the code ``row * n + column`` of each entry, and reads back after pruning which rows
and columns were kept (exact in float64), then puts the real values back. On leaving, the
parametrization is registered again, on the kept rows and columns of the user's own tensors, with
the same settings, so that the model keeps its type and its ``state_dict`` keys:

* **weight norm** (``w = g * v / ||v||``): ``v`` keeps its rows and columns, and ``g`` is
  rescaled by ``||v_kept|| / ||v||`` over the dimensions it normalizes, so the pruned layer
  computes exactly the kept part of the original weight: exact, inputs and outputs;
* **spectral norm** (``w = W / sigma(W)``): ``W`` keeps its rows and columns, but the largest
  singular value of the kept part differs from the original's, so the normalized weight is
  rescaled. No choice of buffers keeps both the parametrization and the old values. ``_u`` and
  ``_v`` are set to the kept weight's top singular vectors (so sigma is exact, not a one-step
  power-iteration guess), and the result is said in a note and checked for what still holds
  (:meth:`Unwrapped.restore`): the output shapes, the kept entries of ``W`` equal to the
  original's, and sigma equal to the kept weight's top singular value.

A layer that lost nothing gets its parametrization back with its own buffers, bit for bit. Other
parametrizations (orthogonal, the user's own) are refused in one line before anything changes.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from tp_vgg.errors import UserError

try:  # torch >= 2.1
    from torch.nn.utils.parametrizations import _SpectralNorm, _WeightNorm
except ImportError:  # pragma: no cover
    _SpectralNorm = _WeightNorm = ()
from torch.nn.utils.spectral_norm import SpectralNorm as _SpectralNormHook
from torch.nn.utils.weight_norm import WeightNorm as _WeightNormHook


@dataclass
class _Layer:
    name: str
    module: nn.Module
    kind: str                     # "spectral" | "weight"
    style: str                    # "parametrize" | "hook"
    attr: str                     # the parametrized tensor's name (weight)
    settings: Dict[str, object]   # dim, eps, n_power_iterations
    tensors: Dict[str, torch.Tensor]  # the user's own: original / g, v; u, v buffers
    rows: Optional[torch.Tensor] = None   # kept indices along dim 0 of the weight (original's)
    cols: Optional[torch.Tensor] = None   # along dim 1
    sigma: Optional[float] = None         # after restore: the kept weight's sigma (spectral)
    sigma_before: Optional[float] = None

    @property
    def pruned(self) -> bool:
        w = self.tensors["weight"]
        return len(self.rows) != w.shape[0] or (w.dim() > 1 and len(self.cols) != w.shape[1])


def _settings(p) -> Dict[str, object]:
    out = {"dim": int(p.dim)}
    for k in ("eps", "n_power_iterations"):
        if hasattr(p, k):
            out[k] = getattr(p, k)
    return out


def _find(model: nn.Module) -> List[_Layer]:
    found = []
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m):
            for attr, plist in m.parametrizations.items():
                kinds = [type(p) for p in plist]
                if attr != "weight" or len(plist) != 1 or not isinstance(
                        plist[0], (_SpectralNorm, _WeightNorm)):
                    raise UserError(
                        f"layer {name!r} has the parametrization "
                        f"{' + '.join(k.__name__ for k in kinds)} on {attr!r}: tp-vgg prunes "
                        "layers under spectral_norm or weight_norm (torch.nn.utils."
                        "parametrizations); remove the others before pruning")
                p = plist[0]
                kind = "spectral" if isinstance(p, _SpectralNorm) else "weight"
                if kind == "spectral":  # the buffers first: a training-mode read updates them
                    tensors = dict(original=plist.original.detach().clone(),
                                   u=p._u.detach().clone(), v=p._v.detach().clone())
                else:
                    tensors = dict(g=plist.original0.detach().clone(),
                                   v=plist.original1.detach().clone())
                tensors["weight"] = m.weight.detach().clone()  # in eval mode (unwrapped())
                found.append(_Layer(name, m, kind, "parametrize", attr, _settings(p), tensors))
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, _SpectralNormHook):
                attr = hook.name
                w = hook.compute_weight(m, do_power_iteration=False).detach().clone()
                found.append(_Layer(name, m, "spectral", "hook", attr, _settings(hook), {
                    "weight": w, "original": getattr(m, attr + "_orig").detach().clone(),
                    "u": getattr(m, attr + "_u").detach().clone(),
                    "v": getattr(m, attr + "_v").detach().clone()}))
            elif isinstance(hook, _WeightNormHook):
                attr = hook.name
                w = hook.compute_weight(m).detach().clone()
                found.append(_Layer(name, m, "weight", "hook", attr, _settings(hook), {
                    "weight": w, "g": getattr(m, attr + "_g").detach().clone(),
                    "v": getattr(m, attr + "_v").detach().clone()}))
    return found


def _strip(layer: _Layer) -> None:
    """``layer.module.<attr>`` becomes a plain Parameter holding the effective weight."""
    m, attr = layer.module, layer.attr
    if layer.style == "parametrize":
        # By hand, not remove_parametrizations(): that deletes the weight property from the
        # module's class, which a deepcopy of the model shares -- the user's own copy (or the
        # job's unpruned original) would lose its weight (measured).
        base = parametrize.type_before_parametrizations(m)
        del m._modules["parametrizations"]
        m.__class__ = base
        m.register_parameter(attr, nn.Parameter(layer.tensors["weight"].clone()))
        return
    if layer.kind == "spectral":
        torch.nn.utils.remove_spectral_norm(m, attr)
    else:
        torch.nn.utils.remove_weight_norm(m, attr)
    with torch.no_grad():
        getattr(m, attr).copy_(layer.tensors["weight"])


def _norm_except(v: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.norm_except_dim(v, 2, dim)


def _select(t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    t = t.index_select(0, rows.to(t.device))
    return t.index_select(1, cols.to(t.device)) if t.dim() > 1 else t


def _register(layer: _Layer, weight: torch.Tensor) -> None:
    """Register the layer's reparametrization again on ``weight`` (a plain tensor)."""
    m, attr, s = layer.module, layer.attr, layer.settings
    if attr in m._parameters:
        del m._parameters[attr]
    m.register_parameter(attr, nn.Parameter(weight.detach().clone()))
    with warnings.catch_warnings():  # the hook-based forms are deprecated; the user chose them
        warnings.simplefilter("ignore", FutureWarning)
        _apply(layer)


def _apply(layer: _Layer) -> None:
    m, attr, s = layer.module, layer.attr, layer.settings
    if layer.kind == "spectral":
        if layer.style == "parametrize":
            torch.nn.utils.parametrizations.spectral_norm(
                m, attr, n_power_iterations=s["n_power_iterations"], eps=s["eps"], dim=s["dim"])
        else:
            torch.nn.utils.spectral_norm(m, attr, n_power_iterations=s["n_power_iterations"],
                                         eps=s["eps"], dim=s["dim"])
    elif layer.style == "parametrize":
        torch.nn.utils.parametrizations.weight_norm(m, attr, dim=s["dim"])
    else:
        torch.nn.utils.weight_norm(m, attr, dim=s["dim"])


def _set(layer: _Layer, **values: torch.Tensor) -> None:
    """Copy the user's tensors into the re-registered reparametrization."""
    m, attr = layer.module, layer.attr
    if layer.style == "parametrize":
        plist = m.parametrizations[attr]
        where = {"original": plist.original if layer.kind == "spectral" else None,
                 "g": getattr(plist, "original0", None), "v": getattr(plist, "original1", None)}
        if layer.kind == "spectral":
            where.update(u=plist[0]._u, v=plist[0]._v)
    else:
        where = {"original": getattr(m, attr + "_orig", None), "g": getattr(m, attr + "_g", None),
                 "v": getattr(m, attr + "_v", None), "u": getattr(m, attr + "_u", None)}
    with torch.no_grad():
        for k, t in values.items():
            where[k].copy_(t.to(where[k].dtype))


def _weight_matrix(layer: _Layer, w: torch.Tensor) -> torch.Tensor:
    dim = layer.settings["dim"]
    if dim != 0:
        w = w.permute(dim, *[d for d in range(w.dim()) if d != dim])
    return w.reshape(w.shape[0], -1)


@dataclass
class Unwrapped:
    """The reparametrized layers of a model, unwrapped for pruning (:func:`unwrapped`)."""

    layers: List[_Layer] = field(default_factory=list)

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        """Around the pruning of one step's groups: which rows and columns of each unwrapped
        weight are kept (see the module docstring). The real values are back on leaving."""
        if not self.layers:
            yield
            return
        saved = []
        for layer in self.layers:
            w = getattr(layer.module, layer.attr)
            n1 = w.shape[1] if w.dim() > 1 else 1
            code = torch.arange(w.shape[0], dtype=torch.float64).view(-1, *[1] * (w.dim() - 1))
            code = code * n1
            if w.dim() > 1:
                code = code + torch.arange(n1, dtype=torch.float64).view(1, -1, *[1] * (w.dim() - 2))
            code = code.expand(w.shape).contiguous().to(w.device)
            saved.append((w.detach().clone(), n1, w.dtype))
            layer.module._parameters[layer.attr] = nn.Parameter(code, w.requires_grad)
        try:
            yield
        finally:
            for layer, (before, n1, dtype) in zip(self.layers, saved):
                code = getattr(layer.module, layer.attr).detach()
                flat = code.reshape(code.shape[0], code.shape[1] if code.dim() > 1 else 1, -1)
                rows = (flat[:, 0, 0] // n1).round().long().cpu()
                cols = (flat[0, :, 0] % n1).round().long().cpu() if code.dim() > 1 else None
                kept = before.index_select(0, rows.to(before.device))
                if cols is not None:
                    kept = kept.index_select(1, cols.to(before.device))
                layer.module._parameters[layer.attr] = nn.Parameter(kept.to(dtype))
                layer.rows = layer.rows[rows] if layer.rows is not None else rows
                if cols is not None:
                    layer.cols = layer.cols[cols] if layer.cols is not None else cols

    def restore(self) -> None:
        """Register each reparametrization again (see the module docstring), and check what
        holds: weight norm exact, spectral norm's kept entries and sigma."""
        for layer in self.layers:
            w0 = layer.tensors["weight"]
            if layer.rows is None:
                layer.rows = torch.arange(w0.shape[0])
            if layer.cols is None and w0.dim() > 1:
                layer.cols = torch.arange(w0.shape[1])
            cols = layer.cols if layer.cols is not None else torch.arange(1)
            effective = getattr(layer.module, layer.attr).detach().clone()
            if not layer.pruned:
                _register(layer, effective)
                _set(layer, **{k: t for k, t in layer.tensors.items() if k != "weight"})
                continue
            if layer.kind == "weight":
                v = layer.tensors["v"]
                dim = layer.settings["dim"]
                v_new = _select(v, layer.rows, cols)
                if dim == -1:
                    g_new = layer.tensors["g"] * _norm_except(v_new, -1) / _norm_except(v, -1)
                else:
                    idx = (layer.rows if dim == 0 else cols).to(v.device)
                    g_new = (layer.tensors["g"].index_select(dim, idx)
                             * _norm_except(v_new, dim) / _norm_except(v.index_select(dim, idx), dim))
                _register(layer, v_new)
                _set(layer, g=g_new, v=v_new)
                got = getattr(layer.module, layer.attr).detach()
                tol = 1e-5 * float(effective.abs().max()) + 1e-7
                if got.shape != effective.shape or float((got - effective).abs().max()) > tol:
                    raise UserError(f"weight norm on layer {layer.name!r}: the re-registered "
                                    "weight differs from the pruned one (a tp-vgg bug; "
                                    "--debug shows where)")
                continue
            original = _select(layer.tensors["original"], layer.rows, cols)
            _register(layer, original)
            mat = _weight_matrix(layer, original.float())
            U, S, Vh = torch.linalg.svd(mat, full_matrices=False)
            sign = torch.sign(U[:, 0].sum()) or 1.0
            _set(layer, original=original, u=U[:, 0] * sign, v=Vh[0] * sign)
            layer.sigma = float(S[0])
            layer.sigma_before = float(torch.linalg.matrix_norm(
                _weight_matrix(layer, layer.tensors["original"].float()), ord=2))
            kept = _stored_original(layer)
            if not torch.equal(kept, original.to(kept.dtype)):
                raise UserError(f"spectral norm on layer {layer.name!r}: the kept entries of "
                                "its weight changed (a tp-vgg bug)")
            now = (getattr(layer.module, layer.attr).detach() if layer.style == "parametrize"
                   else _hook_weight(layer))
            sigma = float((original.float().abs().max()) / max(float(now.float().abs().max()),
                                                               1e-30))
            if abs(sigma - layer.sigma) > 1e-3 * layer.sigma:
                raise UserError(f"spectral norm on layer {layer.name!r}: sigma re-estimated as "
                                f"{sigma:.4g}, not the kept weight's {layer.sigma:.4g} "
                                "(a tp-vgg bug)")

    def notes(self) -> List[str]:
        out = []
        wn = [l.name for l in self.layers if l.kind == "weight" and l.pruned]
        if wn:
            out.append(f"weight norm on {_list(wn)}: pruned on the user's g and v (g rescaled to "
                       "the kept part of v), re-registered; exact")
        sn = [l for l in self.layers if l.kind == "spectral" and l.pruned]
        if sn:
            ratios = [l.sigma_before / l.sigma for l in sn if l.sigma]
            out.append(
                f"spectral norm on {_list([l.name for l in sn])}: the un-normalized weight keeps "
                "its rows and columns, but sigma (its largest singular value) is re-estimated on "
                "the kept part, so each normalized weight is scaled by sigma_before/sigma_after "
                f"= {min(ratios):.3g}..{max(ratios):.3g}: the pruned model is not the masked "
                "original there (checked: output shapes, the kept entries of the weight, sigma "
                "exact); fine-tune or re-estimate before use")
        return out


def _stored_original(layer: _Layer) -> torch.Tensor:
    m = layer.module
    if layer.style == "parametrize":
        return m.parametrizations[layer.attr].original.detach()
    return getattr(m, layer.attr + "_orig").detach()


def _hook_weight(layer: _Layer) -> torch.Tensor:
    hook = next(h for h in layer.module._forward_pre_hooks.values()
                if isinstance(h, _SpectralNormHook))
    return hook.compute_weight(layer.module, do_power_iteration=False).detach()


def _list(names: List[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:4]) + (", ..." if len(names) > 4 else "")
    return f"{len(names)} layer{'s' if len(names) != 1 else ''} ({shown})"


@contextlib.contextmanager
def unwrapped(model: nn.Module) -> Iterator[Unwrapped]:
    """While open, every spectral-norm or weight-norm layer of ``model`` holds its effective
    weight as a plain parameter; on leaving, the reparametrization is registered again on the
    kept rows and columns (:meth:`Unwrapped.restore`). Prune inside
    :meth:`Unwrapped.tracking`."""
    modes = {m: m.training for m in model.modules()}
    model.eval()  # the effective weight as eval computes it (no power iteration)
    try:
        state = Unwrapped(_find(model))
        for layer in state.layers:
            _strip(layer)
    finally:
        for m, training in modes.items():
            m.train(training)
    try:
        yield state
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to tell
            state.restore()
        raise
    state.restore()
