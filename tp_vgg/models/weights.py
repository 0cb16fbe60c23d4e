"""Weights a user trained with their own script: a plain ``state_dict`` file (``--weights PATH``).

Read as data only: ``torch.load(..., weights_only=True)`` for ``.pt``/``.pth``/``.bin``/``.ckpt``,
``safetensors`` (an optional dependency) for ``.safetensors``. The usual wrappings are taken off:
a dict nesting the weights under ``state_dict``/``model``/``model_state_dict``/``net`` (as training
scripts save them with their optimizer and epoch), and the key prefixes ``module.`` (DataParallel,
DDP) and ``_orig_mod.`` (``torch.compile``). A framework checkpoint's attribute prefix (PyTorch
Lightning's ``model.``/``net.``, any name) common to every key is undone when the keys then fit
the model exactly; ``--weights-key NAME`` picks a nested entry (timm's ``state_dict_ema``) or the
keys under the prefix ``NAME.``. Loading is strict by default: a mismatch is one line naming the
first missing, unexpected and wrong-shape keys and the closest prefix mapping found;
``--no-strict-weights`` loads what fits, provided at least half of the model's tensors do.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

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


def read_state_dict(path: str, key: Optional[str] = None
                    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The state_dict in ``path`` (unwrapped, prefixes stripped) and where it came from: the
    file's absolute path, SHA-256, format, nesting and stripped prefixes (for the checkpoint's
    meta). ``key`` (``--weights-key``): the file's entry of that name, or else its tensors under
    the prefix ``key.``. Nothing in the file is run."""
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
    picked: List[str] = []
    if key is not None and isinstance(obj, Mapping) and key in obj:
        if not isinstance(obj[key], Mapping):
            raise UserError(f"--weights-key {key!r} of --weights {path!r} holds a "
                            f"{type(obj[key]).__name__}, not a state_dict; accepted: "
                            + _keys_text(obj, mappings_only=True))
        obj, picked = obj[key], [key]
    sd, nesting = _unwrap(obj, path)
    sd, stripped = _strip(sd)
    if key is not None and not picked:
        p = key.rstrip(".") + "."
        under = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
        if not under:
            prefixes = sorted({k.split(".", 1)[0] for k in sd if "." in k})
            listed = [f"keys present: {_keys_text(obj)}"] if isinstance(obj, Mapping) and \
                not _is_state_dict(obj) else []
            if prefixes:
                listed.append(f"prefixes of its tensors: {', '.join(prefixes[:8])}")
            raise UserError(f"--weights-key {key!r} is not in --weights {path!r}; "
                            + ("; ".join(listed) or "it holds no entries or prefixes to pick"))
        sd, stripped = _strip(under)
        stripped = [p] + stripped
    info = {"file": os.path.abspath(path), "sha256": _sha256(path), "format": fmt,
            "nested_under": picked + nesting, "stripped_prefixes": stripped, "tensors": len(sd)}
    if key is not None:
        info["key"] = key
    return sd, info


def _keys_text(obj: Mapping, mappings_only: bool = False) -> str:
    keys = [k for k in obj if not mappings_only or isinstance(obj[k], Mapping)]
    return ", ".join(map(str, keys[:10])) + (", ..." if len(keys) > 10 else "") or "none"


def _fits(sd: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> bool:
    return set(sd) == set(own) and all(sd[k].shape == own[k].shape for k in own)


def _prefixes(keys: Sequence[str], depth: int = 3) -> List[str]:
    """The dotted prefixes (``a.``, ``a.b.``, ...) of ``keys``, up to ``depth`` parts."""
    found: Dict[str, None] = {}
    for k in keys:
        parts = k.split(".")[:-1]
        for i in range(1, min(depth, len(parts)) + 1):
            found[".".join(parts[:i]) + "."] = None
    return list(found)


def _under(sd: Mapping[str, torch.Tensor], p: str) -> Dict[str, torch.Tensor]:
    return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}


