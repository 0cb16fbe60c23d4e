"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import difflib
import json
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from tp_vgg.checkpoint.source import Loaded, ModelSource, load_source
from tp_vgg.cli import REQUIRE_ONE_OF
from tp_vgg.errors import UserError
from tp_vgg.models.weights import is_weights_file
from tp_vgg.models.zoo import ModelSpec
from tp_vgg.pruning.graph import percent_hint

MODEL_FLAGS = ("model_kwargs", "num_classes", "in_channels", "input_size", "width", "weights",
               "weights_key", "output_key")


def numeric(convert: Callable[[str], Any], ok: Callable[[Any], bool], accepted: str,
            out_of_range: str, range_accepted: Optional[str] = None,
            words: Sequence[str] = (),
            hint: Callable[[Any], str] = lambda value: "") -> Callable[[str], Any]:
    """An argparse ``type`` for a number: ``convert`` (int or float) the text, refuse it unless
    ``ok(value)``; each refusal names the value and what is ``accepted`` (after a value out of
    range: ``range_accepted``, default the same, then ``hint(value)``). ``words`` pass through
    as they are (e.g. ``auto``)."""
    kind = "a whole number" if convert is int else "a number"

    def parse(text: str) -> Any:
        if text in words:
            return text
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}; accepted: {accepted}")
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} {out_of_range}; accepted: "
                                             f"{range_accepted or accepted}{hint(value)}")
        return value
    return parse


# pruning ratios (--ratio, --max-layer-ratio): --ratio 50 gets "; it is the fraction of each
# layer's channels to remove, not a percentage: did you mean 0.5 (50 %)?"
ratio = numeric(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)", "is outside [0, 1)",
                hint=lambda v: percent_hint(v, "the fraction of each layer's channels to remove"))
# other fractions in [0, 1) (--momentum, --label-smoothing)
fraction = numeric(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)", "is outside [0, 1)",
                   hint=percent_hint)
positive_int = numeric(int, lambda v: v >= 1, "an integer >= 1", "is below 1")
nonneg_int = numeric(int, lambda v: v >= 0, "an integer >= 0", "is negative")
nonneg_float = numeric(float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0",
                       "is not >= 0", "a finite number >= 0")
positive_float = numeric(float, lambda v: v > 0 and not math.isinf(v), "a number > 0",
                         "is not > 0")
# Words an unknown flag may start with that the real one lacks: --prune-ratio -> --ratio,
# --num-epochs -> --epochs (the command's own name is tried first).
FLAG_PREFIXES = ("prune", "pruning", "train", "training", "finetune", "eval", "sweep",
                 "sensitivity", "profile", "export", "num", "n", "nb", "number", "use", "set",
                 "total", "model", "data", "dataset")


def suggest_option(flag: str, options: Sequence[str], command: Optional[str] = None
                   ) -> Optional[str]:
    """The option of ``options`` an unknown ``flag`` probably meant: the same after ``_`` ->
    ``-`` and two dashes, the flag less a prefix such as the command's name (``--prune-ratio``
    -> ``--ratio``), else the closest by spelling (difflib); None when nothing is close."""
    name = flag.split("=", 1)[0]
    longs = sorted({o for o in options if o.startswith("--")})
    body = name.lstrip("-").replace("_", "-").lower()
    if not body:
        return None
    if "--" + body in longs:
        return "--" + body
    for prefix in ([command] if command else []) + list(FLAG_PREFIXES):
        if body.startswith(prefix + "-") and "--" + body[len(prefix) + 1:] in longs:
            return "--" + body[len(prefix) + 1:]
    close = difflib.get_close_matches("--" + body, longs, n=1, cutoff=0.6)
    return close[0] if close else None


def _looks_like_flag(text: str) -> bool:
    if not text.startswith("-") or text == "-":
        return False
    try:
        float(text)
        return False  # a negative number
    except ValueError:
        return True


