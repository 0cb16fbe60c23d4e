"""Pruned checkpoints that load with ``torch.load(path, weights_only=True)``.

A checkpoint is one dict of tensors and plain Python values -- no pickled modules::

    {"format": "tp-vgg-checkpoint", "format_version": 1, "tp_vgg_version": ...,
     "model_spec": {...},            # how to build the unpruned model (ModelSpec.to_dict())
     "pruning_history": [[layer, is_out_channel, [indices]], ...],   # torch-pruning's
     "state_dict": {...},            # weights of the pruned model
     "preprocessing": {"input_size", "in_channels", "mean", "std", "class_names"},
     "meta": {...},                  # criterion, ratios, MACs/params, accuracy, ...
     "train_state": {...} | absent}  # optimizer/scheduler/RNG for --resume

:func:`load` rebuilds the model from its spec, replays the pruning history on it with a fresh
DependencyGraph and loads the weights.
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

from tp_vgg.errors import UserError
from tp_vgg.io import write_with
from tp_vgg.models import ModelSpec, build_model
from tp_vgg.pruning import replay

FORMAT = "tp-vgg-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    spec: ModelSpec
    history: List[list]
    state_dict: Dict[str, torch.Tensor]
    preprocessing: Dict[str, Any] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)
    train_state: Optional[Dict[str, Any]] = None
    path: Optional[str] = None

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """The exact model: spec -> unpruned model -> replayed pruning -> weights."""
        model = build_model(self.spec)
        try:
            replay(model, self.spec, self.history)
        except UserError as e:
            raise UserError(f"checkpoint {self.path!r}: {e}") from e
        _load_weights(model, self.state_dict, self.path)
        return model.to(device)


def default_preprocessing(spec: ModelSpec) -> Dict[str, Any]:
    s = spec.resolved()
    return {"input_size": s.input_size, "in_channels": s.in_channels,
            "mean": None, "std": None, "class_names": None}


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


def save(path: str, model: nn.Module, spec: ModelSpec, history: Optional[List[list]] = None,
         preprocessing: Optional[Dict[str, Any]] = None, meta: Optional[Dict[str, Any]] = None,
         train_state: Optional[Dict[str, Any]] = None, atomic: bool = True) -> None:
    """Write the checkpoint atomically (temp file, then rename); ``atomic=False`` writes ``path``
    directly (when it is already a temp name of the caller's)."""
    from tp_vgg import __version__

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tp_vgg_version": __version__,
        "model_spec": _plain(spec.to_dict()),
        "pruning_history": _plain(history or []),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "preprocessing": _plain(preprocessing or default_preprocessing(spec)),
        "meta": _plain(meta or {}),
    }
    if train_state is not None:
        payload["train_state"] = train_state
    if atomic:
        write_with(path, lambda tmp: _torch_save(payload, tmp))
    else:
        _torch_save(payload, path)


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
                      f"torch.save failed ({_first_line(e)}); is the disk full? "
                      f"({free} bytes free)") from e


def load_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint (weights_only=True: nothing is unpickled)."""
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
        if "Unsupported global" in str(e):
            raise UserError(
                f"checkpoint {path!r} holds pickled Python objects (e.g. a whole model saved with "
                "torch.save(model)); tp-vgg never unpickles them, since unpickling runs arbitrary "
                "code -- use a tp-vgg checkpoint") from e
        op = re.search(r"Unsupported operand \d+", str(e))
        raise UserError(f"checkpoint {path!r} is corrupt, truncated or not a PyTorch file: "
                        f"{op.group(0) if op else _first_line(e)}") from e
    except Exception as e:  # junk bytes fail anywhere in the unpickler (IndexError, KeyError, ...)
        raise UserError(f"checkpoint {path!r} is corrupt, truncated or not a PyTorch file: "
                        f"{_first_line(e)}") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        what = "a plain state_dict" if isinstance(obj, dict) and obj and all(
            isinstance(v, torch.Tensor) for v in obj.values()) else f"a {type(obj).__name__}"
        raise UserError(f"checkpoint {path!r} is not a tp-vgg checkpoint (it holds {what}); "
                        "tp-vgg reads the files written by tp-vgg prune/train/finetune")
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"checkpoint {path!r} has format version {obj['format_version']}, newer "
                        f"than this tp-vgg reads ({FORMAT_VERSION}); upgrade tp-vgg")
    try:
        return Checkpoint(
            spec=ModelSpec.from_dict(obj["model_spec"]),
            history=obj.get("pruning_history", []),
            state_dict=obj["state_dict"],
            preprocessing=obj.get("preprocessing", {}),
            meta=obj.get("meta", {}),
            train_state=obj.get("train_state"),
            path=path,
        )
    except (KeyError, TypeError) as e:
        raise UserError(f"checkpoint {path!r} is missing its {e} entry") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _load_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], path: Optional[str]) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else ""
        raise UserError(f"checkpoint {path!r} does not match its model's architecture: "
                        f"{detail[:300]}") from e


def load(path: str, device: str | torch.device = "cpu") -> nn.Module:
    """The exact (pruned) model stored in ``path``, in eval mode."""
    model = load_checkpoint(path).build(device)
    return model.eval()
