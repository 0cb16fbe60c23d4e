"""Where a model comes from: a :class:`~tp_vgg.models.zoo.ModelSpec` to build, or a checkpoint to
rebuild (a user factory's only with consent; see :func:`tp_vgg.checkpoint.store.load_checkpoint`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from tp_vgg.checkpoint.store import FORMAT, Checkpoint, load_checkpoint
from tp_vgg.data.preprocessing import Preprocessing
from tp_vgg.errors import UserError
from tp_vgg.models.weights import apply_weights
from tp_vgg.models.zoo import (FactoryRef, ModelSpec, build_model, check_forward,
                               weights_preprocessing)


@dataclass
class ModelSource:
    """``spec``: build this model (seeded by ``seed``); or ``checkpoint``: rebuild the model in
    this file. ``factory`` (with ``checkpoint``) names your own copy of the checkpoint's factory,
    which is then what runs; ``trust_model_code`` lets a checkpoint's own factory run.

    ``weights_file`` (with ``spec``): a plain state_dict the user trained (``--weights PATH``),
    loaded into the built model, strictly unless ``strict_weights`` is False; ``weights_key``
    (``--weights-key``) picks an entry of that file (e.g. timm's ``state_dict_ema``)."""

    spec: Optional[ModelSpec] = None
    checkpoint: Optional[str] = None
    factory: Optional[str] = None
    trust_model_code: bool = False
    allow_changed_model_code: bool = False
    seed: int = 0
    weights_file: Optional[str] = None
    strict_weights: bool = True
    weights_key: Optional[str] = None

    def consent(self) -> Dict[str, bool]:
        """The code consent, as keyword arguments of :func:`tp_vgg.load_checkpoint`."""
        return {"trust_model_code": self.trust_model_code,
                "allow_changed_model_code": self.allow_changed_model_code}

    def validate(self) -> None:
        if (self.spec is None) == (self.checkpoint is None):
            raise UserError("give the model as ModelSource(spec=...) (--model) or "
                            "ModelSource(checkpoint=...) (--checkpoint), one of the two")
        if self.weights_file is not None and self.spec is None:
            raise UserError("--weights PATH applies to --model: a checkpoint already holds its "
                            "weights (ModelSource.weights_file needs ModelSource.spec)")
        if self.weights_key is not None and self.weights_file is None:
            raise UserError("--weights-key picks an entry of a --weights PATH file; give the file "
                            "with --weights (ModelSource.weights_key needs ModelSource.weights_file)")
        if self.spec is not None:
            for flag, on in self.consent().items():
                if on:
                    raise UserError(f"--{flag.replace('_', '-')} applies to --checkpoint: a "
                                    "--model you name yourself is built without it "
                                    f"(ModelSource.{flag} needs ModelSource.checkpoint)")

    def describe(self) -> str:
        """What the model was given as: the factory, the checkpoint file or the model name."""
        return self.factory or self.checkpoint or (self.spec.name if self.spec else "")


@dataclass
class Loaded:
    """A model ready to work on, with what its checkpoint recorded (empty for a new model)."""

    model: nn.Module
    spec: ModelSpec
    history: List[list] = field(default_factory=list)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    meta: Dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[Checkpoint] = None


def is_checkpoint_file(path: str) -> bool:
    """Whether ``path`` is a tp-vgg checkpoint (a dict whose ``format`` is
    :data:`tp_vgg.checkpoint.store.FORMAT`). Read with ``torch.load(weights_only=True)``, memory-
    mapped where the file allows (its tensors are not read); any file that does not load is not
    one (its own reader says why)."""
    import os
    import warnings

    if not path or not os.path.isfile(path) or str(path).lower().endswith(".safetensors"):
        return False
    for mmap in (True, False):  # mmap needs torch.save's zip format
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception:  # noqa: BLE001 -- not a (readable) torch file: not a checkpoint
            continue
        return isinstance(obj, dict) and obj.get("format") == FORMAT
    return False


def weights_checkpoint_message(path: str, how: str = "") -> str:
    """The line for a tp-vgg checkpoint given as ``--weights`` (``how``: what to pass instead,
    default ``--checkpoint FILE``)."""
    return (f"--weights {path} is a tp-vgg checkpoint (it records its model and pruning); "
            + (how or f"pass it as --checkpoint {path}"))


def load_source(source: ModelSource, log: Optional[Callable[[str], None]] = None) -> Loaded:
    """Build ``source.spec`` (seeded, so runs are reproducible) or rebuild ``source.checkpoint``:
    a zoo model as is, a user factory's only with consent. ``log`` hears what
    ``--no-strict-weights`` left out."""
    source.validate()
    if source.checkpoint is not None:
        ckpt = load_checkpoint(source.checkpoint, factory=source.factory, **source.consent())
        return Loaded(ckpt.build(), ckpt.spec, list(ckpt.history),
                      Preprocessing.of(ckpt.preprocessing), dict(ckpt.meta), ckpt)
    spec = source.spec.resolved()
    ref = FactoryRef.parse(spec.name) if spec.is_user_factory else None
    if ref is not None and ref.file:  # the checkpoint names the file wherever it is read
        spec = dataclasses.replace(spec, name=f"{ref.file}:{ref.attr}")
    torch.manual_seed(source.seed or 0)  # the seed also fixes the initial weights
    model = build_model(spec)
    meta: Dict[str, Any] = {}
    if source.weights_file is not None:
        if is_checkpoint_file(source.weights_file):
            raise UserError(weights_checkpoint_message(source.weights_file))
        w = meta["weights"] = apply_weights(model, source.weights_file, source.strict_weights,
                                                source.weights_key)
        left = {k: w[k] for k in ("missing", "unexpected", "wrong_shape") if w[k]}
        if left and log is not None:
            log(f"--weights {source.weights_file}: loaded {w['loaded']} of the model's "
                f"{w['loaded'] + w['missing'] + w['wrong_shape']} tensors; left as built: "
                + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in left.items())
                + " (--no-strict-weights)")
    check_forward(model, spec)
    pre = Preprocessing.for_spec(spec)
    known = weights_preprocessing(spec)
    if known is not None:  # torchvision weights: what they were trained with
        pre = Preprocessing.from_dict(dict(known, input_size=spec.input_size,
                                           in_channels=spec.in_channels))
        meta["weights"] = {"torchvision": known["weights"]}
    return Loaded(model, spec, [], pre, meta)
