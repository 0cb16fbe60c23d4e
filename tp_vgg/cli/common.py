"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from tp_vgg.checkpoint import Checkpoint, default_preprocessing, load_checkpoint
from tp_vgg.errors import UserError
from tp_vgg.models import ModelSpec, build_model, check_forward

MODEL_FLAGS = ("model_kwargs", "num_classes", "in_channels", "input_size", "width", "weights",
               "output_key")


def ratio(text: str) -> float:
    try:
        r = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; accepted: a number in [0, 1)")
    if not (0.0 <= r < 1.0) or math.isnan(r):
        raise argparse.ArgumentTypeError(f"{text!r} is outside [0, 1); accepted: a number in [0, 1)")
    return r


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; accepted: an integer >= 1")
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is below 1; accepted: an integer >= 1")
    return v


def nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; accepted: an integer >= 0")
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; accepted: an integer >= 0")
    return v


def nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; accepted: a number >= 0")
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"{text!r} is not >= 0; accepted: a finite number >= 0")
    return v


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; accepted: a number > 0")
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not > 0; accepted: a number > 0")
    return v


def unit_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; accepted: a number in [0, 1]")
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is outside [0, 1]; accepted: a number in [0, 1]")
    return v


def json_object(text: str) -> Dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(
            f"malformed JSON {text!r} ({e.msg} at character {e.pos}); "
            "accepted: a JSON object such as '{\"key\": 1}'")
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is JSON but not an object; accepted: "
                                         "a JSON object such as '{\"key\": 1}'")
    return obj


def add_model_args(p: argparse.ArgumentParser, checkpoint: bool = True,
                   required: bool = True) -> None:
    g = p.add_argument_group("model")
    src = g.add_mutually_exclusive_group(required=required)
    src.add_argument("--model", metavar="SPEC",
                     help="zoo name (see `tp-vgg models`), package.module:factory or "
                          "path/to/file.py:factory")
    if checkpoint:
        src.add_argument("--checkpoint", metavar="FILE", help="a tp-vgg checkpoint (.pt)")
    g.add_argument("--model-kwargs", type=json_object, metavar="JSON",
                   help="keyword arguments for the model factory, as a JSON object")
    g.add_argument("--num-classes", type=positive_int, metavar="N")
    g.add_argument("--in-channels", type=positive_int, metavar="C",
                   help="input channels (CIFAR-form and user models; default 3)")
    g.add_argument("--input-size", type=positive_int, metavar="S",
                   help="input height = width (default: 224 torchvision, 32 CIFAR-form and user)")
    g.add_argument("--width", type=positive_float, metavar="W",
                   help="channel-width multiplier (CIFAR-form models), e.g. 0.25")
    g.add_argument("--weights", metavar="NAME",
                   help="torchvision weights, e.g. DEFAULT (must already be in the cache)")
    g.add_argument("--output-key", metavar="KEY",
                   help="key (dict) or index (tuple) of the logits when the model returns several outputs")


@dataclass
class Loaded:
    model: nn.Module
    spec: ModelSpec
    history: List[list] = field(default_factory=list)
    preprocessing: Dict[str, Any] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[Checkpoint] = None


def spec_from_args(args: argparse.Namespace) -> ModelSpec:
    return ModelSpec(name=args.model, num_classes=args.num_classes, width=args.width,
                     in_channels=args.in_channels, input_size=args.input_size,
                     weights=args.weights, kwargs=args.model_kwargs or {},
                     output_key=args.output_key).resolved()


def load_model(args: argparse.Namespace) -> Loaded:
    """Build the model named by --model, or rebuild the one in --checkpoint."""
    if getattr(args, "checkpoint", None):
        given = [f for f in MODEL_FLAGS if getattr(args, f, None) is not None]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} cannot be combined with --checkpoint: "
                            "the checkpoint already records its model")
        ckpt = load_checkpoint(args.checkpoint)
        return Loaded(ckpt.build(), ckpt.spec, list(ckpt.history), dict(ckpt.preprocessing),
                      dict(ckpt.meta), ckpt)
    spec = spec_from_args(args)
    # --seed also fixes the initial weights, so `--model NAME` runs are reproducible
    torch.manual_seed(getattr(args, "seed", None) or 0)
    model = build_model(spec)
    check_forward(model, spec)
    return Loaded(model, spec, [], default_preprocessing(spec), {})
