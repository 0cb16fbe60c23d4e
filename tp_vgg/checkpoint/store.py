"""Pruned checkpoints that load with ``torch.load(path, weights_only=True)``.

A checkpoint is one dict of tensors and plain Python values -- no pickled modules::

    {"format": "tp-vgg-checkpoint", "format_version": 1, "tp_vgg_version": ...,
     "model_spec": {...},            # how to build the unpruned model (ModelSpec.to_dict())
     "pruning_history": [[layer, is_out_channel, [indices]], ...],   # torch-pruning's
     "state_dict": {...},            # weights of the pruned model
     "preprocessing": {"input_size", "in_channels", "mean", "std", "class_names"},
     "meta": {...},                  # criterion, ratios, MACs/params, accuracy, ...
     "model_code": {...} | absent,   # a user factory's code pin (ModelCode): file SHA-256 or
                                     # package version at save time
     "train_state": {...} | absent}  # optimizer/scheduler/RNG for --resume

:func:`load` rebuilds the model from its spec, replays the pruning history on it with a fresh
DependencyGraph and loads the weights.

A checkpoint is data, never code. Reading one (:func:`load_checkpoint`) runs nothing: the file is
read with ``weights_only=True`` and its spec is checked (:func:`tp_vgg.models.zoo.check_spec`). A zoo
model is rebuilt from tp-vgg's own registry. A spec that names a user factory names code: building
it (:meth:`Checkpoint.build`) imports that module or runs that file, so it needs the caller's
consent -- ``trust_model_code=True``, or the caller naming its own copy of the factory
(``factory=``) -- and refuses code that changed since the checkpoint was written unless
``allow_changed_model_code=True``. Nothing is imported before those checks.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from tp_vgg.data.preprocessing import Preprocessing
from tp_vgg.errors import UserError, first_line
from tp_vgg.files import write_with
from tp_vgg.models.zoo import (FactoryRef, ModelCode, ModelRecord, ModelSpec, attach_record,
                               build_model, check_spec, factory_kwargs, record_of, spec_of)
from tp_vgg.pruning.graph import replay

FORMAT = "tp-vgg-checkpoint"
FORMAT_VERSION = 1


TRUST_HINT = ("if you trust this checkpoint and that code, pass --trust-model-code (Python: "
              "trust_model_code=True), or name your own copy of the factory with --model")


@dataclass
class Checkpoint:
    spec: ModelSpec
    history: List[list]
    state_dict: Dict[str, torch.Tensor]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    meta: Dict[str, Any] = field(default_factory=dict)
    train_state: Optional[Dict[str, Any]] = None
    path: Optional[str] = None
    model_code: Optional[ModelCode] = None     # the user factory's code when it was written
    trust_model_code: bool = False             # consent to import/run the factory it names
    allow_changed_model_code: bool = False     # ... even if that code changed since

    def consent(self) -> Dict[str, bool]:
        """The code consent this checkpoint was read with, as keyword arguments for
        :func:`load_checkpoint` (e.g. to read a file written beside it, such as a teacher)."""
        return {"trust_model_code": self.trust_model_code,
                "allow_changed_model_code": self.allow_changed_model_code}

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """The exact model: spec -> unpruned model -> replayed pruning -> weights."""
        model = self.build_unpruned()
        try:
            replay(model, self.spec, self.history)
        except UserError as e:
            raise UserError(f"checkpoint {self.path!r}: {e}") from e
        _load_weights(model, self.state_dict, self.path)
        attach_record(model, ModelRecord(self.spec, list(self.history), self.preprocessing,
                                         dict(self.meta)))
        return model.to(device)

    def build_unpruned(self) -> nn.Module:
        """The model before pruning, with fresh weights. A zoo model comes from tp-vgg's registry
        (never with downloaded weights: the checkpoint's weights replace them); a user factory
        only with consent, and only as it was when the checkpoint was written."""
        spec = self.spec
        if not spec.is_user_factory:
            return build_model(dataclasses.replace(spec, weights=None))
        if not self.trust_model_code:
            ref = FactoryRef.parse(spec.name)
            call = f"{ref.attr}({', '.join(f'{k}={v!r}' for k, v in factory_kwargs(spec).items())})"
            raise UserError(
                f"checkpoint {self.path!r} names its model by code: building it would import "
                f"{ref.source()} and call {call if len(call) <= 100 else call[:97] + '...'}; "
                f"tp-vgg runs code a checkpoint names only with your consent: {TRUST_HINT}")
        try:
            return build_model(spec, self.model_code, self.allow_changed_model_code)
        except UserError as e:
            raise UserError(f"checkpoint {self.path!r}: {e}") from e


def _plain(obj: Any) -> Any:
    """Tensors, numbers, strings, lists, dicts only -- what weights_only loading accepts."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (int, str)) else k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if dataclasses.is_dataclass(obj):
        return _plain(dataclasses.asdict(obj))
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def save(path: str, model: nn.Module, spec: Optional[ModelSpec] = None,
         history: Optional[List[list]] = None,
         preprocessing: Preprocessing | Dict[str, Any] | None = None,
         meta: Optional[Dict[str, Any]] = None,
         train_state: Optional[Dict[str, Any]] = None, atomic: bool = True) -> None:
    """Write the checkpoint atomically (temp file, then rename); ``atomic=False`` writes ``path``
    directly (when it is already a temp name of the caller's). For a model tp-vgg built or loaded,
    ``spec``, ``history``, ``preprocessing`` and ``meta`` default to what is kept on it
    (:class:`tp_vgg.models.zoo.ModelRecord`): ``save(path, tp_vgg.load(path))`` writes back what
    was read."""
    from tp_vgg import __version__

    rec = record_of(model)
    spec = spec_of(model, spec, "save")
    if rec is not None:
        if rec.spec == spec:
            preprocessing = rec.preprocessing if preprocessing is None else preprocessing
            meta = rec.meta if meta is None else meta
        if history is None:  # the pruning the model went through, whatever spec is given
            history = rec.history

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tp_vgg_version": __version__,
        "model_spec": _plain(spec.to_dict()),
        "pruning_history": _plain(history or []),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "preprocessing": _plain(_preprocessing(preprocessing, spec).to_dict()),
        "meta": _plain(meta or {}),
    }
    if spec.is_user_factory:  # pin the code the model came from (read now; nothing imported)
        payload["model_code"] = ModelCode.of(spec.name).to_dict()
    if train_state is not None:
        payload["train_state"] = train_state
    if atomic:
        write_with(path, lambda tmp: _torch_save(payload, tmp))
    else:
        _torch_save(payload, path)


