"""Checks that a pruned model is what it claims to be.

The invariant: the pruned model computes exactly what the original computes with the removed
channels zeroed. :func:`zero_removed_channels` builds that zeroed original from a pruning history
(through the same DependencyGraph groups, so BN gamma/beta and conv biases are zeroed too). A
GroupNorm normalizes a group over all its channels, so there the zeroed original normalizes each
group over its kept channels only.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch_pruning as tp

from tp_vgg.models.zoo import ModelSpec
from tp_vgg.pruning import mapping
from tp_vgg.pruning.graph import build_graph

_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels,
            tp.prune_batchnorm_out_channels, tp.prune_instancenorm_out_channels,
            tp.prune_groupnorm_out_channels)


def _group_norm_over_kept(layer: nn.GroupNorm, gone: set) -> None:
    """Each group of ``layer`` normalized over its channels not in ``gone`` (written out, not
    F.group_norm); the channels in ``gone`` output zero."""
    size = layer.num_channels // layer.num_groups

    def hook(mod, args, out):
        x, y = args[0], torch.zeros_like(out)
        for g in range(mod.num_groups):
            kept = [c for c in range(g * size, (g + 1) * size) if c not in gone]
            if not kept:
                continue
            part = x[:, kept]
            dims = tuple(range(1, part.dim()))
            mean = part.mean(dims, keepdim=True)
            var = part.var(dims, unbiased=False, keepdim=True)
            z = (part - mean) / torch.sqrt(var + mod.eps)
            if mod.affine:
                shape = (1, -1) + (1,) * (part.dim() - 2)
                z = z * mod.weight[kept].view(shape) + mod.bias[kept].view(shape)
            y[:, kept] = z
        return y

    layer.register_forward_hook(hook)


@mapping.scoped
@torch.no_grad()
def zero_removed_channels(model: nn.Module, spec: ModelSpec, history: List[list],
                          example: Optional[torch.Tensor] = None) -> nn.Module:
    """Zero, in ``model`` (an unpruned copy), every output channel the history removed: conv and
    linear weight rows and biases, and BN gamma and beta of the same channels. Indices in later
    history entries are mapped back to the original numbering."""
    if example is None:
        example = spec.example_input(device=next(model.parameters()).device)
    graph = build_graph(model, spec, example)
    modules = dict(model.named_modules())
    alive: Dict[str, List[int]] = {}
    gone: Dict[nn.Module, set] = {}
    for name, is_out, idxs in history:
        if not is_out:
            raise ValueError(f"in-channel pruning of {name} is not supported by this check")
        root = modules[name]
        n = graph.get_out_channels(root)
        live = alive.setdefault(name, list(range(n)))
        original = [live[i] for i in idxs]
        group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels,
                                        original)
        for dep, dep_idxs in group:
            if dep.handler in _OUT_FNS:
                layer = dep.target.module
                ii = torch.as_tensor([int(i) for i in dep_idxs], dtype=torch.long)
                # the running mean too: an affine-free BN then maps a zero channel to zero
                for a in ("weight", "bias", "running_mean"):
                    t = getattr(layer, a, None)
                    if t is None:
                        continue
                    if a == "weight" and isinstance(layer, nn.ConvTranspose2d):
                        t[:, ii] = 0  # (in, out, kh, kw)
                    else:
                        t[ii] = 0
                gone.setdefault(layer, set()).update(int(i) for i in dep_idxs)
        drop = set(original)
        alive[name] = [c for c in live if c not in drop]
    for layer, channels in gone.items():
        if isinstance(layer, nn.GroupNorm):
            _group_norm_over_kept(layer, channels)
    return model
