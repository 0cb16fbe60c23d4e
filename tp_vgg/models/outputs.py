"""What a model outputs, and the path that computes it.

A VGG inside a larger network returns more than logits: a tuple of class scores and boxes, a
dict of heads, a nested structure with strings or ``None`` in it. Pruning must follow every
output, so everything here works on the *tensor leaves* of the output (depth-first, in order):
torch-pruning traces all of them, every layer producing one is protected, and the masked
equivalence check compares each. ``--output-key`` keeps one meaning only: which leaf is the
logits for accuracy and fine-tuning (:func:`tp_vgg.models.zoo.select_logits`).

Some models post-process in ``forward`` what no tracer follows. torchvision's detectors in eval
mode resize, decode boxes and run NMS. The ``PATHS`` registry says how to run such a model's
*raw path*, the part made of layers: for torchvision's detection API (SSD, RetinaNet, FCOS) that
is ``head(backbone(x))``, whose outputs are the per-anchor class logits and box regressions.
Pruning, counting and timing run that path; the saved model is still the whole detector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn as nn

from tp_vgg.errors import UserError
from tp_vgg.registry import Registry


def leaves(output: Any, path: str = "output") -> List[Tuple[str, Any]]:
    """``(path, value)`` of every leaf of a nested tuple / list / dict, depth-first in order;
    the path is written as Python would index it (``output['aux'][0]``)."""
    if isinstance(output, (tuple, list)):
        return [leaf for i, v in enumerate(output) for leaf in leaves(v, f"{path}[{i}]")]
    if isinstance(output, dict):
        return [leaf for k, v in output.items() for leaf in leaves(v, f"{path}[{k!r}]")]
    return [(path, output)]


def tensor_leaves(output: Any) -> List[torch.Tensor]:
    """The tensors of ``output`` (:func:`leaves`), in order; other leaves are skipped."""
    return [v for _, v in leaves(output) if isinstance(v, torch.Tensor)]


def tensor_paths(output: Any) -> List[str]:
    """The path of each tensor leaf, in the order of :func:`tensor_leaves`."""
    return [p for p, v in leaves(output) if isinstance(v, torch.Tensor)]


def skipped_leaves(output: Any) -> List[str]:
    """The leaves that are not tensors, as ``"output['name'] (str)"``: not traced, not checked."""
    return [f"{p} ({type(v).__name__})" for p, v in leaves(output)
            if not isinstance(v, torch.Tensor)]


def _describe(output: Any) -> str:
    if isinstance(output, (str, bytes)):
        shown = repr(output)
        return f"the {type(output).__name__} {shown[:40] + '...' if len(shown) > 40 else shown}"
    if output is None:
        return "None"
    if isinstance(output, (tuple, list, dict)):
        kinds = sorted({type(v).__name__ for _, v in leaves(output)})
        return (f"a {type(output).__name__} of {', '.join(kinds)}" if kinds
                else f"an empty {type(output).__name__}")
    return f"a {type(output).__name__}"


def require_tensors(output: Any) -> List[torch.Tensor]:
    """:func:`tensor_leaves`, or a UserError naming what the model returned when it has none."""
    found = tensor_leaves(output)
    if not found:
        raise UserError(f"the model's forward returned {_describe(output)}, with no tensor in it; "
                        "tp-vgg prunes models whose output is a tensor, or a tuple, list or dict "
                        "holding tensors (return the logits)")
    return found


# --------------------------------------------------------------------------------------------
# The path that is traced, counted and timed.

@dataclass(frozen=True)
class Path:
    """How to run a kind of model for pruning: ``matches(model)``, ``run(model, x)`` (its raw
    output), a ``label`` for reports, and whether it can be fine-tuned by tp-vgg's
    classification loop."""

    name: str
    matches: Callable[[nn.Module], bool]
    run: Callable[[nn.Module, torch.Tensor], Any]
    label: str
    classifies: bool = True


PATHS: Registry = Registry("model path")


def _torchvision_detector(model: nn.Module) -> bool:
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD
    return isinstance(model, (SSD, RetinaNet, FCOS))


def _detector_raw(model: nn.Module, x: torch.Tensor) -> Any:
    """torchvision's one-stage detection API (SSD, RetinaNet, FCOS): the backbone's feature maps
    (a tensor or an OrderedDict of them) into the head, before anchors, decoding and NMS."""
    features = model.backbone(x)
    features = [features] if isinstance(features, torch.Tensor) else list(features.values())
    return model.head(features)


PATHS.register("torchvision-detection", Path(
    "torchvision-detection", _torchvision_detector, _detector_raw,
    "raw path head(backbone(x)): torchvision's detection transform, box decoding and NMS "
    "are not traced, counted or timed", classifies=False))


def _two_stage(model: nn.Module) -> bool:
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    return isinstance(model, GeneralizedRCNN)


def path_of(model: nn.Module) -> Optional[Path]:
    """The registered path for ``model``, or None: the model's own ``forward``."""
    for name in PATHS.names():
        p = PATHS.get(name)
        if p.matches(model):
            return p
    if _two_stage(model):
        raise UserError(f"{type(model).__name__} is a two-stage torchvision detector (region "
                        "proposals, then RoI heads): its proposals are selected by score, which "
                        "no tracer follows; tp-vgg prunes torchvision's one-stage detectors (SSD, "
                        "RetinaNet, FCOS), or prune its backbone as a model of its own")
    return None


def run(model: nn.Module, x: torch.Tensor) -> Any:
    """The model's raw output on ``x``: its registered path (:func:`path_of`) or ``model(x)``."""
    p = path_of(model)
    return p.run(model, x) if p is not None else model(x)


def classifies(model: nn.Module) -> bool:
    """Whether tp-vgg's classification loop (accuracy, fine-tuning) can run ``model``."""
    p = path_of(model)
    return p is None or p.classifies


def label(model: nn.Module) -> Optional[str]:
    """What was traced, counted and timed, when it is not the model's own forward."""
    p = path_of(model)
    return p.label if p is not None else None


class AllOutputs(nn.Module):
    """``model`` on its raw path (:func:`run`), returning its tensor leaves as a tuple (one
    tensor alone as itself): the form fvcore counts and the runtimes time."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = tensor_leaves(run(self.model, x))
        return out[0] if len(out) == 1 else tuple(out)