def unrecognized(parser: argparse.ArgumentParser, ns: argparse.Namespace,
                 rest: Sequence[str]) -> Tuple[argparse.ArgumentParser, str]:
    """For arguments no option took (``rest``): the parser of the command they were given to
    (to report from: its prog and --help) and one line naming them, with "did you mean" for
    each unknown flag whose intended option is found (:func:`suggest_option`)."""
    target, command = parser, getattr(ns, "command", None)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            target = action.choices[command]
    options = list(target._option_string_actions)
    flags = [t.split("=", 1)[0] for t in rest if _looks_like_flag(t)]
    guesses = [(f, suggest_option(f, options, command)) for f in flags]
    guesses = [(f, g) for f, g in guesses if g is not None and g != f]
    message = f"unrecognized argument{'s' if len(rest) > 1 else ''}: {' '.join(rest)}"
    if len(flags) == 1 and guesses:
        message += f"; did you mean {guesses[0][1]}?"
    elif guesses:
        message += "; did you mean " + ", ".join(f"{g} (for {f})" for f, g in guesses) + "?"
    return target, message


def input_size(text: str) -> Any:
    """``--input-size``: ``S`` (square), or ``H,W`` / ``HxW`` -> S or [H, W]."""
    parts = text.lower().replace("x", ",").split(",")
    accepted = "S, or HxW / H,W, positive integers (e.g. 32 or 96x64)"
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an input size; accepted: {accepted}")
    if len(dims) not in (1, 2) or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an input size; accepted: {accepted}")
    return dims[0] if len(dims) == 1 or dims[0] == dims[1] else dims


unit_float = numeric(float, lambda v: 0 <= v <= 1, "a number in [0, 1]", "is outside [0, 1]")