def _preprocessing(given, spec: ModelSpec) -> Preprocessing:
    """What to store: ``given``, or for none the model's input size and channels."""
    pre = Preprocessing.of(given)
    return Preprocessing.for_spec(spec) if pre.is_empty() else pre


def _torch_save(payload: Dict[str, Any], path: str) -> None:
    """torch.save, whose write failures (a full disk) are RuntimeErrors: made OSErrors, so that
    the atomic writer removes its temp file and says which file could not be written."""
    try:
        torch.save(payload, path)
    except RuntimeError as e:
        try:
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        except OSError:
            free = -1
        raise OSError(errno.ENOSPC if 0 <= free < (1 << 20) else errno.EIO,
                      f"torch.save failed ({first_line(e)}); is the disk full? "
                      f"({free} bytes free)") from e


def load_checkpoint(path: str, *, trust_model_code: bool = False,
                    allow_changed_model_code: bool = False,
                    factory: Optional[str] = None) -> Checkpoint:
    """Read a checkpoint: ``torch.load(weights_only=True)`` (nothing is unpickled) and a check of
    its model spec (nothing is imported). Building it (:meth:`Checkpoint.build`) is where a user
    factory would run, and needs consent:

    ``trust_model_code``: run the factory the checkpoint names.
    ``factory``: the caller's own copy of that factory (``path/to/file.py:callable`` for a file
    factory, the same ``package.module:callable`` for a package one): naming it is consent, and it
    is built from there. A zoo checkpoint accepts only its own name.
    ``allow_changed_model_code``: build even if the factory's file (SHA-256) or package version is
    not what the checkpoint recorded.
    """
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise UserError(f"checkpoint {path!r} is a folder; give the .pt file inside it")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Random bytes also fail in the weights-only unpickler ("Unsupported operand"); only a
        # reference to a class or function ("Unsupported global") is a pickled Python object.
        if re.search(r"unsupported global", str(e), re.IGNORECASE):
            raise UserError(
                f"checkpoint {path!r} holds pickled Python objects (e.g. a whole model saved with "
                "torch.save(model)); tp-vgg never unpickles them, since unpickling runs arbitrary "
                "code -- use a tp-vgg checkpoint") from e
        op = re.search(r"Unsupported operand \d+", str(e))
        raise UserError(f"checkpoint {path!r} is corrupt, truncated or not a PyTorch file: "
                        f"{op.group(0) if op else first_line(e)}") from e
    except Exception as e:  # junk bytes fail anywhere in the unpickler (IndexError, KeyError, ...)
        raise UserError(f"checkpoint {path!r} is corrupt, truncated or not a PyTorch file: "
                        f"{first_line(e)}") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        what = "a plain state_dict" if isinstance(obj, dict) and obj and all(
            isinstance(v, torch.Tensor) for v in obj.values()) else f"a {type(obj).__name__}"
        raise UserError(f"checkpoint {path!r} is not a tp-vgg checkpoint (it holds {what}); "
                        "tp-vgg reads the files written by tp-vgg prune/train/finetune"
                        + ("; weights you trained elsewhere load with --model NAME --weights "
                           f"{path}" if isinstance(obj, dict) else ""))
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"checkpoint {path!r} has format version {obj['format_version']}, newer "
                        f"than this tp-vgg reads ({FORMAT_VERSION}); upgrade tp-vgg")
    for key in ("model_spec", "state_dict"):
        if key not in obj:
            raise UserError(f"checkpoint {path!r} is missing its {key!r} entry")
    _check_entries(path, obj)
    try:
        spec = ModelSpec.from_dict(obj["model_spec"])
        check_spec(spec)
        code = ModelCode.from_dict(obj.get("model_code"))
    except UserError as e:
        raise UserError(f"checkpoint {path!r}: {e}") from e
    if factory is not None:
        spec = _own_factory(path, spec, factory)
        trust_model_code = True
    return Checkpoint(
        spec=spec,
        history=obj.get("pruning_history", []),
        state_dict=obj["state_dict"],
        preprocessing=Preprocessing.from_dict(obj.get("preprocessing", {})),
        meta=obj.get("meta", {}),
        train_state=obj.get("train_state"),
        path=path,
        model_code=code,
        trust_model_code=bool(trust_model_code),
        allow_changed_model_code=bool(allow_changed_model_code),
    )


