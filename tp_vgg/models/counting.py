"""MACs and parameters with fvcore.

Convention (fvcore's): one fused multiply-add counts as one "flop"; we call it a MAC. MACs here are
the multiply-adds of convolutions and linear layers (and any matmul); BatchNorm, activations and
pooling count 0 -- BN folds into the preceding conv at inference. Counted at batch 1, at the
model's input size, in eval mode.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn

with warnings.catch_warnings():  # fvcore's focal_loss calls the deprecated torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis, parameter_count

from tp_vgg.models import outputs
from tp_vgg.models.zoo import ModelSpec, keep_mode, spec_of

# Ops fvcore counts by default that are not conv/linear work: counted as 0 MACs. (In fvcore 0.1.5
# ``set_op_handle(op, None)`` does not stop them being counted; a handle returning 0 does.)
ZERO_MAC_OPS = (
    "aten::batch_norm", "aten::group_norm", "aten::layer_norm", "aten::instance_norm",
    "aten::upsample_nearest2d", "aten::upsample_bilinear2d", "aten::adaptive_avg_pool2d",
    "aten::grid_sampler",
)


def _zero(inputs, outputs):
    return 0


@dataclass
class LayerCount:
    name: str
    type: str
    in_channels: Optional[int]
    out_channels: Optional[int]
    macs: int
    params: int


@dataclass
class Counts:
    """MACs (1 multiply-add = 1, fvcore's "flop") and parameters, total and per layer."""

    macs: int
    params: int
    layers: List[LayerCount] = field(default_factory=list)
    unsupported_ops: Dict[str, int] = field(default_factory=dict)  # op -> calls, counted as 0

    def to_dict(self) -> dict:
        return asdict(self)

    def layer(self, name: str) -> LayerCount:
        return next(l for l in self.layers if l.name == name)

    def __str__(self) -> str:
        return (f"{human(self.macs)} MACs (1 MAC = one multiply-add, fvcore's 'flop'), "
                f"{human(self.params)} params, {len(self.layers)} layers")


def _channels(m: nn.Module):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        return m.in_channels, m.out_channels
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return m.num_features, m.num_features
    return None, None


def count(model: nn.Module, spec: Optional[ModelSpec] = None,
          example: Optional[torch.Tensor] = None) -> Counts:
    """Count MACs and parameters of ``model`` at batch 1; the model's mode is kept. ``spec``
    (the input size) defaults to the one kept on a model tp-vgg built or loaded."""
    spec = spec_of(model, spec, "count") if example is None else spec
    device = next(model.parameters()).device
    if example is None:
        example = spec.example_input(batch=1, device=device)
    wrapped = outputs.AllOutputs(model)  # every output, on the model's raw path
    with keep_mode(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fv_logger = logging.getLogger("fvcore")
        level = fv_logger.level
        fv_logger.setLevel(logging.ERROR)
        try:
            model.eval()
            analysis = FlopCountAnalysis(wrapped, example)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            for op in ZERO_MAC_OPS:
                analysis.set_op_handle(op, _zero)
            with torch.no_grad():
                total = int(analysis.total())
                by_module = analysis.by_module()
                unsupported = dict(analysis.unsupported_ops())
        finally:
            fv_logger.setLevel(level)
    params = parameter_count(model)
    layers = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear,
                          nn.modules.batchnorm._BatchNorm)):
            cin, cout = _channels(m)
            layers.append(LayerCount(name, type(m).__name__, cin, cout,
                                     int(by_module.get("model." + name, 0)), int(params.get(name, 0))))
    return Counts(macs=total, params=int(params.get("", 0)), layers=layers,
                  unsupported_ops={k: int(v) for k, v in sorted(unsupported.items())})


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))