def comma_list(convert: Callable[[str], Any], ok: Callable[[List[Any]], bool], not_a_list: str,
               bad: str, order: Callable[[List[Any]], List[Any]] = list) -> Callable[[str], Any]:
    """An argparse ``type`` for comma-separated values (empty items skipped): ``convert`` each;
    ``not_a_list`` when one does not convert, ``bad`` when the list is empty or not ``ok``
    (both formatted with ``text``); the result in ``order`` (e.g. sorted)."""
    def parse(text: str) -> List[Any]:
        try:
            items = [convert(t.strip()) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(not_a_list.format(text=repr(text)))
        if not items or not ok(items):
            raise argparse.ArgumentTypeError(bad.format(text=repr(text)))
        return order(items)
    return parse


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


ONNX_SUFFIX = ".onnx"


def add_model_args(p: argparse.ArgumentParser, checkpoint: bool = True,
                   required: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="SPEC",
                   help="zoo name (see `tp-vgg models`; timm:vgg16_bn and the other timm "
                        "VGGs with timm installed), package.module:factory or "
                        "path/to/file.py:factory" + (
                            "; with --checkpoint: your own copy of the checkpoint's factory, "
                            "which is then run (consent, like --trust-model-code); eval and "
                            "profile also read an exported .onnx file" if checkpoint else ""))
    if checkpoint:
        g.add_argument("--checkpoint", metavar="FILE", help="a tp-vgg checkpoint (.pt)")
        add_trust_args(p)
    if required:
        p.set_defaults(**{REQUIRE_ONE_OF: ("model", "checkpoint") if checkpoint else ("model",)})
    g.add_argument("--model-kwargs", type=json_object, metavar="JSON",
                   help="keyword arguments for the model factory, as a JSON object")
    g.add_argument("--num-classes", type=positive_int, metavar="N")
    g.add_argument("--in-channels", type=positive_int, metavar="C",
                   help="input channels (CIFAR-form, timm and user models; default 3)")
    g.add_argument("--input-size", type=input_size, metavar="S|HxW",
                   help="input size: S for S x S, or HxW (e.g. 96x64) for a non-square input "
                        "(default: 224 torchvision and timm, 32 CIFAR-form and user)")
    g.add_argument("--width", type=positive_float, metavar="W",
                   help="channel-width multiplier (CIFAR-form models), e.g. 0.25")
    g.add_argument("--weights", metavar="NAME|PATH",
                   help="torchvision weights, e.g. DEFAULT (must already be in the cache), or a "
                        "state_dict file you trained (.pt/.pth/.bin/.safetensors; read with "
                        "weights_only=True; nesting, module./_orig_mod. and a framework's "
                        "model./net. prefixes are undone)")
    g.add_argument("--weights-key", metavar="NAME",
                   help="the entry of the --weights file to load (e.g. timm's state_dict_ema), "
                        "or the prefix NAME. of the tensors to load (e.g. model)")
    g.add_argument("--strict-weights", action=argparse.BooleanOptionalAction, default=True,
                   help="--weights PATH must fit the model key for key and shape for shape "
                        "(default); --no-strict-weights loads only the keys that fit")
    g.add_argument("--output-key", metavar="KEY",
                   help="key (dict) or index (tuple) of the logits when the model returns several outputs")


def add_trust_args(p: argparse.ArgumentParser) -> None:
    """--trust-model-code and --allow-changed-model-code (see :func:`code_consent`)."""
    if "--trust-model-code" in p._option_string_actions:
        return
    g = p.add_argument_group("model code in checkpoints")
    g.add_argument("--trust-model-code", action="store_true",
                   help="build a checkpoint whose model comes from a user factory "
                        "(package.module:factory or file.py:factory): imports that module or runs "
                        "that file. Only for checkpoints and code you trust; zoo checkpoints need "
                        "no trust")
    g.add_argument("--allow-changed-model-code", action="store_true",
                   help="build even if the factory's file (SHA-256) or package version differs "
                        "from what the checkpoint recorded")


def code_consent(args: argparse.Namespace) -> Dict[str, bool]:
    """The consent flags as keyword arguments of tp_vgg.load_checkpoint."""
    return {"trust_model_code": bool(getattr(args, "trust_model_code", False)),
            "allow_changed_model_code": bool(getattr(args, "allow_changed_model_code", False))}


def is_onnx(name: Optional[str]) -> bool:
    return bool(name) and str(name).lower().endswith(ONNX_SUFFIX)


def spec_from_args(args: argparse.Namespace) -> ModelSpec:
    return ModelSpec(name=args.model, num_classes=args.num_classes, width=args.width,
                     in_channels=args.in_channels, input_size=args.input_size,
                     weights=None if is_weights_file(args.weights) else args.weights,
                     kwargs=args.model_kwargs or {},
                     output_key=args.output_key).resolved()


def model_source(args: argparse.Namespace) -> ModelSource:
    """--model (with its flags and --seed) or --checkpoint (with the consent flags)."""
    if getattr(args, "strict_weights", True) is False and not is_weights_file(args.weights):
        raise UserError("--no-strict-weights applies to --weights PATH (a state_dict file)")
    if is_onnx(getattr(args, "model", None)):
        raise UserError(f"--model {args.model!r} is an ONNX file: `tp-vgg eval` and `tp-vgg "
                        "profile` read it; this command needs a model name or a tp-vgg checkpoint")
    if getattr(args, "checkpoint", None):
        given = [f for f in MODEL_FLAGS if getattr(args, f, None) is not None]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} cannot be combined with --checkpoint: "
                            "the checkpoint already records its model")
        return ModelSource(checkpoint=args.checkpoint, factory=getattr(args, "model", None),
                           **code_consent(args))
    for flag, on in code_consent(args).items():
        if on:
            raise UserError(f"--{flag.replace('_', '-')} applies to --checkpoint: a --model you "
                            "name yourself is built without it")
    return ModelSource(spec=spec_from_args(args), seed=getattr(args, "seed", None) or 0,
                       weights_file=args.weights if is_weights_file(args.weights) else None,
                       strict_weights=args.strict_weights,
                       weights_key=getattr(args, "weights_key", None))


def load_model(args: argparse.Namespace) -> Loaded:
    """Build the model named by --model, or rebuild the one in --checkpoint: a zoo model as is;
    a user factory's only with --trust-model-code, or with --model naming the user's own copy of
    that factory (see tp_vgg.checkpoint.store.load_checkpoint)."""
    return load_source(model_source(args), log)


def log(message: str) -> None:
    """What the commands print as they work (flushed: progress lines show as they happen)."""
    print(message, flush=True)
