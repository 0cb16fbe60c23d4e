"""Reading what ``tp-vgg export --onnx`` wrote: a model that needs no Python model code.

An ONNX file is a graph of standard operators and their weights; onnxruntime runs it, and nothing
in it is Python that tp-vgg would import or call, so it needs no trust. tp-vgg reads the
preprocessing that :func:`tp_vgg.export.exporters.export_onnx` recorded in the file's metadata and feeds
the model as ``tp-vgg eval --checkpoint`` feeds the checkpoint -- the same :class:`Batches`,
:class:`BatchTransform` and :func:`tp_vgg.train.evaluation.evaluate` -- so both report the same top-1.

MACs are counted from the graph (``Conv``, ``Gemm`` and ``MatMul`` nodes, shapes from onnx's
shape inference at batch 1) in fvcore's convention, one multiply-add = 1: the same numbers as
``tp-vgg profile --checkpoint``. Parameters are the graph's float weights (after the exporter's
BatchNorm folding).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from tp_vgg.data.batches import BatchTransform
from tp_vgg.data.datasets import ImageData
from tp_vgg.data.declared import check_class_names, choose_normalization, recorded_class_names
from tp_vgg.data.preprocessing import input_hw, size_value
from tp_vgg.errors import UserError, first_line
from tp_vgg.export.exporters import METADATA_KEY
from tp_vgg.models.counting import Counts, LayerCount

NEEDS = "pip install 'tp-vgg[export]'"


@dataclass
class OnnxInfo:
    """What a reader needs to know about an exported model."""

    input_name: str
    in_channels: int
    input_size: Any       # S, or [H, W] for a non-square input
    num_outputs: int
    metadata: Dict[str, Any] = field(default_factory=dict)  # tp-vgg's record ({} if none)

    @property
    def mean_std(self) -> Optional[tuple]:
        """The recorded normalization, or None (then the data's own statistics are used, as for a
        checkpoint that stores none)."""
        pre = self.metadata.get("preprocessing") or {}
        mean, std = pre.get("mean"), pre.get("std")
        if mean is None or std is None:
            return None
        if not (_numbers(mean, self.in_channels) and _numbers(std, self.in_channels)
                and all(s > 0 for s in std)):
            raise UserError(f"the recorded preprocessing has mean {mean!r} and std {std!r}; "
                            f"expected {self.in_channels} numbers each (std > 0)")
        return [float(m) for m in mean], [float(s) for s in std]


def _numbers(values: Any, n: int) -> bool:
    return (isinstance(values, list) and len(values) == n and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))


def _dim(d: Any) -> Optional[int]:
    return d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None


def _recorded_size(v: Any) -> Optional[List[int]]:
    """A recorded input size (S or [H, W]) as [H, W], or None when it is not one."""
    if _dim(v):
        return [v, v]
    if isinstance(v, list) and len(v) == 2 and all(_dim(d) for d in v):
        return list(v)
    return None


class OnnxModel(nn.Module):
    """An ONNX file run by onnxruntime (CPU) behind the ``nn.Module`` call interface: takes a
    float NCHW batch, returns the logits as a tensor."""

    def __init__(self, path: str, threads: Optional[int] = None):
        super().__init__()
        self.path = path
        self.session = _session(path, threads or torch.get_num_threads())
        self.info = _info(path, self.session)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.info.input_name: x.detach().cpu().float().contiguous().numpy()})
        return torch.from_numpy(out[0])


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _session(path: str, threads: int):
    if not os.path.exists(path):
        raise UserError(f"ONNX file {path!r} does not exist")
    if os.path.isdir(path):
        raise UserError(f"ONNX file {path!r} is a folder; give the .onnx file")
    if importlib.util.find_spec("onnxruntime") is None:
        raise UserError(f"reading {path!r} needs onnxruntime: {NEEDS}")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: the error below says what went wrong
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # junk, truncated or an unsupported graph
        raise UserError(f"{path!r} is not an ONNX model onnxruntime can load: {first_line(e)}") from e


def _info(path: str, session) -> OnnxInfo:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    try:
        metadata = json.loads(raw) if raw else {}
    except ValueError:
        metadata = {}
    if not isinstance(metadata, dict):
        metadata = {}
    pre = metadata.get("preprocessing") if isinstance(metadata.get("preprocessing"), dict) else {}
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise UserError(f"{path!r} takes {len(inputs)} input(s) of shape "
                        f"{inputs[0].shape if inputs else []}; tp-vgg reads image classifiers "
                        "with one NCHW input")
    _, c, h, w = inputs[0].shape
    size = [_dim(h), _dim(w)] if _dim(h) and _dim(w) else _recorded_size(pre.get("input_size"))
    c = _dim(c) or _dim(pre.get("in_channels"))
    if c is None or size is None:
        raise UserError(f"{path!r} has input shape {inputs[0].shape} and no recorded input size; "
                        "tp-vgg reads NCHW inputs of a fixed size (as tp-vgg export writes)")
    size = size_value(size)
    n = _dim(outputs[0].shape[-1]) if outputs and outputs[0].shape else None
    if n is None:  # a dynamic class axis: run once
        x = torch.zeros(1, c, *input_hw(size)).numpy()
        n = int(session.run(None, {inputs[0].name: x})[0].shape[-1])
    return OnnxInfo(inputs[0].name, int(c), size, int(n), metadata)


def load_onnx(path: str, threads: Optional[int] = None) -> OnnxModel:
    """An exported model, ready to run (``threads``: onnxruntime's intra-op threads; default
    torch's thread count)."""
    return OnnxModel(path, threads).eval()


def evaluate_onnx(model: OnnxModel, data: ImageData, split: str = "test",
                  batch_size: int = 256):
    """Loss, top-1 and top-5 of the exported model on one split, preprocessed as recorded."""
    from tp_vgg.train import loop as train

    info = model.info
    if info.in_channels != data.in_channels:
        raise UserError(f"the model takes {info.in_channels}-channel input but {data.name} images "
                        f"have {data.in_channels} channels")
    if info.num_outputs != data.num_classes:
        raise UserError(f"the model has {info.num_outputs} outputs but {data.name} has "
                        f"{data.num_classes} classes; use a model trained on these classes")
    check_class_names(data, recorded_class_names(info.metadata.get("preprocessing")), "ONNX file")
    mean, std, _ = choose_normalization(data, info.mean_std, "onnx")
    batches = data.batches(split, batch_size, BatchTransform(mean, std, info.input_size), "cpu")
    return train.evaluate(model, batches)


# --------------------------------------------------------------------------------------------
# MACs and parameters from the graph.

def count_onnx(path: str) -> Counts:
    """MACs (1 multiply-add = 1) of the Conv/Gemm/MatMul nodes at batch 1, and parameters (float
    initializers), from the graph alone."""
    if importlib.util.find_spec("onnx") is None:
        raise UserError(f"counting the MACs of {path!r} needs the onnx package: {NEEDS}")
    import numpy as np
    import onnx

    proto = onnx.load(path)
    for vi in proto.graph.input:  # batch 1
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = 1
    proto = onnx.shape_inference.infer_shapes(proto)
    g = proto.graph
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(g.value_info) + list(g.input) + list(g.output)}
    inits = {t.name: t for t in g.initializer}
    floats = {name: tuple(t.dims) for name, t in inits.items()
              if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                 onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)}
    layers: List[LayerCount] = []
    skipped: Dict[str, int] = {}
    for node in g.node:
        weights = [floats[i] for i in node.input[1:] if i in floats]
        params = sum(int(np.prod(s)) for s in weights)
        out = shapes.get(node.output[0]) if node.output else None
        if node.op_type == "Conv" and node.input[1] in floats and out and len(out) == 4:
            c_out, c_in_g, kh, kw = floats[node.input[1]]
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            macs = out[1] * out[2] * out[3] * c_in_g * kh * kw
            layers.append(LayerCount(node.name, "Conv", c_in_g * groups, c_out, int(macs), params))
        elif node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in floats:
            k, n = floats[node.input[1]][-2:]
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            if trans_b:
                k, n = n, k
            rows = int(np.prod(out[:-1])) if out else 1
            layers.append(LayerCount(node.name, node.op_type, int(k), int(n), int(rows * k * n), params))
        elif node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            skipped[node.op_type] = skipped.get(node.op_type, 0) + 1
    total = sum(int(np.prod(s)) for s in floats.values())
    return Counts(sum(l.macs for l in layers), total, layers, skipped)
