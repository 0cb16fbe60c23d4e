"""What a model expects of its input, travelling with its weights: the input size and channels,
the normalization (mean/std per channel) and the class names. A checkpoint stores it as plain
values (:meth:`Preprocessing.to_dict`), an ONNX export in its metadata."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

# An input size: one int for a square input, or [height, width] (as a checkpoint stores it).
InputSize = Union[int, List[int]]


def input_hw(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """(height, width) of an input size given as ``S`` or ``[H, W]``."""
    if isinstance(size, (list, tuple)):
        h, w = (size[0], size[0]) if len(size) == 1 else size   # torchvision's [S] too
        return int(h), int(w)
    return int(size), int(size)


def size_value(size: Union[int, Sequence[int]]) -> InputSize:
    """The stored form: ``S`` for a square input, ``[H, W]`` otherwise."""
    h, w = input_hw(size)
    return h if h == w else [h, w]


def size_text(size: Union[int, Sequence[int]]) -> str:
    """``32`` or ``96x64``, as --input-size takes it."""
    h, w = input_hw(size)
    return str(h) if h == w else f"{h}x{w}"


KEYS = ("input_size", "in_channels", "mean", "std", "class_names")


@dataclass
class Preprocessing:
    """``mean``/``std`` None: not known yet (the data's statistics are used). ``extra`` keeps
    what else was recorded with it (the dataset's name, its augmentation)."""

    input_size: Optional[InputSize] = None
    in_channels: Optional[int] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    class_names: Optional[List[str]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_spec(cls, spec) -> "Preprocessing":
        """A new model's: its input size and channels, nothing else known."""
        s = spec.resolved()
        return cls(input_size=s.input_size, in_channels=s.in_channels)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocessing":
        return cls(**{k: d.get(k) for k in KEYS}, extra={k: v for k, v in d.items() if k not in KEYS})

    @classmethod
    def of(cls, value: Union["Preprocessing", Mapping[str, Any], None]) -> "Preprocessing":
        """``value`` as a Preprocessing (a copy): from a dict (as stored), or empty for None."""
        if value is None:
            return cls()
        if isinstance(value, Preprocessing):
            return dataclasses.replace(value, extra=dict(value.extra))
        return cls.from_dict(value)

    @property
    def normalized(self) -> bool:
        """Whether mean and std are known."""
        return self.mean is not None and self.std is not None

    def is_empty(self) -> bool:
        return self == Preprocessing()

    def to_dict(self) -> Dict[str, Any]:
        """Plain values, as a checkpoint stores them."""
        d = {k: getattr(self, k) for k in KEYS}
        d.update(self.extra)
        return d
