"""Adaptive average pools written as what they are at a fixed input size: a linear map.

torchvision's VGGs pool the last feature map to 7x7 (``nn.AdaptiveAvgPool2d((7, 7))``) and timm's
``ConvMlp`` head pools to at least 7x7 inside its forward. At an input size whose feature map is
not a multiple of 7 (e.g. 1x1 at ``--input-size 32``) ``torch.onnx.export`` refuses the pool
("output size that are not factor of input size"). At a fixed input size the pool is a fixed
matrix per axis -- output[p, q] = sum_ij A[p, i] B[q, j] x[i, j], with A and B the bin averages --
so the deployment form can drop it:

* torchvision VGG, pooling that replicates (h*w <= 7*7): folded into ``classifier[0]``, whose
  weight becomes W' = einsum(W, A, B) over C*h*w inputs -- exact, and the replicated MACs go;
* timm ``ConvMlp``: folded into ``fc1``'s kernel the same way (its head becomes a Sequential);
* any other ``nn.AdaptiveAvgPool2d`` that ONNX cannot export: replaced by :class:`MatrixPool`,
  two constant MatMuls.

Only the exported copy changes; :func:`fold_adaptive_pools` checks it against the original.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from tp_vgg.models.zoo import select_logits


def pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The (n_out, n_in) matrix of 1-d adaptive average pooling: row p averages input indices
    floor(p*n_in/n_out) .. ceil((p+1)*n_in/n_out)-1, as ``F.adaptive_avg_pool1d`` does."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for p in range(n_out):
        lo, hi = (p * n_in) // n_out, -((-(p + 1) * n_in) // n_out)
        m[p, lo:hi] = 1.0 / (hi - lo)
    return m


class MatrixPool(nn.Module):
    """``AdaptiveAvgPool2d`` at one input size, as ``A @ x @ B.T`` (exports as two MatMuls)."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("rows", rows.float())
        self.register_buffer("cols_t", cols.t().contiguous().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols_t)


def _out_size(pool: nn.AdaptiveAvgPool2d, hw: Tuple[int, int]) -> Tuple[int, int]:
    size = pool.output_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return tuple(hw[i] if size[i] is None else int(size[i]) for i in range(2))


def onnx_exports(hw: Tuple[int, int], out: Tuple[int, int]) -> bool:
    """Whether torch.onnx exports this adaptive pool as it is (output divides input)."""
    return all(o > 0 and i % o == 0 for i, o in zip(hw, out))


