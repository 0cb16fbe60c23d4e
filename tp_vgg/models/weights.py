"""Weights a user trained with their own script: a plain ``state_dict`` file (``--weights PATH``).

Read as data only: ``torch.load(..., weights_only=True)`` for ``.pt``/``.pth``/``.bin``/``.ckpt``,
``safetensors`` (an optional dependency) for ``.safetensors``. The usual wrappings are taken off:
a dict nesting the weights under ``state_dict``/``model``/``model_state_dict``/``net`` (as training
scripts save them with their optimizer and epoch), and the key prefixes ``module.`` (DataParallel,
DDP) and ``_orig_mod.`` (``torch.compile``). Loading is strict by default: a mismatch is one line
naming the first missing, unexpected and wrong-shape keys.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from tp_vgg.errors import UserError

SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
NESTING = ("state_dict", "model_state_dict", "model", "net", "module")
PREFIXES = ("module.", "_orig_mod.")
SHOW = 3  # keys named per kind in a mismatch message


def is_weights_file(value: Optional[str]) -> bool:
    """Whether ``--weights VALUE`` names a file (a path, or a name with a weights suffix) rather
    than torchvision weights (``DEFAULT``, ``IMAGENET1K_V1``, ``VGG16_Weights.IMAGENET1K_V1``)."""
    if not value:
        return False
    v = str(value)
    return (os.sep in v or "/" in v or v.lower().endswith(SUFFIXES) or os.path.exists(v))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _unwrap(obj: Any, path: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """The state_dict inside ``obj`` and the keys it was nested under."""
    nesting: List[str] = []
    for _ in range(4):
        if _is_state_dict(obj):
            return dict(obj), nesting
        if not isinstance(obj, Mapping):
            break
        key = next((k for k in NESTING if k in obj and isinstance(obj[k], Mapping)), None)
        if key is None:
            # a state_dict with a few non-tensor entries (e.g. "epoch"): keep the tensors
            tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
            if tensors and len(tensors) >= len(obj) / 2:
                return tensors, nesting
            break
        nesting.append(key)
        obj = obj[key]
    kind = type(obj).__name__
    keys = ", ".join(map(repr, list(obj)[:6])) if isinstance(obj, Mapping) else ""
    raise UserError(f"--weights {path!r} holds no state_dict (a {kind}"
                    + (f" with keys {keys}" if keys else "") + "); accepted: a dict of tensors, "
                    f"or one nested under {', '.join(NESTING)}")


def _strip(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    stripped: List[str] = []
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if sd and all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                stripped.append(p)
                changed = True
    return sd, stripped


def read_state_dict(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The state_dict in ``path`` (unwrapped, prefixes stripped) and where it came from: the
    file's absolute path, SHA-256, format, nesting and stripped prefixes (for the checkpoint's
    meta). Nothing in the file is run."""
    if os.path.isdir(path):
        raise UserError(f"--weights {path!r} is a folder; give the state_dict file inside it")
    if not os.path.isfile(path):
        raise UserError(f"--weights file {path!r} does not exist; accepted: a state_dict file "
                        f"({', '.join(SUFFIXES)}) or a torchvision weights name such as DEFAULT")
    if path.lower().endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise UserError(f"--weights {path!r} is a .safetensors file: install the "
                            "'safetensors' package (pip install 'tp-vgg[weights]')") from e
        try:
            obj: Any = load_file(path, device="cpu")
        except Exception as e:  # noqa: BLE001 -- any parse failure is the file's
            raise UserError(f"cannot read --weights {path!r} as safetensors: "
                            f"{type(e).__name__}: {str(e)[:150]}") from e
        fmt = "safetensors"
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if re.search(r"unsupported global", str(e), re.IGNORECASE):  # a class or function: code
                raise UserError(f"--weights {path!r} holds pickled Python objects (e.g. a whole "
                                "model saved with torch.save(model)); tp-vgg never unpickles "
                                "them, since unpickling runs arbitrary code -- save "
                                "model.state_dict() instead") from e
            raise UserError(f"--weights {path!r} is corrupt, truncated or not a PyTorch "
                            "file") from e
        except Exception as e:  # noqa: BLE001 -- junk bytes fail anywhere in the unpickler
            raise UserError(f"--weights {path!r} is corrupt, truncated or not a PyTorch file "
                            f"({type(e).__name__})") from e
        fmt = "torch"
    sd, nesting = _unwrap(obj, path)
    sd, stripped = _strip(sd)
    info = {"file": os.path.abspath(path), "sha256": _sha256(path), "format": fmt,
            "nested_under": nesting, "stripped_prefixes": stripped, "tensors": len(sd)}
    return sd, info


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def load_into(model: nn.Module, sd: Dict[str, torch.Tensor], path: str,
              strict: bool = True) -> Dict[str, Any]:
    """Copy ``sd`` into ``model``. Strict: every key must match in name and shape (one line names
    the first mismatches). Not strict: what matches is loaded, the rest is counted and kept as
    built."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if strict and (missing or unexpected or wrong):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:SHOW])}"
                         + (", ..." if len(missing) > SHOW else "") + ")")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:SHOW])}"
                         + (", ..." if len(unexpected) > SHOW else "") + ")")
        if wrong:
            parts.append(f"{len(wrong)} of the wrong shape ("
                         + ", ".join(f"{k}: file {_shape(sd[k])}, model {_shape(own[k])}"
                                     for k in wrong[:SHOW]) + (", ..." if len(wrong) > SHOW else "")
                         + ")")
        raise UserError(f"--weights {path!r} does not fit the model: " + "; ".join(parts)
                        + "; check --model and the flags that shape it (--num-classes, --width, "
                        "--model-kwargs, ...), or pass --no-strict-weights to load only the keys "
                        "that fit")
    usable = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    with torch.no_grad():
        for k, v in usable.items():
            own[k].copy_(v.to(own[k].dtype))
    return {"loaded": len(usable), "missing": len(missing), "unexpected": len(unexpected),
            "wrong_shape": len(wrong), "strict": strict}


def apply_weights(model: nn.Module, path: str, strict: bool = True) -> Dict[str, Any]:
    """Read ``path`` and load it into ``model``; the record for the checkpoint's meta."""
    sd, info = read_state_dict(path)
    info.update(load_into(model, sd, path, strict))
    return info
