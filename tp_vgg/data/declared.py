"""What the user declares about their data, and the checks of data against what a model records.

* :class:`Declared` -- the normalization the model was trained with (``--mean``/``--std``, or
  ``--data-kwargs '{"mean": [...], "std": [...]}'``) and ``--allow-class-mismatch``; a loaded
  dataset carries it (``data.declared``), so that every stage that resolves a preprocessing sees it;
* :func:`choose_normalization` -- the mean/std to use and where they came from: ``declared``, the
  ``checkpoint``, the torchvision ``weights``, the ``onnx`` file, or estimated from the ``data``;
* :func:`check_class_names` -- data whose class names differ from those a model records are
  refused (exit 2, both lists named) unless ``allow_class_mismatch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Sequence, Set, Tuple

from tp_vgg.errors import UserError

# Where a normalization came from (Preprocessing.extra["normalization"]), and how it is said.
SOURCES = {
    "declared": "declared with --mean/--std",
    "checkpoint": "recorded in the checkpoint",
    "weights": "of the torchvision weights",
    "onnx": "recorded in the ONNX file",
    "data": "estimated from the training images",
}
SHOW_CLASSES = 6  # class names shown per list in a mismatch message


@dataclass
class Declared:
    """What the user said about the data. ``log`` hears the notices (each said once)."""

    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    allow_class_mismatch: bool = False
    log: Optional[Callable[[str], None]] = field(default=None, repr=False, compare=False)
    said: Set[str] = field(default_factory=set, repr=False, compare=False)

    def say(self, message: str) -> None:
        if self.log is not None and message not in self.said:
            self.said.add(message)
            self.log(message)


def declared_of(data: Any) -> Declared:
    d = getattr(data, "declared", None)
    return d if isinstance(d, Declared) else Declared()


def _values(flag: str, values: Any) -> List[float]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"{flag} {values!r} is not a list of numbers; accepted: one number per "
                        "channel, e.g. --mean 0.5,0.5,0.5 (or [0.5, 0.5, 0.5] in --data-kwargs)")
    out = [float(v) for v in values]
    bad = next((v for v in out if not math.isfinite(v)), None)
    if bad is not None:
        raise UserError(f"{flag} {_text(out)}: {bad} is not a finite number; accepted: one "
                        "finite number per channel")
    return out


def _text(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def declared_normalization(mean: Any, std: Any, kwargs: Mapping[str, Any]
                           ) -> Tuple[Optional[List[float]], Optional[List[float]]]:
    """The mean/std the user declared, from the flags (``mean``, ``std``) and/or
    ``--data-kwargs`` (``kwargs``), checked: both or neither, as many of each, std > 0."""
    out = []
    for key, flag_value in (("mean", mean), ("std", std)):
        flag = f"--{key}"
        given = None if flag_value is None else _values(flag, flag_value)
        if key in kwargs:
            from_kwargs = _values(f"--data-kwargs {key}", kwargs[key])
            if given is not None and given != from_kwargs:
                raise UserError(f"{flag} {_text(given)} and --data-kwargs {key} "
                                f"{_text(from_kwargs)} differ; give it once")
            given = from_kwargs
        out.append(given)
    m, s = out
    if (m is None) != (s is None):
        have, need = ("--mean", "--std") if s is None else ("--std", "--mean")
        raise UserError(f"{have} is given without {need}: the normalization is (x - mean) / std "
                        f"per channel; give both, e.g. --mean 0.5,0.5,0.5 --std 0.25,0.25,0.25")
    if m is None:
        return None, None
    if len(m) != len(s):
        raise UserError(f"--mean {_text(m)} has {len(m)} values but --std {_text(s)} has "
                        f"{len(s)}; accepted: one of each per channel")
    bad = next((v for v in s if v <= 0), None)
    if bad is not None:
        raise UserError(f"--std {_text(s)}: {bad:g} is not > 0; accepted: positive numbers, "
                        "one per channel")
    return m, s


def check_channels(declared: Declared, name: str, channels: int) -> None:
    """The declared normalization has one value per channel of the data."""
    if declared.mean is not None and len(declared.mean) != channels:
        n = len(declared.mean)
        raise UserError(f"--mean/--std have {n} value{'s' if n != 1 else ''} each but {name} "
                        f"images have {channels} channel{'s' if channels != 1 else ''}; accepted: "
                        f"{channels} comma-separated number{'s' if channels != 1 else ''} each")


def _rounded(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def choose_normalization(data: Any, stored: Optional[Tuple[Sequence[float], Sequence[float]]],
                         stored_source: str = "checkpoint", detail: str = ""
                         ) -> Tuple[List[float], List[float], str]:
    """(mean, std, source): the declared normalization, else ``stored`` (from
    ``stored_source``), else the data's own statistics; said once on ``data.declared.log``.
    ``detail`` is added to the notice (e.g. the weights' name)."""
    d = declared_of(data)
    if d.mean is not None:
        mean, std, source = list(d.mean), list(d.std), "declared"
    elif stored is not None:
        mean, std, source = [float(v) for v in stored[0]], [float(v) for v in stored[1]], stored_source
    else:
        mean, std = data.stats()
        source = "data"
    how = SOURCES.get(source, source) + (f" {detail}" if detail else "")
    if source == "data":
        how += f" of {getattr(data, 'name', 'the data')}"
    d.say(f"normalization: mean {_rounded(mean)}, std {_rounded(std)} ({how})")
    return mean, std, source


def recorded_class_names(pre: Any) -> Optional[List[str]]:
    """The class names a model's record (a checkpoint's preprocessing, an ONNX file's metadata)
    names as the classes of its outputs, or None when it names none -- or only the category
    names of torchvision weights it was never trained past (an ImageNet folder names its
    classes by WordNet id, ``n01440764``, where the weights say ``tench``)."""
    if pre is None:
        return None
    names = pre.get("class_names") if isinstance(pre, Mapping) else getattr(pre, "class_names", None)
    extra = pre if isinstance(pre, Mapping) else getattr(pre, "extra", {}) or {}
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return None
    if "weights" in extra and "dataset" not in extra:
        return None
    return list(names)


def short_list(names: Sequence[str], show: int = SHOW_CLASSES) -> str:
    shown = ", ".join(names[:show])
    return shown + (f", ... ({len(names)} in all)" if len(names) > show else "")


def check_class_names(data: Any, names: Optional[Sequence[str]], what: str = "checkpoint") -> None:
    """Refuse data whose class names differ from ``names`` (those the model records, ``what``:
    the checkpoint, the ONNX file), unless ``data.declared.allow_class_mismatch`` (then a notice).
    Lists of different lengths are left to the output-count check, which says so."""
    if not names:
        return
    have = list(getattr(data, "class_names", []) or [])
    if list(names) == have or len(names) != len(have):
        return
    d = declared_of(data)
    msg = (f"the {getattr(data, 'name', 'data')} classes ({short_list(have)}) are not the "
           f"{what}'s ({short_list(list(names))})")
    if d.allow_class_mismatch:
        d.say(f"note: {msg}; going on as told (--allow-class-mismatch): label i of the data is "
              f"scored as output i of the model")
        return
    raise UserError(f"{msg}: label i of the data would be scored as output i of the model; use "
                    "the data the model was trained on, or pass --allow-class-mismatch if these "
                    "are the same classes under other names")
