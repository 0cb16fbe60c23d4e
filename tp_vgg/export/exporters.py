"""Inference forms of a (pruned) model: Conv-BN folding and ONNX export.

Folding uses torch's own ``torch.nn.utils.fusion.fuse_conv_bn_eval`` on every Conv2d that is
directly followed by a BatchNorm2d inside an ``nn.Sequential`` (every VGG block); the BN becomes
an ``nn.Identity``. ONNX export goes through ``torch.onnx.export`` and, when onnxruntime is
installed, the exported file is run on the same input and compared with PyTorch's output.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from tp_vgg.data.preprocessing import Preprocessing, input_hw
from tp_vgg.errors import UserError
from tp_vgg.export.folding import fold_adaptive_pools
from tp_vgg.models.zoo import LogitsOnly, ModelSpec, select_logits


def fuse_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold each BatchNorm2d into the Conv2d right before it (eval-mode statistics).

    Returns the model (a copy unless ``inplace``) in eval mode. BatchNorms that do not directly
    follow a Conv2d in an ``nn.Sequential`` are left as they are; :func:`count_bn` tells.
    """
    m = model if inplace else copy.deepcopy(model)
    m.eval()
    for seq in [s for s in m.modules() if isinstance(s, nn.Sequential)]:
        keys = list(seq._modules)
        for a, b in zip(keys, keys[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if (type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d)
                    and bn.num_features == conv.out_channels and bn.track_running_stats):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return m


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@dataclass
class OnnxCheck:
    """PyTorch vs onnxruntime on the same input; ``None`` fields when onnxruntime is missing."""

    checked: bool
    max_abs_diff: Optional[float] = None
    max_abs_output: Optional[float] = None
    providers: Optional[list] = None
    folded: List[str] = field(default_factory=list)  # what fold_adaptive_pools changed


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def onnx_available() -> bool:
    return importlib.util.find_spec("onnx") is not None


@torch.no_grad()
def max_abs_diff(a: nn.Module, b: nn.Module, spec: ModelSpec, batch: int = 2, seed: int = 0) -> float:
    """Largest |difference| of the logits of ``a`` and ``b`` (eval mode) on one random batch."""
    s = spec.resolved()
    x = torch.randn(batch, s.in_channels, *input_hw(s.input_size),
                    generator=torch.Generator().manual_seed(seed))
    was = (a.training, b.training)
    a.eval(), b.eval()
    try:
        return float((select_logits(a(x), spec.output_key)
                      - select_logits(b(x), spec.output_key)).abs().max())
    finally:
        a.train(was[0]), b.train(was[1])


def export_program(model: nn.Module, spec: ModelSpec, path: str) -> None:
    """Write ``model`` (eval, CPU, fp32) as a ``torch.export`` program with a dynamic batch axis;
    ``torch.export.load(path).module()`` runs it without tp-vgg or the model's code."""
    from tp_vgg.files import write_with

    wrapped = LogitsOnly(copy.deepcopy(model).cpu().float().eval(), spec.output_key).eval()
    x = spec.example_input(batch=2)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(wrapped, (x,), dynamic_shapes=({0: batch},))
    write_with(path, lambda tmp: torch.export.save(program, tmp))


# The ONNX metadata_props key under which tp-vgg records, as JSON, what a reader needs to feed
# the model (tp_vgg.export.onnx_eval reads it): the preprocessing and where the model came from.
METADATA_KEY = "tp_vgg"


def onnx_metadata(spec: ModelSpec, preprocessing: Optional[Preprocessing] = None,
                  meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The record :func:`export_onnx` writes into the file: preprocessing (input size, channels,
    mean/std, class names), the model's name and a few facts from the checkpoint's meta."""
    from tp_vgg import __version__

    s = spec.resolved()
    pre = Preprocessing.of(preprocessing).to_dict()
    pre.update(input_size=s.input_size, in_channels=s.in_channels)
    keep = ("importance", "ratio", "macs_before", "macs_after", "params_before", "params_after")
    return {"tp_vgg_version": __version__, "model": s.name, "output_key": s.output_key,
            "preprocessing": {k: pre.get(k) for k in ("input_size", "in_channels", "mean", "std",
                                                      "class_names", "dataset")},
            "meta": {k: v for k, v in (meta or {}).items() if k in keep}}


def export_onnx(model: nn.Module, spec: ModelSpec, path: str, opset: int = 17,
                check: bool = True, atol: float = 1e-6, rtol: float = 1e-3,
                metadata: Optional[Dict[str, Any]] = None) -> OnnxCheck:
    """Write ``model`` (eval mode, CPU, fp32) to ``path`` as ONNX with a dynamic batch axis.

    ``metadata`` (see :func:`onnx_metadata`; default: from ``spec`` alone) is stored as JSON under
    ``METADATA_KEY`` in the file's metadata_props, so that ``tp-vgg eval --model FILE.onnx``
    preprocesses images as the checkpoint did. With ``check`` and onnxruntime installed, the file
    is run on a batch of two random inputs and must match PyTorch within
    ``atol + rtol * max|output|``; a mismatch raises RuntimeError. The file is written atomically.
    """
    from tp_vgg.files import write_with

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"--onnx {path!r}: folder {folder!r} does not exist")
    if not onnx_available():
        raise UserError("ONNX export needs the onnx package: pip install 'tp-vgg[export]'")
    inner = copy.deepcopy(model).cpu().float().eval()
    x = spec.example_input(batch=2)
    # an adaptive pool ONNX cannot export at this input size is folded (exact; checked below
    # against the unfolded model, like the file itself)
    folded, notes = fold_adaptive_pools(inner, x, spec.output_key)
    reference = LogitsOnly(inner, spec.output_key).eval()
    wrapped = LogitsOnly(folded, spec.output_key).eval()

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (x,), tmp, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset, dynamo=False)
        _set_metadata(tmp, metadata if metadata is not None else onnx_metadata(spec))
        if check and onnxruntime_available():
            result[0] = _check(reference, x, tmp, atol, rtol)

    result = [OnnxCheck(checked=False)]
    write_with(path, write)
    result[0].folded = notes
    return result[0]


def _set_metadata(path: str, metadata: Dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(path)
    for i in reversed(range(len(proto.metadata_props))):
        if proto.metadata_props[i].key == METADATA_KEY:
            del proto.metadata_props[i]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(proto, path)


def _check(model: nn.Module, x: torch.Tensor, path: str, atol: float, rtol: float) -> OnnxCheck:
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    if got.shape != want.shape:
        raise RuntimeError(f"onnxruntime output shape {got.shape} != PyTorch {want.shape}")
    diff = float(np.abs(got - want).max())
    scale = float(np.abs(want).max())
    if not diff <= atol + rtol * scale:
        raise RuntimeError(f"onnxruntime and PyTorch outputs differ by {diff:.3g} "
                           f"(outputs up to {scale:.3g})")
    return OnnxCheck(True, diff, scale, sess.get_providers())


@dataclass
class ExportConfig:
    """What `tp-vgg export` writes: ``onnx`` and/or ``pt2`` files, BatchNorm folded first with
    ``fuse_bn``; the ONNX file checked with onnxruntime unless ``check`` is off."""

    onnx: Optional[str] = None
    pt2: Optional[str] = None
    fuse_bn: bool = False
    opset: int = 17
    check: bool = True

    def validate(self) -> None:
        if not self.onnx and not self.pt2:
            raise UserError("nothing to write: give --onnx OUT.onnx and/or --pt2 OUT.pt2 "
                            "(ExportConfig.onnx / ExportConfig.pt2)")
        for flag, path in (("--onnx", self.onnx), ("--pt2", self.pt2)):
            if path:
                folder = os.path.dirname(os.path.abspath(path))
                if not os.path.isdir(folder):
                    raise UserError(f"{flag} {path!r}: folder {folder!r} does not exist")
                if os.path.isdir(path):
                    raise UserError(f"{flag} {path!r} is a folder; give a file name")
        if self.onnx and not onnx_available():
            raise UserError("--onnx needs the onnx package: pip install 'tp-vgg[export]'")


def export_model(model: nn.Module, spec: ModelSpec, cfg: ExportConfig,
                 preprocessing: Optional[Preprocessing] = None,
                 meta: Optional[Dict[str, Any]] = None, log=print) -> None:
    """Write ``model`` (eval mode) as ``cfg`` says, logging what was written and checked."""
    cfg.validate()
    model = model.eval()
    if cfg.fuse_bn:
        n = count_bn(model)
        fused = fuse_bn(model)
        diff = max_abs_diff(model, fused, spec)
        log(f"folded {n - count_bn(fused)} of {n} BatchNorm layers into the convs "
            f"(max |output difference| {diff:.2g})")
        model = fused
    if cfg.onnx:
        chk = export_onnx(model, spec, cfg.onnx, opset=cfg.opset, check=cfg.check,
                          metadata=onnx_metadata(spec, preprocessing, meta))
        for line in chk.folded:
            log(f"{line} (exact at input size {spec.resolved().input_size}; in the ONNX file only)")
        if chk.checked:
            log(f"wrote {cfg.onnx} (opset {cfg.opset}); onnxruntime matches PyTorch "
                f"(max |difference| {chk.max_abs_diff:.2g}, outputs up to {chk.max_abs_output:.2g})")
        else:
            why = "--no-check" if not cfg.check else "onnxruntime is not installed"
            log(f"wrote {cfg.onnx} (opset {cfg.opset}); not run with onnxruntime ({why})")
    if cfg.pt2:
        export_program(model, spec, cfg.pt2)
        log(f"wrote {cfg.pt2} (torch.export program; torch.export.load(path).module())")
