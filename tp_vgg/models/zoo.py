"""The model zoo: torchvision VGGs, CIFAR-form VGGs, timm's VGGs and user factories.

A model is described by a :class:`ModelSpec` (plain data, stored in every checkpoint) and built by
:func:`build_model`. Zoo names live in the ``MODELS`` registry, ``timm:vgg16_bn`` and the other
timm VGGs too (built by tp-vgg's own code, with timm installed; see :data:`TIMM_VGGS`); any other
name with a ``:`` is a user factory, ``package.module:factory`` or ``path/to/file.py:factory``.

A spec read from a checkpoint is untrusted data. :func:`check_spec` validates it without running
anything: field types, and for zoo models every argument against what the builder accepts
(:class:`Arg`), with the model's size computed from its configuration (:func:`zoo_size`) so that a
few bytes of spec cannot make tp-vgg allocate without bound. A user factory is code: it is only
imported when the caller decides to (see :mod:`tp_vgg.checkpoint.store`), and :class:`ModelCode` pins
what it was (a file's SHA-256, a package's version) when a checkpoint was written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torchvision
from torchvision.models.vgg import cfgs as TORCHVISION_CFGS

from tp_vgg.data.preprocessing import InputSize, input_hw, size_text, size_value
from tp_vgg.errors import UserError
from tp_vgg.models import outputs
from tp_vgg.registry import Registry


@dataclass
class ModelSpec:
    """Everything needed to rebuild the unpruned model and its example input.

    ``None`` means "the model's default". ``kwargs`` are passed to the builder (``--model-kwargs``).
    ``output_key`` picks the logits from a model returning a dict or tuple.
    """

    name: str
    num_classes: Optional[int] = None
    width: Optional[float] = None
    in_channels: Optional[int] = None
    input_size: Optional[InputSize] = None   # S, or [H, W] for a non-square input
    weights: Optional[str] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)
    output_key: Optional[str] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ModelSpec":
        """A spec from plain data (a checkpoint's ``model_spec``): fields of the wrong type are a
        UserError (:func:`check_types`); unknown fields are ignored."""
        if not isinstance(d, Mapping):
            raise UserError(f"the model spec is a {type(d).__name__}, not a dict")
        if "name" not in d:
            raise UserError("the model spec has no 'name'")
        known = {f.name for f in dataclasses.fields(cls)}
        spec = cls(**{k: v for k, v in d.items() if k in known})
        check_types(spec)
        return spec

    @property
    def is_user_factory(self) -> bool:
        """Code named by the spec; ``timm:NAME`` is not (tp-vgg's own builder, see TIMM_VGGS)."""
        return ":" in self.name and not str(self.name).startswith(TIMM_PREFIX)

    def resolved(self) -> "ModelSpec":
        """A copy with the input size and channels filled from the model's defaults."""
        size, chans = (32, 3) if self.is_user_factory else (
            zoo_entry(self.name).input_size, zoo_entry(self.name).in_channels)
        return dataclasses.replace(
            self,
            input_size=size_value(self.input_size) if self.input_size else size,
            in_channels=self.in_channels or chans,
        )

    def example_input(self, batch: int = 1, device: str | torch.device = "cpu") -> torch.Tensor:
        s = self.resolved()
        return torch.randn(batch, s.in_channels, *input_hw(s.input_size), device=device)


@dataclass(frozen=True)
class Arg:
    """A keyword argument (``--model-kwargs``) a zoo builder accepts: its type and range."""

    kind: type                      # bool, int or float
    low: Optional[float] = None     # inclusive bounds
    high: Optional[float] = None

    def accepts(self, value: Any) -> bool:
        if self.kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float else int):
            return False
        if not math.isfinite(value):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def describe(self) -> str:
        if self.kind is bool:
            return "true or false"
        if self.kind is int:
            return f"an integer in [{self.low:.0f}, {self.high:.0f}]"
        return f"a number in [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[[ModelSpec], nn.Module]
    input_size: int
    in_channels: int
    description: str
    accepts: frozenset  # ModelSpec fields this builder understands besides name/input_size
    kwargs: Mapping[str, Arg] = field(default_factory=dict)  # what --model-kwargs may hold
    # (parameters, values per image: input + every conv output) computed from the spec, no model
    size: Optional[Callable[[ModelSpec], Tuple[int, int]]] = None


# What a spec may ask tp-vgg to allocate. A checkpoint comes from anywhere, and its few bytes of
# spec must not make loading it take unbounded memory; both limits are far above any VGG in use
# (vgg19_bn at 224x224: 1.4e8 parameters, 1.5e7 values per image; 2**30 fp32 values are 4 GiB).
MAX_PARAMS = 2**30
MAX_VALUES_PER_IMAGE = 2**30


MODELS: Registry[ZooEntry] = Registry("model")

# --------------------------------------------------------------------------------------------
# torchvision VGGs, built through torchvision's own API.

_TV_DEPTH = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}


TORCHVISION_KWARGS = {"dropout": Arg(float, 0, 1), "init_weights": Arg(bool)}
TORCHVISION_HEAD = 512 * 7 * 7  # the classifier input after the adaptive 7x7 average pool