def _check_entries(path: str, obj: Dict[str, Any]) -> None:
    """The weights, history and dicts have the shapes tp-vgg writes (a crafted file gets one
    line, not an error deep inside torch)."""
    sd = obj["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                           for k, v in sd.items()):
        raise UserError(f"checkpoint {path!r}: its state_dict is not a dict of tensors")
    history = obj.get("pruning_history", [])
    if not isinstance(history, list) or not all(
            isinstance(h, (list, tuple)) and len(h) == 3 and isinstance(h[0], str)
            and isinstance(h[1], (bool, int)) and isinstance(h[2], (list, tuple))
            and all(isinstance(i, int) and not isinstance(i, bool) for i in h[2]) for h in history):
        raise UserError(f"checkpoint {path!r}: its pruning_history is not a list of "
                        "[layer, is_out_channel, [indices]]")
    for key in ("preprocessing", "meta"):
        if not isinstance(obj.get(key, {}), dict):
            raise UserError(f"checkpoint {path!r}: its {key} is not a dict")


def _own_factory(path: str, spec: ModelSpec, factory: str) -> ModelSpec:
    """``spec`` built from the caller's ``factory``, which must name the checkpoint's factory:
    the same callable, from a file (for a file factory) or the same module (for a package)."""
    if factory == spec.name:
        return spec
    if not spec.is_user_factory:
        raise UserError(f"--model {factory!r} is not the model of checkpoint {path!r} "
                        f"({spec.name}); leave --model out")
    mine, theirs = FactoryRef.parse(factory), FactoryRef.parse(spec.name)
    if mine.attr != theirs.attr or bool(mine.file) != bool(theirs.file) or (
            theirs.file is None and mine.where != theirs.where):
        want = (f"your copy of its file, path/to/file.py:{theirs.attr}" if theirs.file
                else f"the same {spec.name}")
        raise UserError(f"--model {factory!r} does not name the factory of checkpoint {path!r} "
                        f"({spec.name}); accepted: {want}")
    return dataclasses.replace(spec, name=factory)


def _load_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], path: Optional[str]) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else ""
        raise UserError(f"checkpoint {path!r} does not match its model's architecture: "
                        f"{detail[:300]}") from e


def load(path: str, device: str | torch.device = "cpu", *, trust_model_code: bool = False,
         allow_changed_model_code: bool = False, factory: Optional[str] = None) -> nn.Module:
    """The exact (pruned) model stored in ``path``, in eval mode. A zoo checkpoint needs no
    trust; one whose model comes from a user factory needs ``trust_model_code=True`` (or
    ``factory``): see :func:`load_checkpoint`."""
    ck = load_checkpoint(path, trust_model_code=trust_model_code,
                         allow_changed_model_code=allow_changed_model_code, factory=factory)
    return ck.build(device).eval()