def _input_shapes(model: nn.Module, x: torch.Tensor, kinds) -> Dict[str, Tuple[int, ...]]:
    shapes: Dict[str, Tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, args) -> None:
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [m.register_forward_pre_hook(record(name))
             for name, m in model.named_modules() if kinds(m)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _is_timm_conv_mlp(m: nn.Module) -> bool:
    return (type(m).__name__ == "ConvMlp" and type(m).__module__.startswith("timm.")
            and isinstance(getattr(m, "fc1", None), nn.Conv2d)
            and isinstance(getattr(m, "input_kernel_size", None), int))


def _is_torchvision_vgg(m: nn.Module) -> bool:
    from torchvision.models.vgg import VGG

    return (type(m) is VGG and isinstance(m.avgpool, nn.AdaptiveAvgPool2d)
            and isinstance(m.classifier, nn.Sequential) and isinstance(m.classifier[0], nn.Linear))


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


@torch.no_grad()
def _fold_into_linear(lin: nn.Linear, c: int, a: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    (p, h), (q, w) = a.shape, b.shape
    wt = lin.weight.detach().double().reshape(lin.out_features, c, p, q)
    new = nn.Linear(c * h * w, lin.out_features, bias=lin.bias is not None)
    new.weight.copy_(torch.einsum("ocpq,pi,qj->ocij", wt, a, b).reshape(lin.out_features, -1))
    if lin.bias is not None:
        new.bias.copy_(lin.bias)
    return new.to(lin.weight.dtype)


@torch.no_grad()
def _fold_into_conv(conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor) -> nn.Conv2d:
    """``conv`` (kernel = pooled size, no padding/stride) after the pool, as one conv."""
    h, w = a.shape[1], b.shape[1]
    new = nn.Conv2d(conv.in_channels, conv.out_channels, (h, w), bias=conv.bias is not None,
                    groups=conv.groups)
    new.weight.copy_(torch.einsum("ocpq,pi,qj->ocij", conv.weight.detach().double(), a, b))
    if conv.bias is not None:
        new.bias.copy_(conv.bias)
    return new.to(conv.weight.dtype)


def _eye_or_pool(n_in: int, k: int) -> torch.Tensor:
    # timm pools an axis only when it is shorter than the kernel; a longer axis is left alone
    return pool_matrix(n_in, k) if n_in < k else torch.eye(k, dtype=torch.float64)


def fold_adaptive_pools(model: nn.Module, x: torch.Tensor, output_key: Optional[str] = None,
                        atol: float = 1e-5, rtol: float = 1e-4) -> Tuple[nn.Module, List[str]]:
    """A copy of ``model`` (eval) in which every adaptive average pool that ONNX cannot export at
    ``x``'s size is folded or written as matrices (see the module docstring), and one line per
    change. The copy's logits (``output_key`` of a dict output) are checked against ``model``'s on
    ``x``; a difference raises RuntimeError.
    Returns ``model`` itself and no lines when nothing needs a change."""
    model = model.eval()
    shapes = _input_shapes(model, x, lambda m: isinstance(m, nn.AdaptiveAvgPool2d)
                           or _is_timm_conv_mlp(m))
    plans = []
    for name, shape in shapes.items():
        m = model.get_submodule(name)
        hw = tuple(shape[-2:])
        if isinstance(m, nn.AdaptiveAvgPool2d):
            out = _out_size(m, hw)
            if hw != out and not onnx_exports(hw, out):
                plans.append(("pool", name, shape, out))
        elif _is_timm_conv_mlp(m) and min(hw) < m.input_kernel_size:
            plans.append(("convmlp", name, shape, None))
    if not plans:
        return model, []
    folded, notes = copy.deepcopy(model), []
    for kind, name, shape, out in plans:
        c, h, w = shape[-3:]
        if kind == "convmlp":
            m = folded.get_submodule(name)
            k = m.input_kernel_size
            a, b = _eye_or_pool(h, k), _eye_or_pool(w, k)
            fc1 = _fold_into_conv(m.fc1, a, b)
            _set(folded, name, nn.Sequential(fc1, m.act1, m.drop, m.fc2, m.act2))
            notes.append(f"folded {name}'s adaptive pool ({h}x{w} -> {max(h, k)}x{max(w, k)}) "
                         f"into {name}.fc1: kernel {k}x{k} -> {fc1.kernel_size[0]}x"
                         f"{fc1.kernel_size[1]}")
            continue
        a, b = pool_matrix(h, out[0]), pool_matrix(w, out[1])
        parent_name, _, leaf = name.rpartition(".")
        parent = folded.get_submodule(parent_name) if parent_name else folded
        lin = getattr(parent, "classifier", [None])[0] if _is_torchvision_vgg(parent) else None
        if (leaf == "avgpool" and lin is not None and h * w <= out[0] * out[1]
                and lin.in_features == c * out[0] * out[1]):
            new = _fold_into_linear(lin, c, a, b)
            parent.avgpool, parent.classifier[0] = nn.Identity(), new
            where = f"{parent_name}.classifier.0" if parent_name else "classifier.0"
            notes.append(f"folded {name} ({h}x{w} -> {out[0]}x{out[1]}) into {where}: its inputs "
                         f"{lin.in_features} -> {new.in_features}")
        else:
            _set(folded, name, MatrixPool(a, b))
            notes.append(f"wrote {name} ({h}x{w} -> {out[0]}x{out[1]}) as two matrix products")
    folded.eval()
    with torch.no_grad():
        want = select_logits(model(x), output_key)
        got = select_logits(folded(x), output_key)
    if not torch.allclose(got, want, rtol=rtol, atol=atol * max(1.0, float(want.abs().max()))):
        raise RuntimeError(f"folding the adaptive pools changed the output by "
                           f"{float((got - want).abs().max()):.3g}")
    return folded, notes
