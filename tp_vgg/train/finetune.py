"""Fine-tuning in one call, what a newcomer types: ``tp_vgg.finetune(model, "digits", epochs=3)``.

The model is trained in place with the fine-tuning defaults (:func:`tp_vgg.train.config.finetuning`:
a tenth of the optimizer's training LR, cosine, **no warm-up** unless ``warmup_epochs`` is
given), and what it uses is said on the first line of the log. The spec, pruning history and
preprocessing come from what tp-vgg keeps on a model it built or loaded
(:class:`tp_vgg.models.zoo.ModelRecord`); ``spec`` overrides.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
import torch.nn as nn

from tp_vgg.data.datasets import DataConfig, ImageData, load_data
from tp_vgg.models.zoo import ModelRecord, ModelSpec, attach_record, record_of, spec_of
from tp_vgg.train.config import finetuning
from tp_vgg.train.evaluation import resolve_preprocessing
from tp_vgg.train.loop import FitResult, fit

DataLike = Union[str, DataConfig, ImageData]


def finetune(model: nn.Module, data: DataLike, epochs: int, *, spec: Optional[ModelSpec] = None,
             out_dir: Optional[str] = None, log: Callable[[str], None] = print,
             after_step: Optional[Callable[[], None]] = None, **train: Any) -> FitResult:
    """Fine-tune ``model`` in place for ``epochs`` on ``data`` (a dataset name such as
    ``"digits"``, a :class:`~tp_vgg.data.datasets.DataConfig`, or data already loaded); return
    the :class:`~tp_vgg.train.loop.FitResult` (``.final.top1``: test top-1 after the last epoch).
    ``train``: :class:`~tp_vgg.train.config.TrainConfig` fields (``lr``, ``batch_size``,
    ``device``, ``warmup_epochs``, ``distill`` ...) over the fine-tuning defaults. With
    ``out_dir``, ``last.pt``/``best.pt`` are written there as `tp-vgg finetune` does. The model
    is left on the CPU in eval mode. ``after_step()`` runs after every optimizer step (e.g. a
    :class:`tp_vgg.pruning.unstructured.ZeroMask`, which keeps zeroed weights at zero)."""
    spec = spec_of(model, spec, "finetune")
    rec = record_of(model) or ModelRecord(spec)
    cfg = finetuning(epochs=epochs, progress=train.pop("progress", "none"), **train)
    cfg.validate()
    data_cfg = None
    if isinstance(data, str):
        data = DataConfig(data)
    if isinstance(data, DataConfig):
        data_cfg, data = data, load_data(data, log)
    warm = (f"{cfg.warmup_epochs:g} warm-up epoch{'s' if cfg.warmup_epochs != 1 else ''}"
            if cfg.warmup_epochs else "no warm-up")
    log(f"fine-tuning {epochs} epoch{'s' if epochs != 1 else ''}: {cfg.optimizer} lr {cfg.lr:g}, "
        f"{cfg.schedule} schedule, {warm}, batch {cfg.batch_size}")
    pre = resolve_preprocessing(data, spec, rec.preprocessing)
    res = fit(model, spec, data, cfg, out_dir, data_cfg=data_cfg, history=rec.history,
              preprocessing=pre, meta=rec.meta, command="finetune", log=log,
              after_step=after_step)
    model.to("cpu", memory_format=torch.contiguous_format).eval()
    rec.preprocessing = pre  # what save() records: the normalization it was fine-tuned with
    attach_record(model, rec)
    return res
