"""Evaluation and BatchNorm recalibration: :func:`evaluate` (loss, top-1 and top-5 averaged over
samples, summed over ranks), :func:`evaluate_on` a dataset split with a checkpoint's
preprocessing, :func:`recalibrate_bn` (re-estimate BatchNorm statistics after pruning), and
:func:`resolve_preprocessing`."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn

from tp_vgg.data.batches import Batches, BatchTransform
from tp_vgg.data.datasets import ImageData
from tp_vgg.data.declared import check_class_names, choose_normalization, recorded_class_names
from tp_vgg.data.preprocessing import Preprocessing
from tp_vgg.device import resolve_device
from tp_vgg.errors import UserError
from tp_vgg.models.zoo import ModelSpec, keep_mode, select_logits
from tp_vgg.train.config import make_amp
from tp_vgg.train.distributed import DistContext

# A checkpoint's preprocessing, or its dict as stored.
PreprocessingLike = Union[Preprocessing, Dict[str, Any]]


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    images: int

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Batches, output_key: Optional[str] = None,
             autocast: Callable[[], Any] = contextlib.nullcontext,
             dist: Optional[DistContext] = None, num_classes: Optional[int] = None) -> EvalResult:
    """Cross-entropy, top-1 and top-5 (top-k for k = min(5, classes)), each averaged over
    samples -- summed over batches and ranks, then divided by the number of samples."""
    dist = dist or DistContext()
    training = model.training
    model.eval()
    dev = batches.device
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, top1, top5, count
    try:
        for x, y in batches:
            with autocast():
                logits = select_logits(model(x), output_key)
            logits = logits.float()
            if num_classes is not None and logits.shape[-1] != num_classes:
                raise UserError(f"the model has {logits.shape[-1]} outputs but the data have "
                                f"{num_classes} classes")
            k = min(5, logits.shape[-1])
            top = logits.topk(k, dim=1).indices
            hit = top == y[:, None]
            sums[0] += nn.functional.cross_entropy(logits, y, reduction="sum").double()
            sums[1] += hit[:, 0].sum()
            sums[2] += hit.any(1).sum()
            sums[3] += y.shape[0]
    finally:
        model.train(training)
    dist.all_reduce_sum(sums)
    n = max(sums[3].item(), 1.0)
    return EvalResult(loss=sums[0].item() / n, top1=sums[1].item() / n, top5=sums[2].item() / n,
                      images=int(sums[3].item()))


def evaluate_on(model: nn.Module, spec: ModelSpec, data: ImageData, preprocessing: PreprocessingLike,
                split: str = "test", batch_size: int = 256,
                device: Optional[str] = None, channels_last: bool = False) -> EvalResult:
    """Evaluate ``model`` on one split of ``data`` with the given (checkpoint's) preprocessing.
    ``channels_last``: batches (and the model) in channels-last memory, ~1.7x faster on a CPU
    for a VGG; only for a model :func:`channels_last_runs` accepts (the caller checks, once)."""
    dev = resolve_device(device)
    pre = resolve_preprocessing(data, spec, preprocessing)
    check_model_fits(model.to(dev), spec, data)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    batches = data.batches(split, batch_size, BatchTransform(pre.mean, pre.std, pre.input_size,
                                                             channels_last), dev)
    autocast, _, _ = make_amp(dev, "auto")
    return evaluate(model, batches, spec.output_key, autocast)


def top1(model: nn.Module, spec: ModelSpec, data: ImageData, preprocessing: PreprocessingLike,
         device: Optional[str] = None, batch_size: int = 256, channels_last: bool = False) -> float:
    """Test top-1 of ``model`` (:func:`evaluate_on`); the model then goes back to the device it
    was on (and to contiguous memory), so that pruning continues there."""
    home = next(model.parameters()).device
    result = evaluate_on(model, spec, data, preprocessing, batch_size=batch_size, device=device,
                         channels_last=channels_last).top1
    model.to(home, memory_format=torch.contiguous_format)
    return result


# --------------------------------------------------------------------------------------------
# BatchNorm recalibration.

# Training batches BatchNorm statistics are re-estimated on after pruning, by default (prune with
# --data, sensitivity): 50 x 64 images, a few percent of a CIFAR epoch.
DEFAULT_BN_RECALIBRATE = 50


def batchnorms(model: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that keep running statistics (used in eval mode)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Batches, num_batches: int,
                   autocast: Callable[[], Any] = contextlib.nullcontext,
                   dist: Optional[DistContext] = None) -> int:
    """Re-estimate the BatchNorm running statistics of ``model`` from ``num_batches`` batches.

    After pruning, the kept channels' inputs changed (their input channels were removed), so the
    stored means and variances no longer describe them; re-estimating them (EagleEye's "adaptive
    BN") recovers much of the accuracy with no training. Each BN layer's statistics are reset and
    averaged cumulatively (``momentum=None``) over the batches, with only the BN layers in train
    mode -- the forward is the eval-mode one (no dropout), and no weight changes. Under torchrun
    each rank uses its shard and the statistics are averaged over ranks. The caller's train/eval
    mode and the layers' momentum are restored. Returns the number of layers re-estimated (0 for
    a model without BatchNorm running statistics, which is left unchanged)."""
    bns = batchnorms(model)
    if not bns or num_batches <= 0:
        return 0
    momenta = [m.momentum for m in bns]
    with keep_mode(model):
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        try:
            for i, (x, _) in enumerate(batches):
                if i >= num_batches:
                    break
                with autocast():
                    model(x)
        finally:
            for m, mom in zip(bns, momenta):
                m.momentum = mom
    dist = dist or DistContext()
    if dist.enabled:
        for m in bns:
            for b in (m.running_mean, m.running_var):
                if b is not None:
                    dist.all_reduce_sum(b)
                    b.div_(dist.world_size)
    return len(bns)


def channels_last_runs(model: nn.Module, spec: ModelSpec, device: Any = None) -> bool:
    """Whether ``model`` runs on channels-last input: a ``x.view(n, -1)`` after a convolution
    does not (the conv keeps the input's strides, which ``view`` cannot flatten), so training
    and BN re-estimation feed such a model contiguous batches instead."""
    dev = device if device is not None else next(model.parameters()).device
    x = spec.resolved().example_input(batch=2, device=dev).contiguous(
        memory_format=torch.channels_last)
    with keep_mode(model), torch.no_grad():
        model.eval()
        try:
            model(x)
        except RuntimeError as e:
            if "view size is not compatible" in str(e):
                return False
            raise
    return True


def recalibrate_on(model: nn.Module, spec: ModelSpec, data: ImageData, preprocessing: PreprocessingLike,
                   num_batches: int, batch_size: int = 64, device: Optional[str] = None,
                   seed: int = 0, channels_last: bool = True,
                   dist: Optional[DistContext] = None) -> int:
    """:func:`recalibrate_bn` on ``num_batches`` shuffled, un-augmented batches of ``data``'s
    training split (seeded by ``seed``), with ``preprocessing`` (a checkpoint's or the data's)."""
    dist = dist or DistContext()
    dev = dist.device(device)
    pre = resolve_preprocessing(data, spec, preprocessing)
    model.to(dev)
    channels_last = channels_last and channels_last_runs(model, spec, dev)
    batches = data.batches("train", batch_size,
                           BatchTransform(pre.mean, pre.std, pre.input_size, channels_last), dev,
                           train=True, augment=False, seed=seed, rank=dist.rank,
                           world_size=dist.world_size)
    autocast, _, _ = make_amp(dev, "auto")
    return recalibrate_bn(model, batches, num_batches, autocast, dist)


# --------------------------------------------------------------------------------------------
# Preprocessing.

def resolve_preprocessing(data: ImageData, spec: ModelSpec,
                          stored: Optional[PreprocessingLike] = None) -> Preprocessing:
    """The preprocessing to use: the mean/std the user declared (``--mean``/``--std``, carried by
    ``data.declared``), else ``stored`` (a checkpoint's, or torchvision weights') where it has
    mean/std, else the data's statistics -- where they came from is said once and recorded in
    ``extra["normalization"]``; input size and channels from the model. Data whose class names
    differ from those ``stored`` records are refused unless ``--allow-class-mismatch``."""
    stored = Preprocessing.of(stored)
    check_class_names(data, recorded_class_names(stored), "checkpoint")
    pre = data.preprocessing()
    from_weights = "weights" in stored.extra and "dataset" not in stored.extra
    mean, std, source = choose_normalization(
        data, (stored.mean, stored.std) if stored.normalized else None,
        "weights" if from_weights else "checkpoint",
        str(stored.extra["weights"]) if from_weights else "")
    pre.mean, pre.std = mean, std
    pre.extra["normalization"] = source
    s = spec.resolved()
    pre.input_size, pre.in_channels = s.input_size, s.in_channels
    if len(pre.mean) != data.in_channels:
        raise UserError(f"the stored preprocessing has {len(pre.mean)} channel means but "
                        f"{data.name} images have {data.in_channels} channels"
                        + _channels_hint(data, len(pre.mean)))
    return pre


def _channels_hint(data: Any, channels: int) -> str:
    """How to read an image folder with the model's channels."""
    if data.name == "imagefolder" and channels in (1, 3):
        return f"; read the folder as {'grey' if channels == 1 else 'RGB'} images with " \
               f"--data-kwargs '{{\"channels\": {channels}}}'"
    return ""


def check_model_fits(model: nn.Module, spec: ModelSpec, data: ImageData) -> None:
    """The model takes the data's channels and has one output per class."""
    s = spec.resolved()
    if s.in_channels != data.in_channels:
        raise UserError(f"the model takes {s.in_channels}-channel input but {data.name} images have "
                        f"{data.in_channels} channels" + _channels_hint(data, s.in_channels))
    dev = next(model.parameters()).device
    with keep_mode(model), torch.no_grad():
        model.eval()
        out = select_logits(model(s.example_input(batch=2, device=dev)), s.output_key)
    if out.shape[-1] != data.num_classes:
        raise UserError(f"the model has {out.shape[-1]} outputs but {data.name} has "
                        f"{data.num_classes} classes; pass --num-classes {data.num_classes} "
                        "(train) or use a checkpoint trained on these classes")
