"""Checks that a pruned model is what it claims to be.

The invariant: the pruned model computes exactly what the original computes with the removed
channels zeroed. :func:`zero_removed_channels` builds that zeroed original from a pruning history
(through the same DependencyGraph groups, so BN gamma/beta and conv biases are zeroed too).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch_pruning as tp

from tp_vgg.models import ModelSpec
from tp_vgg.pruning import build_graph

_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels,
            tp.prune_batchnorm_out_channels)


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
                layer.weight[ii] = 0
                if getattr(layer, "bias", None) is not None:
                    layer.bias[ii] = 0
        drop = set(original)
        alive[name] = [c for c in live if c not in drop]
    return model
