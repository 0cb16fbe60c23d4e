"""The model zoo: torchvision VGGs, CIFAR-form VGGs and user factories.

A model is described by a :class:`ModelSpec` (plain data, stored in every checkpoint) and built by
:func:`build_model`. Zoo names live in the ``MODELS`` registry; anything with a ``:`` is a user
factory, ``package.module:factory`` or ``path/to/file.py:factory``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torchvision
from torchvision.models.vgg import cfgs as TORCHVISION_CFGS

from tp_vgg.errors import UserError
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
    input_size: Optional[int] = None
    weights: Optional[str] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)
    output_key: Optional[str] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def is_user_factory(self) -> bool:
        return ":" in self.name

    def resolved(self) -> "ModelSpec":
        """A copy with the input size and channels filled from the model's defaults."""
        size, chans = (32, 3) if self.is_user_factory else (
            MODELS.get(self.name).input_size, MODELS.get(self.name).in_channels)
        return dataclasses.replace(
            self,
            input_size=self.input_size or size,
            in_channels=self.in_channels or chans,
        )

    def example_input(self, batch: int = 1, device: str | torch.device = "cpu") -> torch.Tensor:
        s = self.resolved()
        return torch.randn(batch, s.in_channels, s.input_size, s.input_size, device=device)


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[[ModelSpec], nn.Module]
    input_size: int
    in_channels: int
    description: str
    accepts: frozenset  # ModelSpec fields this builder understands besides name/input_size


MODELS: Registry[ZooEntry] = Registry("model")

# --------------------------------------------------------------------------------------------
# torchvision VGGs, built through torchvision's own API.

_TV_DEPTH = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}


def _torchvision_builder(name: str) -> Callable[[ModelSpec], nn.Module]:
    def build(spec: ModelSpec) -> nn.Module:
        kwargs = dict(spec.kwargs)
        if spec.num_classes is not None:
            kwargs["num_classes"] = spec.num_classes
        try:
            return torchvision.models.get_model(name, weights=spec.weights, **kwargs)
        except (ValueError, TypeError, KeyError) as e:
            raise UserError(f"torchvision could not build {name} with weights={spec.weights!r} "
                            f"and {kwargs}: {e}") from e
        except (OSError, RuntimeError) as e:  # weights not in the cache and no network
            raise UserError(f"could not load torchvision weights {spec.weights!r} for {name}: {e}; "
                            "weights must already be in torchvision's cache ($TORCH_HOME)") from e
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


def _cifar_builder(cfg_key: str, batch_norm: bool) -> Callable[[ModelSpec], nn.Module]:
    def build(spec: ModelSpec) -> nn.Module:
        kwargs = dict(spec.kwargs)
        try:
            return CifarVGG(TORCHVISION_CFGS[cfg_key], batch_norm,
                            num_classes=spec.num_classes or 10, width=spec.width or 1.0,
                            in_channels=spec.in_channels or 3, **kwargs)
        except TypeError as e:
            raise UserError(f"bad --model-kwargs for {spec.name}: {e}; accepted: hidden") from e
    return build


for _depth, _key in _TV_DEPTH.items():
    for _bn in ("", "_bn"):
        MODELS.register(
            f"{_depth}{_bn}",
            ZooEntry(_torchvision_builder(f"{_depth}{_bn}"), 224, 3,
                     f"torchvision {_depth.upper()}{' with BN' if _bn else ''}, ImageNet head "
                     "(25088-4096-4096), 224x224", frozenset({"num_classes", "weights", "kwargs"})))
for _depth, _key in _TV_DEPTH.items():
    for _bn in ("", "_bn"):
        MODELS.register(
            f"cifar_{_depth}{_bn}",
            ZooEntry(_cifar_builder(_key, bool(_bn)), 32, 3,
                     f"CIFAR-form {_depth.upper()}{' with BN' if _bn else ''}, 32x32, "
                     "two-layer classifier",
                     frozenset({"num_classes", "width", "in_channels", "kwargs"})))

TORCHVISION_VGGS = [n for n in MODELS.names() if not n.startswith("cifar_")]
CIFAR_VGGS = [n for n in MODELS.names() if n.startswith("cifar_")]


def list_models() -> Dict[str, str]:
    """Zoo names and one-line descriptions."""
    return {name: MODELS.get(name).description for name in MODELS.names()}


# --------------------------------------------------------------------------------------------
# User factories.

def _load_factory(target: str) -> Callable[..., Any]:
    where, _, attr = target.rpartition(":")
    if not where or not attr:
        raise UserError(f"bad model {target!r}; accepted: a zoo name ({', '.join(MODELS.names())}) "
                        "or package.module:factory or path/to/file.py:factory")
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise UserError(f"model file {where!r} does not exist (from --model {target!r})")
        try:  # keyed by path and content: an edited file is imported afresh in this process
            with open(path, "rb") as f:
                content = f.read()
        except OSError as e:
            raise UserError(f"cannot read model file {where!r}: {e.strerror}") from e
        mod_name = "tp_vgg_user_" + hashlib.sha1(path.encode() + b"\0" + content).hexdigest()[:12]
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise UserError(f"cannot import {where!r} as a Python file (from --model {target!r})")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[mod_name]
                raise UserError(f"importing {where!r} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise UserError(f"cannot import module {where!r} (from --model {target!r}): "
                            f"{type(e).__name__}: {e}") from e
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UserError(f"{where!r} has no callable {attr!r} (from --model {target!r})")
    return factory


def _build_user(spec: ModelSpec) -> nn.Module:
    factory = _load_factory(spec.name)
    kwargs = dict(spec.kwargs)
    if spec.num_classes is not None:
        kwargs.setdefault("num_classes", spec.num_classes)
    if spec.width is not None:
        kwargs.setdefault("width", spec.width)
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise UserError(f"factory {spec.name!r} raised {type(e).__name__}: {e} "
                        f"(called with {kwargs})") from e
    if not isinstance(model, nn.Module):
        raise UserError(f"factory {spec.name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the unpruned model described by ``spec`` (in train mode, on the CPU)."""
    if spec.is_user_factory:
        return _build_user(spec)
    entry = MODELS.get(spec.name)
    for opt in ("num_classes", "width", "in_channels", "weights"):
        value = getattr(spec, opt)
        if value is not None and opt not in entry.accepts and not (opt == "in_channels" and value == 3):
            raise UserError(f"--{opt.replace('_', '-')} is not accepted by {spec.name}; "
                            f"it accepts: {', '.join(sorted(a for a in entry.accepts if a != 'kwargs'))}")
    if spec.num_classes is not None and spec.num_classes < 1:
        raise UserError(f"--num-classes must be a positive integer, got {spec.num_classes}")
    if spec.width is not None and not spec.width > 0:
        raise UserError(f"--width must be > 0, got {spec.width}")
    return entry.build(spec)


def check_forward(model: nn.Module, spec: ModelSpec) -> torch.Size:
    """Run the example input through ``model`` (eval mode, no grad; the mode is kept) and return
    the logits' shape; a failure is the user's to fix (input size, channels, output key)."""
    s = spec.resolved()
    device = next(model.parameters()).device
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            out = model(s.example_input(device=device))
    except UserError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{s.name} cannot run on a 1x{s.in_channels}x{s.input_size}x{s.input_size} "
                        f"input ({type(e).__name__}: {msg}); check --input-size and --in-channels") from e
    finally:
        for m, t in training.items():
            m.train(t)
    return select_logits(out, s.output_key).shape


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