def _conv_size(cfg: Sequence, batch_norm: bool, c_in: int, size: InputSize, width: float = 1.0
               ) -> Tuple[int, int, int]:
    """(parameters, values per image, last channels) of a VGG ``features`` stack."""
    h, w = input_hw(size)
    params, values = 0, c_in * h * w
    for v in cfg:
        if v == "M":
            h, w = h // 2, w // 2
            continue
        c_out = max(1, int(round(v * width)))
        params += c_in * c_out * 9 + c_out + (2 * c_out if batch_norm else 0)
        values += c_out * h * w
        c_in = c_out
    return params, values, c_in


def _linear_params(*widths: int) -> int:
    return sum(a * b + b for a, b in zip(widths, widths[1:]))


def _torchvision_size(cfg_key: str, batch_norm: bool) -> Callable[[ModelSpec], Tuple[int, int]]:
    def size(spec: ModelSpec) -> Tuple[int, int]:
        params, values, _ = _conv_size(TORCHVISION_CFGS[cfg_key], batch_norm, 3,
                                       spec.input_size or 224)
        return params + _linear_params(TORCHVISION_HEAD, 4096, 4096, spec.num_classes or 1000), values
    return size


def weights_preprocessing(spec: ModelSpec) -> Optional[Dict[str, Any]]:
    """What the torchvision weights ``spec.weights`` were trained with, from the weights enum
    (nothing is downloaded): input size (the eval crop), mean/std, the 1,000 category names and
    the eval resize; None for a model without torchvision weights."""
    if spec.weights is None or spec.is_user_factory or spec.name not in MODELS or \
            "weights" not in MODELS.get(spec.name).accepts:
        return None
    w = torchvision.models.get_model_weights(spec.name).verify(spec.weights)
    t = w.transforms()
    return {"input_size": size_value(t.crop_size), "mean": [float(v) for v in t.mean],
            "std": [float(v) for v in t.std], "class_names": list(w.meta["categories"]),
            "resize_size": size_value(t.resize_size), "weights": str(w)}


def cached_weights_file(name: str, weights: str) -> Tuple[Any, str]:
    """(the torchvision weights enum member, the file torch hub would cache it as):
    ``$TORCH_HOME/hub/checkpoints/<file>`` (``torch.hub.get_dir()``). Nothing is read."""
    w = torchvision.models.get_model_weights(name).verify(weights)
    from urllib.parse import urlparse

    filename = os.path.basename(urlparse(w.url).path)
    return w, os.path.abspath(os.path.join(torch.hub.get_dir(), "checkpoints", filename))


def _load_cached_weights(name: str, weights: str) -> Tuple[Any, Dict[str, torch.Tensor]]:
    """torchvision's ``weights`` for ``name``, read from the torch hub cache only (never
    downloaded) with ``weights_only=True``; a file not there is a UserError naming its path."""
    w, path = cached_weights_file(name, weights)
    if not os.path.isfile(path):
        raise UserError(f"torchvision weights {w} for {name} are not in the torch hub cache: "
                        f"expected the file {path} ("
                        + (f"TORCH_HOME={os.environ['TORCH_HOME']!r}" if os.environ.get("TORCH_HOME")
                           else "TORCH_HOME is not set") + "); "
                        + 
                        f"tp-vgg never downloads: copy the file there (it is {w.url}), or set "
                        "TORCH_HOME to the folder whose hub/checkpoints/ holds it")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- a truncated or foreign file fails anywhere
        raise UserError(f"cannot read torchvision weights {w} from {path}: {type(e).__name__}: "
                        f"{str(e)[:150]}; delete the file and copy it again (it is {w.url})") from e
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} holds no state_dict; delete it and copy {w.url} there again")
    return w, dict(sd)


def _torchvision_builder(name: str) -> Callable[[ModelSpec], nn.Module]:
    def build(spec: ModelSpec) -> nn.Module:
        kwargs = dict(spec.kwargs)  # checked against TORCHVISION_KWARGS by check_spec
        if spec.num_classes is not None:
            kwargs["num_classes"] = spec.num_classes
        sd = None
        if spec.weights is not None:  # from the cache, never downloaded (torchvision would)
            w, sd = _load_cached_weights(name, spec.weights)
            classes = len(w.meta["categories"])
            if kwargs.setdefault("num_classes", classes) != classes:
                raise UserError(f"torchvision weights {w} have {classes} classes; --num-classes "
                                f"{kwargs['num_classes']} does not fit them: leave --num-classes "
                                "out (then fine-tune a new head with your own script), or give "
                                "no --weights")
            kwargs.setdefault("init_weights", False)  # as torchvision does with weights
        try:
            model = torchvision.models.get_model(name, weights=None, **kwargs)
        except (ValueError, TypeError, KeyError) as e:
            raise UserError(f"torchvision could not build {name} with weights={spec.weights!r} "
                            f"and {kwargs}: {e}") from e
        if sd is not None:
            try:
                model.load_state_dict(sd)
            except RuntimeError as e:
                raise UserError(f"the cached torchvision weights {spec.weights!r} do not fit "
                                f"{name}: {str(e).splitlines()[0][:200]}") from e
        return model
    return build