def fit_prefix(sd: Dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], path: str
               ) -> Tuple[Dict[str, torch.Tensor], Optional[str], Optional[str]]:
    """(state_dict, prefix undone, prefix whose keys alone fit): a prefix common to every key
    of ``sd`` that maps it exactly onto ``own`` is undone; two prefixes whose keys each fit are
    ambiguous (a UserError naming them); one that fits but not every key is under it is left to
    the caller to suggest (``--weights-key``)."""
    if _fits(sd, own):
        return sd, None, None
    fitting = [p for p in _prefixes(list(sd)) if _fits(_under(sd, p), own)]
    if len(fitting) > 1:
        names = [p[:-1] for p in fitting]
        raise UserError(f"--weights {path!r} is ambiguous: the tensors under "
                        + " and under ".join(repr(p) for p in fitting[:3])
                        + " each fit the model; pick one with "
                        + " or ".join(f"--weights-key {n}" for n in names[:3]))
    if fitting and all(k.startswith(fitting[0]) for k in sd):
        return _under(sd, fitting[0]), fitting[0], None
    return sd, None, (fitting[0] if fitting else None)


def _matches(sd: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], p: str, q: str) -> int:
    """Model tensors ``q + rest`` that the file holds as ``p + rest`` with the same shape."""
    n = 0
    for k, t in own.items():
        if k.startswith(q):
            v = sd.get(p + k[len(q):])
            n += v is not None and v.shape == t.shape
    return n


def closest_mapping(sd: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
                    ) -> Optional[Tuple[str, str, int]]:
    """(file prefix, model prefix, tensors matched) of the prefix renaming under which most of
    the model's tensors are found in the file, when it beats the names as they are."""
    base = _matches(sd, own, "", "")
    best = None
    file_p = [""] + _prefixes(list(sd), 2)
    model_p = [""] + _prefixes(list(own), 2)
    if len(file_p) * len(model_p) > 4096:  # a huge file: only whole-key prefixes of one part
        file_p = [""] + _prefixes(list(sd), 1)
        model_p = [""] + _prefixes(list(own), 1)
    for p in file_p:
        for q in model_p:
            if p == q:
                continue
            n = _matches(sd, own, p, q)
            if n > base and (best is None or n > best[2]):
                best = (p, q, n)
    return best


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def load_into(model: nn.Module, sd: Dict[str, torch.Tensor], path: str,
              strict: bool = True, hint: str = "") -> Dict[str, Any]:
    """Copy ``sd`` into ``model``. Strict: every key must match in name and shape (one line names
    the first mismatches, and ``hint``). Not strict: what matches is loaded, the rest is counted
    and kept as built -- refused when fewer than half of the model's tensors fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    usable = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    fit = f"{len(usable)} of the model's {len(own)} tensors fit"
    if (missing or unexpected or wrong) and not hint:
        closest = closest_mapping(sd, own)
        if closest is not None:
            p, q, n = closest
            hint += (f"; the closest prefix mapping found, file {p!r} -> model {q!r}, would "
                     f"match {n} of the model's {len(own)} tensors"
                     + (f" (--weights-key {p[:-1]} applies it)" if p and not q else ""))
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
        most = 2 * len(usable) > len(own)
        raise UserError(f"--weights {path!r} does not fit the model ({fit}): " + "; ".join(parts)
                        + hint + "; check --model and the flags that shape it (--num-classes, "
                        "--width, --model-kwargs, ...)"
                        + (", or pass --no-strict-weights to load only the tensors that fit"
                           if most else ""))
    if not strict and 2 * len(usable) < len(own):
        raise UserError(f"--weights {path!r} does not fit the model: only {fit} (name and "
                        "shape)" + hint + "; --no-strict-weights loads a file of which at least "
                        "half fit: check --model and the flags that shape it (--num-classes, "
                        "--width, --model-kwargs, ...)")
    with torch.no_grad():
        for k, v in usable.items():
            own[k].copy_(v.to(own[k].dtype))
    return {"loaded": len(usable), "missing": len(missing), "unexpected": len(unexpected),
            "wrong_shape": len(wrong), "strict": strict}


def apply_weights(model: nn.Module, path: str, strict: bool = True,
                  key: Optional[str] = None) -> Dict[str, Any]:
    """Read ``path`` (``key``: ``--weights-key``), undo a framework's attribute prefix when it
    makes the file fit, and load it into ``model``; the record for the checkpoint's meta."""
    sd, info = read_state_dict(path, key)
    sd, undone, alone = fit_prefix(sd, model.state_dict(), path)
    if undone:
        info["stripped_prefixes"] = list(info["stripped_prefixes"]) + [undone]
    hint = ""
    if alone:
        hint = (f"; the tensors under {alone!r} alone fit the model exactly: pick them with "
                f"--weights-key {alone[:-1]}")
    info.update(load_into(model, sd, path, strict, hint))
    return info