# --------------------------------------------------------------------------------------------
# CIFAR-form VGGs: torchvision's layer configurations, 3x3 convs for 32x32 input, a small head.

class CifarVGG(nn.Module):
    """VGG for small images: ``features`` (conv[-BN]-ReLU blocks and 2x2 max-pools), a global
    average pool (a no-op at 32x32, where the features end at 1x1) and a two-layer classifier."""

    def __init__(self, cfg: Sequence, batch_norm: bool, num_classes: int = 10,
                 width: float = 1.0, in_channels: int = 3, hidden: Optional[int] = None):
        super().__init__()
        layers: list = []
        c_in = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            c_out = max(1, int(round(v * width)))
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden = hidden or c_in
        self.classifier = nn.Sequential(
            nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


CIFAR_KWARGS = {"hidden": Arg(int, 1, 2**20)}


def _cifar_builder(cfg_key: str, batch_norm: bool) -> Callable[[ModelSpec], nn.Module]:
    def build(spec: ModelSpec) -> nn.Module:
        return CifarVGG(TORCHVISION_CFGS[cfg_key], batch_norm,
                        num_classes=spec.num_classes or 10, width=spec.width or 1.0,
                        in_channels=spec.in_channels or 3,
                        hidden=spec.kwargs.get("hidden"))  # the only kwarg (CIFAR_KWARGS)
    return build


def _cifar_size(cfg_key: str, batch_norm: bool) -> Callable[[ModelSpec], Tuple[int, int]]:
    def size(spec: ModelSpec) -> Tuple[int, int]:
        params, values, c = _conv_size(TORCHVISION_CFGS[cfg_key], batch_norm,
                                       spec.in_channels or 3, spec.input_size or 32,
                                       spec.width or 1.0)
        hidden = spec.kwargs.get("hidden") or c
        return params + _linear_params(c, hidden, spec.num_classes or 10), values
    return size


def _register_family(name: Callable[[str, str], str], builder: Callable[[str, str, bool], Any],
                     input_size: int, describe: Callable[[str], str], accepts: frozenset,
                     kwargs: Dict[str, Arg], size: Callable[[str, bool], Any]) -> None:
    """One zoo entry per VGG depth, with and without BN: ``name(depth, bn)`` and
    ``builder(depth + bn, cfg_key, batch_norm)``; ``describe`` gets e.g. "VGG16 with BN"."""
    for depth, key in _TV_DEPTH.items():
        for bn in ("", "_bn"):
            MODELS.register(name(depth, bn), ZooEntry(
                builder(depth + bn, key, bool(bn)), input_size, 3,
                describe(f"{depth.upper()}{' with BN' if bn else ''}"), accepts, kwargs,
                size(key, bool(bn))))


_register_family(lambda d, bn: d + bn, lambda name, key, bn: _torchvision_builder(name), 224,
                 lambda v: f"torchvision {v}, ImageNet head (25088-4096-4096), 224x224",
                 frozenset({"num_classes", "weights", "kwargs"}), TORCHVISION_KWARGS,
                 _torchvision_size)
_register_family(lambda d, bn: f"cifar_{d}{bn}", lambda name, key, bn: _cifar_builder(key, bn), 32,
                 lambda v: f"CIFAR-form {v}, 32x32, two-layer classifier",
                 frozenset({"num_classes", "width", "in_channels", "kwargs"}), CIFAR_KWARGS,
                 _cifar_size)

TORCHVISION_VGGS = [n for n in MODELS.names() if not n.startswith("cifar_")]
CIFAR_VGGS = [n for n in MODELS.names() if n.startswith("cifar_")]


# --------------------------------------------------------------------------------------------
# timm's VGGs (``timm:vgg16_bn``), with timm installed (``pip install 'tp-vgg[timm]'``): built
# by timm.create_model, always with pretrained=False (weights come from --weights PATH or a
# checkpoint, never from timm's download). The features are torchvision's; the head is timm's
# ConvMlp ``pre_logits`` (a 7x7 conv to 4096 * mlp_ratio, ReLU, dropout, a 1x1 conv to 4096, ReLU;
# a feature map under 7x7 is first average-pooled up to 7x7) and ``head`` (global pool, fc).
# A spec naming one is data like any zoo name: only these names, only these arguments.

TIMM_PREFIX = "timm:"
TIMM_HIDDEN = 4096  # ConvMlp's output channels (fc2), the classifier's input
TIMM_KWARGS = {"mlp_ratio": Arg(float, 1 / TIMM_HIDDEN, 4), "drop_rate": Arg(float, 0, 1)}
TIMM_INSTALL = "pip install 'tp-vgg[timm]'"


def timm_installed() -> bool:
    """Whether timm can be imported (found without importing it)."""
    try:
        return importlib.util.find_spec("timm") is not None
    except (ImportError, ValueError):
        return False


def _import_timm(name: str):
    try:
        import timm
    except ImportError as e:
        raise UserError(f"--model {name} needs timm, which cannot be imported "
                        f"({type(e).__name__}: {e}); install it: {TIMM_INSTALL}") from e
    return timm


def _timm_builder(name: str) -> Callable[[ModelSpec], nn.Module]:
    def build(spec: ModelSpec) -> nn.Module:
        timm = _import_timm(spec.name)
        kwargs = dict(spec.kwargs)  # checked against TIMM_KWARGS by check_spec
        if spec.num_classes is not None:
            kwargs["num_classes"] = spec.num_classes
        if spec.in_channels is not None:
            kwargs["in_chans"] = spec.in_channels
        try:
            return timm.create_model(name, pretrained=False, **kwargs)
        except (ValueError, TypeError, KeyError, RuntimeError) as e:
            raise UserError(f"timm {timm.__version__} could not build {name} with {kwargs}: "
                            f"{e}") from e
    return build


def _timm_size(cfg_key: str, batch_norm: bool) -> Callable[[ModelSpec], Tuple[int, int]]:
    def size(spec: ModelSpec) -> Tuple[int, int]:
        hw = input_hw(spec.input_size or 224)
        params, values, c = _conv_size(TORCHVISION_CFGS[cfg_key], batch_norm,
                                       spec.in_channels or 3, hw)
        # five 2x2 max-pools, then ConvMlp pools a map under 7x7 up to 7x7; its 7x7 conv is valid
        h, w = (max(7, d // 32) - 6 for d in hw)
        mid = int(TIMM_HIDDEN * spec.kwargs.get("mlp_ratio", 1.0))
        params += c * mid * 49 + mid + _linear_params(mid, TIMM_HIDDEN, spec.num_classes or 1000)
        return params, values + (mid + TIMM_HIDDEN) * h * w
    return size


_register_family(lambda d, bn: f"{TIMM_PREFIX}{d}{bn}", lambda name, key, bn: _timm_builder(name),
                 224, lambda v: f"timm's {v}, 7x7-conv + 1x1-conv pre-logits (4096-4096), "
                                "global pool + fc, 224x224",
                 frozenset({"num_classes", "in_channels", "kwargs"}), TIMM_KWARGS, _timm_size)

TIMM_VGGS = [n for n in MODELS.names() if n.startswith(TIMM_PREFIX)]


def zoo_entry(name: str) -> ZooEntry:
    """The registry entry of a zoo name; a ``timm:`` name must be one of :data:`TIMM_VGGS`; a
    file named without ``:factory`` is told to add it (the callables it defines are listed)."""
    if name not in MODELS and _looks_like_file(name):
        raise UserError(_no_factory_message(name, name))
    if name not in MODELS and str(name).startswith(TIMM_PREFIX):
        raise UserError(f"--model {name!r} is not one of timm's VGGs, the only timm models tp-vgg "
                        f"builds; accepted: {', '.join(TIMM_VGGS)}")
    return MODELS.get(name)


def list_models() -> Dict[str, str]:
    """Zoo names and one-line descriptions (timm's VGGs only with timm installed)."""
    return {name: MODELS.get(name).description for name in MODELS.names()
            if not name.startswith(TIMM_PREFIX) or timm_installed()}


# --------------------------------------------------------------------------------------------
# Checking a spec: types for every spec, and for zoo models every argument against what the
# builder accepts and the size it would build. Nothing is imported or built.

_FLAG = {"num_classes": "--num-classes", "width": "--width", "in_channels": "--in-channels",
         "input_size": "--input-size", "weights": "--weights", "kwargs": "--model-kwargs",
         "output_key": "--output-key"}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_json(value: Any, depth: int = 0) -> bool:
    """Plain JSON data (what --model-kwargs parses to), nested at most 16 deep."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if depth >= 16:
        return False
    if isinstance(value, (list, tuple)):
        return all(_is_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v, depth + 1) for k, v in value.items())
    return False


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def check_types(spec: ModelSpec) -> None:
    """Every field of ``spec`` has the type (and sign) the builders expect: a spec from a file
    is data of unknown origin."""
    if not isinstance(spec.name, str) or not spec.name:
        raise UserError(f"the model name must be a non-empty string, got {_short(spec.name)}")
    for f in ("num_classes", "in_channels", "input_size"):
        v = getattr(spec, f)
        if f == "input_size" and isinstance(v, (list, tuple)):
            if len(v) != 2 or not all(_positive_int(d) for d in v):
                raise UserError(f"--input-size must be S or [H, W] of positive integers, got "
                                f"{_short(v)}")
            continue
        if v is not None and not _positive_int(v):
            raise UserError(f"{_FLAG[f]} must be a positive integer, got {_short(v)}")
    w = spec.width
    if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float))
                          or not math.isfinite(w) or not w > 0):
        raise UserError(f"--width must be > 0, got {_short(w)}")
    if spec.weights is not None and not isinstance(spec.weights, str):
        raise UserError(f"--weights must be a name such as DEFAULT, got {_short(spec.weights)}")
    if not isinstance(spec.kwargs, dict) or not _is_json(spec.kwargs):
        raise UserError(f"--model-kwargs must be a JSON object, got {_short(spec.kwargs)}")
    if spec.output_key is not None and (isinstance(spec.output_key, bool)
                                        or not isinstance(spec.output_key, (str, int))):
        raise UserError(f"--output-key must be a key or an index, got {_short(spec.output_key)}")


def _kwargs_help(entry: ZooEntry) -> str:
    return ", ".join(f"{k} ({a.describe()})" for k, a in entry.kwargs.items()) or "none"


def _check_weights(name: str, weights: str) -> None:
    """``weights`` names one of torchvision's weights for ``name`` (checked by name: nothing is
    downloaded or read)."""
    enum = torchvision.models.get_model_weights(name)
    names = [w.name for w in enum]
    short = weights[len(enum.__name__) + 1:] if weights.startswith(enum.__name__ + ".") else weights
    if short != "DEFAULT" and short not in names:
        raise UserError(f"--weights {weights!r} is not a weight of {name}; accepted: "
                        f"{', '.join(['DEFAULT'] + names)}")


def check_spec(spec: ModelSpec) -> None:
    """Refuse, before anything is built, a spec its builder does not accept: wrong types, and for
    a zoo model an option or ``--model-kwargs`` key it does not take, a value out of range, unknown
    weights, or a size over ``MAX_PARAMS`` / ``MAX_VALUES_PER_IMAGE``."""
    check_types(spec)
    if spec.is_user_factory:
        FactoryRef.parse(spec.name)
        return
    entry = zoo_entry(spec.name)
    for opt in ("num_classes", "width", "in_channels", "weights"):
        value = getattr(spec, opt)
        if value is not None and opt not in entry.accepts and not (opt == "in_channels" and value == 3):
            if opt == "weights":
                why = (": timm's pretrained download is never used" if spec.name in TIMM_VGGS
                       else "")
                raise UserError(f"--weights {_short(value)} names torchvision weights, which "
                                f"{spec.name} does not take{why}; give a state_dict file you "
                                "trained (--weights PATH, e.g. model.pth)")
            flags = ", ".join(_FLAG.get(a, a) for a in sorted(entry.accepts) if a != "kwargs")
            raise UserError(f"{_FLAG.get(opt, opt)} is not accepted by {spec.name}; it accepts: "
                            f"{flags}" + (", --model-kwargs" if "kwargs" in entry.accepts else ""))
    for key, value in spec.kwargs.items():
        arg = entry.kwargs.get(key)
        if arg is None:
            raise UserError(f"bad --model-kwargs for {spec.name}: {key!r} is not accepted; "
                            f"accepted: {_kwargs_help(entry)}")
        if not arg.accepts(value):
            raise UserError(f"bad --model-kwargs for {spec.name}: {key} must be {arg.describe()}, "
                            f"got {_short(value)}")
    if spec.weights is not None:
        _check_weights(spec.name, spec.weights)
    if entry.size is not None:
        _check_size(spec, entry)


def _check_size(spec: ModelSpec, entry: ZooEntry) -> None:
    params, values = entry.size(spec.resolved())
    given = ", ".join(f"{_FLAG[f]} {size_text(v) if f == 'input_size' else v}"
                      for f, v in ((f, getattr(spec, f)) for f in
                      ("width", "num_classes", "in_channels", "input_size"))
                      if v is not None)
    given += (", " if given and spec.kwargs else "") + ", ".join(f"{k}={v}" for k, v in spec.kwargs.items())
    what = f"{spec.name}" + (f" with {given}" if given else "")
    if params > MAX_PARAMS:
        knobs = [_FLAG[f] for f in ("width", "num_classes") if f in entry.accepts] + \
            [f"--model-kwargs {k}" for k in entry.kwargs if entry.kwargs[k].kind is int]
        raise UserError(f"{what} would have {params:.3g} parameters ({params * 4 / 2**30:.3g} GiB "
                        f"in fp32), more than tp-vgg builds ({MAX_PARAMS:.3g}, 4 GiB); accepted: "
                        f"a smaller {_either(knobs)}")
    if values > MAX_VALUES_PER_IMAGE:
        knobs = ["--input-size"] + [_FLAG[f] for f in ("width", "in_channels") if f in entry.accepts]
        raise UserError(f"{what} would compute {values:.3g} values per image (input and conv "
                        f"outputs, {values * 4 / 2**30:.3g} GiB in fp32), more than tp-vgg builds "
                        f"({MAX_VALUES_PER_IMAGE:.3g}, 4 GiB); accepted: a smaller "
                        f"{_either(knobs)}")


def _either(items: Sequence[str]) -> str:
    return " or ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + " or " + items[-1]


# --------------------------------------------------------------------------------------------
# User factories: code. Parsing a name imports nothing; building imports the module or runs the
# file, which is the caller's decision (a checkpoint's spec asks for consent first, see
# tp_vgg.checkpoint.store).

@dataclass(frozen=True)
class FactoryRef:
    """``package.module:callable`` or ``path/to/file.py:callable``, parsed without importing."""

    target: str
    where: str             # the module, or the path as written
    attr: str              # the callable
    file: Optional[str]    # absolute path of a file factory; None for a module

    @classmethod
    def parse(cls, target: str) -> "FactoryRef":
        where, _, attr = str(target).rpartition(":")
        if where and not attr and _looks_like_file(where):
            raise UserError(_no_factory_message(where, target))
        if not where or not attr:
            raise UserError(f"bad model {target!r}; accepted: a zoo name ({', '.join(MODELS.names())}) "
                            "or package.module:factory or path/to/file.py:factory")
        is_file = where.endswith(".py") or os.sep in where or "/" in where
        return cls(target, where, attr, os.path.abspath(where) if is_file else None)

    def source(self) -> str:
        """What building it would run: ``file '/abs/x.py'`` or ``module 'pkg.mod'``."""
        return f"file {self.file!r}" if self.file else f"module {self.where!r}"


def _looks_like_file(name: str) -> bool:
    return ":" not in str(name) and (str(name).endswith(".py") or "/" in str(name)
                                     or os.sep in str(name))


def defined_callables(path: str) -> Optional[List[str]]:
    """The functions and classes (and ``name = lambda ...``) defined at the top level of the
    Python file ``path``, read with ``ast`` -- the file is parsed, never imported or run; None
    when it cannot be read or parsed. Public names first."""
    import ast

    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None
    names: List[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    names = list(dict.fromkeys(names))
    return [n for n in names if not n.startswith("_")] + [n for n in names if n.startswith("_")]


def _callables_text(path: str) -> str:
    names = defined_callables(path)
    if names is None:
        return "it cannot be parsed as Python"
    if not names:
        return "it defines no function or class at its top level"
    return f"callables defined in it: {', '.join(names[:12])}" + (", ..." if len(names) > 12 else "")


def _no_factory_message(where: str, given: str) -> str:
    """``--model path/to/file.py`` with the ``:factory`` forgotten."""
    if not os.path.isfile(where):
        return (f"--model {given!r} names no zoo model, and model file {where!r} does not exist; "
                "accepted: a zoo name (tp-vgg models) or path/to/file.py:factory")
    names = defined_callables(where) or []
    example = f"{where}:{names[0]}" if names else f"{where}:factory"
    return (f"--model {given!r} names a file but not the callable that builds the model: add "
            f":factory, e.g. --model {example}; {_callables_text(where)} (read, not run)")


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> Dict[str, list]:
    return dict(importlib.metadata.packages_distributions())  # ~0.3 s: scanned once per process


def _distribution(module: str) -> Tuple[Optional[str], Optional[str]]:
    """(distribution, version) that installs ``module``'s top-level package, from the installed
    metadata (nothing is imported); (None, None) when it comes from no distribution."""
    dists = _packages_distributions().get(module.split(".")[0]) or []
    for dist in dists:
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@dataclass(frozen=True)
class ModelCode:
    """What a user factory's code was when a checkpoint was written: the SHA-256 of a
    ``file.py`` factory's source, or the distribution and version of a package factory's package
    (when it comes from an installed distribution). Checked before the code is run again."""

    factory: str
    sha256: Optional[str] = None
    distribution: Optional[str] = None
    version: Optional[str] = None

    @classmethod
    def of(cls, target: str) -> "ModelCode":
        """The code of ``target`` as it is now (reads the file; imports nothing)."""
        ref = FactoryRef.parse(target)
        if ref.file:
            try:
                with open(ref.file, "rb") as f:
                    return cls(target, sha256=_sha256(f.read()))
            except OSError:
                return cls(target)
        dist, version = _distribution(ref.where)
        return cls(target, distribution=dist, version=version)

    def to_dict(self) -> Dict[str, Optional[str]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Optional["ModelCode"]:
        if d is None:
            return None
        if not isinstance(d, Mapping) or not all(
                d.get(f.name) is None or isinstance(d.get(f.name), str) for f in dataclasses.fields(cls)):
            raise UserError(f"the model code record must be a dict of strings, got {_short(d)}")
        return cls(**{f.name: d.get(f.name) for f in dataclasses.fields(cls) if f.name in d})


CHANGED_HINT = ("pass --allow-changed-model-code (Python: allow_changed_model_code=True) to build "
                "from it anyway")


def _exec_file(ref: FactoryRef, code: Optional[ModelCode], allow_changed: bool):
    where, path, target = ref.where, ref.file, ref.target
    if not os.path.isfile(path):
        raise UserError(f"model file {where!r} does not exist (from --model {target!r})")
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as e:
        raise UserError(f"cannot read model file {where!r}: {e.strerror}") from e
    digest = _sha256(content)
    if code is not None and code.sha256 and digest != code.sha256 and not allow_changed:
        raise UserError(f"model file {where!r} has changed since the checkpoint was written "
                        f"(SHA-256 {code.sha256[:12]}... then, {digest[:12]}... now); restore the "
                        f"file as it was, or {CHANGED_HINT}")
    # keyed by path and content: an edited file is run afresh in this process
    mod_name = "tp_vgg_user_" + hashlib.sha1(path.encode() + b"\0" + content).hexdigest()[:12]
    module = sys.modules.get(mod_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None:
            raise UserError(f"cannot import {where!r} as a Python file (from --model {target!r})")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:  # the bytes just read (and hashed) are what runs, not a second read of the file
            with _siblings_importable(os.path.dirname(path)):
                exec(compile(content, path, "exec"), module.__dict__)
        except Exception as e:
            del sys.modules[mod_name]
            raise UserError(f"importing {where!r} failed: {type(e).__name__}: {e}") from e
    return module


def _module_names(folder: str) -> List[str]:
    """Top-level module names a file in ``folder`` can import from it: ``x.py`` and packages."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    return [e[:-3] if e.endswith(".py") else e for e in entries
            if (e.endswith(".py") and e[:-3].isidentifier())
            or (e.isidentifier() and os.path.isfile(os.path.join(folder, e, "__init__.py")))]


def _in_folder(module: Any, folder: str) -> bool:
    f = getattr(module, "__file__", None)
    return bool(f) and os.path.abspath(f).startswith(folder + os.sep)


@contextlib.contextmanager
def _siblings_importable(folder: str) -> Iterator[None]:
    """While a model file runs, its folder is importable (``from layers import Block``), as when
    it runs as a script. Its sibling modules are private to it: a module of the same name already
    imported from elsewhere is set aside meanwhile, and the siblings leave ``sys.modules``
    afterwards (the model file keeps what it imported), so two model files in different folders
    each import their own ``layers.py``."""
    folder = os.path.abspath(folder)
    hidden = {}
    for name in _module_names(folder):
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            if not _in_folder(sys.modules[key], folder):
                hidden[key] = sys.modules.pop(key)
    before = set(sys.modules)
    sys.path.insert(0, folder)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
        for key in set(sys.modules) - before:
            if _in_folder(sys.modules[key], folder):
                del sys.modules[key]
        sys.modules.update(hidden)


def _import_module(ref: FactoryRef, code: Optional[ModelCode], allow_changed: bool):
    if code is not None and code.version is not None and not allow_changed:
        dist, now = _distribution(ref.where)
        if now != code.version:
            now_text = f"version {now}" if now else "not installed as a package"
            raise UserError(f"package {code.distribution!r} of module {ref.where!r} is {now_text} "
                            f"now, version {code.version} when the checkpoint was written; install "
                            f"{code.distribution}=={code.version}, or {CHANGED_HINT}")
    try:
        return importlib.import_module(ref.where)
    except Exception as e:
        raise UserError(f"cannot import module {ref.where!r} (from --model {ref.target!r}): "
                        f"{type(e).__name__}: {e}") from e


def _load_factory(target: str, code: Optional[ModelCode] = None,
                  allow_changed: bool = False) -> Callable[..., Any]:
    ref = FactoryRef.parse(target)
    module = _exec_file(ref, code, allow_changed) if ref.file else _import_module(ref, code, allow_changed)
    factory = getattr(module, ref.attr, None)
    if factory is None or not callable(factory):
        raise UserError(f"{ref.where!r} has no callable {ref.attr!r} (from --model {target!r})"
                        + (f"; {_callables_text(ref.file)}" if ref.file else ""))
    return factory


def factory_kwargs(spec: ModelSpec) -> Dict[str, Any]:
    """The keyword arguments a user factory is called with: ``kwargs`` plus ``num_classes`` and
    ``width`` when given."""
    kwargs = dict(spec.kwargs)
    if spec.num_classes is not None:
        kwargs.setdefault("num_classes", spec.num_classes)
    if spec.width is not None:
        kwargs.setdefault("width", spec.width)
    return kwargs


def _build_user(spec: ModelSpec, code: Optional[ModelCode], allow_changed: bool) -> nn.Module:
    factory = _load_factory(spec.name, code, allow_changed)
    kwargs = factory_kwargs(spec)
    _check_required(spec, factory, kwargs)
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise UserError(f"factory {spec.name!r} raised {type(e).__name__}: {e} "
                        f"(called with {kwargs})") from e
    if not isinstance(model, nn.Module):
        raise UserError(f"factory {spec.name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


_ARG_FLAGS = {"num_classes": "--num-classes N", "width": "--width W"}


def _check_required(spec: ModelSpec, factory: Callable[..., Any], kwargs: Dict[str, Any]) -> None:
    """A factory's required arguments that ``kwargs`` do not give are named, with the flag that
    gives them (``--model-kwargs '{"name": ...}'``), before it is called."""
    import inspect
    import json

    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: its own error says it
        return
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    missing = [p.name for p in params
               if p.kind in kinds and p.default is inspect.Parameter.empty and p.name not in kwargs]
    if not missing:
        return
    flags = [_ARG_FLAGS[m] for m in missing if m in _ARG_FLAGS]
    rest = [m for m in missing if m not in _ARG_FLAGS]
    if rest:
        shown = json.dumps(dict(spec.kwargs, **{m: 0 for m in rest}))
        for m in rest:  # a placeholder the user replaces
            shown = shown.replace(f'"{m}": 0', f'"{m}": ...')
        flags.append(f"--model-kwargs '{shown}'")
    names = ", ".join(repr(m) for m in missing)
    raise UserError(f"factory {spec.name!r} needs the argument{'s' if len(missing) > 1 else ''} "
                    f"{names}, not given (called with {kwargs}); pass "
                    + " and ".join(flags) + " with the value(s) your model needs")


# --------------------------------------------------------------------------------------------
# What tp-vgg knows of a model it built or loaded, kept on the model.

RECORD_ATTR = "tp_vgg_record"


@dataclass
class ModelRecord:
    """Kept on a model tp-vgg built or loaded (``model.tp_vgg_record``): its spec, the pruning
    history since it was built unpruned, and the preprocessing and meta its checkpoint stored.
    :func:`build_model` and :func:`tp_vgg.load` attach it and :func:`tp_vgg.prune` extends the
    history, so that ``count(model)``, ``prune(model, cfg)``, ``finetune(model, data, epochs)``
    and ``save(path, model)`` need nothing else. A deep copy carries its own copy."""

    spec: ModelSpec
    history: List[list] = field(default_factory=list)
    preprocessing: Any = None   # tp_vgg.data.preprocessing.Preprocessing, or None
    meta: Dict[str, Any] = field(default_factory=dict)


def record_of(model: nn.Module) -> Optional[ModelRecord]:
    rec = getattr(model, RECORD_ATTR, None)
    return rec if isinstance(rec, ModelRecord) else None


def attach_record(model: nn.Module, record: ModelRecord) -> nn.Module:
    """``model`` with ``record`` kept on it (not for a module that takes no attributes)."""
    try:
        object.__setattr__(model, RECORD_ATTR, record)
    except (AttributeError, TypeError, RuntimeError):  # e.g. a ScriptModule
        pass
    return model


def spec_of(model: nn.Module, spec: Optional[ModelSpec] = None, call: str = "count") -> ModelSpec:
    """``spec`` if given, else the one kept on ``model`` (:class:`ModelRecord`)."""
    if spec is not None:
        return spec
    rec = record_of(model)
    if rec is None:
        raise UserError(f"{call}(model) needs the model's spec: this model was not built or "
                        f"loaded by tp-vgg (tp_vgg.build_model, tp_vgg.load); pass "
                        f"{call}(model, spec) with spec = tp_vgg.ModelSpec(NAME, ...)")
    return rec.spec


def build_model(spec: ModelSpec, code: Optional[ModelCode] = None,
                allow_changed_code: bool = False) -> nn.Module:
    """Build the unpruned model described by ``spec`` (in train mode, on the CPU).

    The spec is checked first (:func:`check_spec`). A user factory is imported and called here:
    that is the caller's decision (a checkpoint's spec goes through
    :meth:`tp_vgg.checkpoint.store.Checkpoint.build`, which asks for consent first). ``code`` pins it:
    a file whose SHA-256 or a package whose version differs is refused unless
    ``allow_changed_code``."""
    check_spec(spec)
    if spec.is_user_factory:
        model = _build_user(spec, code, allow_changed_code)
    else:
        model = MODELS.get(spec.name).build(spec)
    return attach_record(model, ModelRecord(spec))


@contextlib.contextmanager
def keep_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Restore the train/eval mode of every module of ``model`` on leaving (work inside may
    switch modes: tracing, counting, evaluating, recalibrating BatchNorm)."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.train(training)


def check_forward(model: nn.Module, spec: ModelSpec) -> torch.Size:
    """Run the example input through ``model`` (eval mode, no grad; the mode is kept) and return
    the logits' shape; a failure is the user's to fix (input size, channels, output key)."""
    s = spec.resolved()
    device = next(model.parameters()).device
    with keep_mode(model):
        try:
            model.eval()
            with torch.no_grad():
                out = outputs.run(model, s.example_input(device=device))
        except UserError:
            raise
        except Exception as e:
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UserError(f"{s.name} cannot run on a 1x{s.in_channels}x"
                            f"{'x'.join(map(str, input_hw(s.input_size)))} input "
                            f"({type(e).__name__}: {msg}); check "
                            "--input-size and --in-channels") from e
    found = outputs.require_tensors(out)
    if not outputs.classifies(model) or (s.output_key is None and len(found) > 1
                                         and not _has_logits(out)):
        return found[0].shape  # no single logits: every output is pruned and checked
    return select_logits(out, s.output_key).shape


def _has_logits(out: Any) -> bool:
    return isinstance(out, dict) and any(isinstance(out.get(k), torch.Tensor)
                                         for k in ("logits", "out"))


class LogitsOnly(nn.Module):
    """Wraps a model so that its output is the logits tensor (for tracing and export of models
    that return a dict or a tuple)."""

    def __init__(self, model: nn.Module, key: Optional[str]):
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x):
        return select_logits(self.model(x), self.key)


def select_logits(output: Any, key: Optional[str] = None) -> torch.Tensor:
    """The logits tensor from a model's output: the tensor itself, ``output[key]`` of a dict
    (``key`` or the only tensor value or ``'logits'``/``'out'``), or an element of a tuple/list
    (``key`` as an index, else the first tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        if key is not None:
            if key not in output:
                raise UserError(f"--output-key {key!r} is not in the model's output; "
                                f"keys: {', '.join(map(str, output))}")
            return output[key]
        for k in ("logits", "out"):
            if isinstance(output.get(k), torch.Tensor):
                return output[k]
        tensors = [v for v in output.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise UserError("the model returns a dict with several tensors "
                        f"({', '.join(map(str, output))}); name the logits with --output-key")
    if isinstance(output, (tuple, list)):
        if key is not None:
            try:
                return output[int(key)]
            except (ValueError, IndexError):
                raise UserError(f"--output-key {key!r} is not an index of the model's "
                                f"{len(output)}-element output") from None
        for v in output:
            if isinstance(v, torch.Tensor):
                return v
    raise UserError(f"cannot find logits in a model output of type {type(output).__name__}")
