"""Latency flags shared by `profile --latency`, `prune --latency` and `sweep --latency`, and the
glue that adds measured latency to a prune report."""

from __future__ import annotations

import argparse
import copy
import dataclasses
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from tp_vgg import latency
from tp_vgg.counting import Counts
from tp_vgg.errors import UserError
from tp_vgg.models import ModelSpec

# Batch sizes timed when none are given: 1 (one request) and a throughput batch that keeps a
# measurement within a minute or two on a small CPU.
SMALL_INPUT_BATCHES = "1,64"   # inputs up to 64x64 (CIFAR-form)
LARGE_INPUT_BATCHES = "1,8"    # larger inputs (224x224 torchvision VGGs)
DEFAULT_HELP = f"default {SMALL_INPUT_BATCHES} for inputs up to 64 px, {LARGE_INPUT_BATCHES} above"


def default_batch_sizes(spec: Optional[ModelSpec]) -> str:
    size = spec.resolved().input_size if spec is not None else None
    return LARGE_INPUT_BATCHES if size and size > 64 else SMALL_INPUT_BATCHES


def _add(g, *flags: str, **kw: Any) -> None:
    """Add an option unless the parser already has it (the training flags of `prune` bring
    their own --device, --channels-last and --threads, which mean the same here)."""
    if any(f in g._option_string_actions for f in flags):
        return
    g.add_argument(*flags, **kw)


def add_measure_args(p: argparse.ArgumentParser, batch_flag: str = "--batch-sizes") -> None:
    """--batch-sizes, --device, --channels-last, --dtype, --fuse-bn, --warmup, --repeats, --threads."""
    g = p.add_argument_group("latency measurement")
    _add(g, batch_flag, dest="latency_batch_sizes", metavar="B1,B2", default=None,
         help=f"batch sizes to time ({DEFAULT_HELP})")
    _add(g, "--device", metavar="DEV", help="cpu, cuda, cuda:N (default: CUDA when present, else cpu)")
    _add(g, "--channels-last", action=argparse.BooleanOptionalAction, default=None,
         help="time in channels_last memory format (default on: NCHW max-pooling is many times "
              "slower on CPU, see BENCHMARKS.md)")
    _add(g, "--dtype", default="fp32", metavar="DT",
         help=f"{', '.join(latency.DTYPES)} (default fp32)")
    _add(g, "--fuse-bn", action=argparse.BooleanOptionalAction, default=None,
         help="fold BatchNorm into the convs before timing (default on: the inference form, and "
              "what the MAC count assumes)")
    _add(g, "--warmup", type=int, default=3, metavar="N", help="untimed passes per model (default 3)")
    _add(g, "--repeats", type=int, default=20, metavar="N",
         help="timed passes per model and batch size, interleaved (default 20)")
    _add(g, "--threads", type=int, metavar="N", help="CPU threads (torch.set_num_threads)")


def round_to_arg(text: str):
    """``--round-to``: a positive integer, or ``auto`` (resolved per device by
    :func:`resolve_round_to`)."""
    if text == "auto":
        return "auto"
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; accepted: an integer "
                                         ">= 1 or auto")
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is below 1; accepted: an integer >= 1 or auto")
    return v


def resolve_round_to(args: argparse.Namespace) -> Optional[int]:
    """``--round-to auto`` -> the channel multiple of the device the model will run on
    (``--device``, default: CUDA when present): 16 on AVX-512 CPUs, else 8."""
    value = getattr(args, "round_to", None)
    if value == "auto":
        return latency.default_round_to(resolve_device(getattr(args, "device", None)))
    return value


def fit_round_to(args: argparse.Namespace, cfg, model: nn.Module):
    """With ``--round-to auto``, halve the device's multiple (16 -> 8 -> 4 ...) until every conv
    keeps at least one multiple at the largest ratio asked for: a 16-channel layer pruned by 30%
    keeps 8, not 0. An explicit ``--round-to K`` is left as given."""
    if getattr(args, "round_to", None) != "auto" or not cfg.round_to:
        return cfg
    ratios = [cfg.ratio or 0.0] + [float(r) for r in (cfg.layer_ratios or {}).values()]
    if cfg.global_pruning:
        ratios.append(cfg.max_layer_ratio if cfg.max_layer_ratio is not None else 0.9)
    keep = min((int(m.out_channels * (1 - max(ratios))) for m in model.modules()
                if isinstance(m, nn.Conv2d)), default=cfg.round_to)
    k = cfg.round_to
    while k > 1 and keep < k:
        k //= 2
    return dataclasses.replace(cfg, round_to=k)


def resolve_device(device: Optional[str]) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _given(args: argparse.Namespace, name: str, default: Any) -> Any:
    value = getattr(args, name, None)
    return default if value is None else value


def latency_config(args: argparse.Namespace, spec: Optional[ModelSpec] = None
                   ) -> latency.LatencyConfig:
    """The measurement settings. Unset flags take tp-vgg's defaults: the deployment form
    (channels_last, BN folded, fp32) on CUDA when present, else the CPU."""
    text = getattr(args, "latency_batch_sizes", None) or default_batch_sizes(spec)
    cfg = latency.LatencyConfig(
        batch_sizes=latency.parse_batch_sizes(text),
        device=resolve_device(getattr(args, "device", None)),
        dtype=getattr(args, "dtype", None) or "fp32",
        channels_last=_given(args, "channels_last", True),
        fuse_bn=_given(args, "fuse_bn", True),
        warmup=_given(args, "warmup", 3),
        repeats=_given(args, "repeats", 20),
        threads=getattr(args, "threads", None))
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------------------------
# `prune --latency`: two calls from cmd_prune.

def add_prune_latency_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("latency")
    g.add_argument("--latency", nargs="?", const="default", default=None,
                   metavar="B1,B2",
                   help="also time the pruned model against the original (interleaved, median, "
                        f"channels_last, BN folded) at these batch sizes ({DEFAULT_HELP}); "
                        "report.json gains speed-up and efficiency = speed-up / MAC ratio. Uses "
                        "--device, --channels-last and --threads")


def keep_original(args: argparse.Namespace, model: nn.Module) -> Optional[nn.Module]:
    """A copy of the model before pruning when --latency was asked for (checked early)."""
    if not getattr(args, "latency", None):
        return None
    _prune_latency_config(args)  # a bad --latency value fails before any work
    return copy.deepcopy(model)


def _prune_latency_config(args: argparse.Namespace, spec: Optional[ModelSpec] = None
                          ) -> latency.LatencyConfig:
    ns = argparse.Namespace(**vars(args))
    ns.latency_batch_sizes = None if args.latency == "default" else args.latency
    try:
        return latency_config(ns, spec)
    except UserError as e:
        raise UserError(str(e).replace("--batch-sizes", "--latency")) from None


def prune_latency(args: argparse.Namespace, original: Optional[nn.Module], pruned: nn.Module,
                  spec: ModelSpec, before: Counts, after: Counts) -> Dict[str, Any]:
    """``{"latency": {...}}`` for report.json (empty without --latency); prints the table."""
    if original is None:
        return {}
    cfg = _prune_latency_config(args, spec)
    rep = latency.compare(original, pruned, spec, cfg, before.macs, after.macs)
    print(latency.format_latency_table(rep))
    return {"latency": rep.to_dict()}


# --------------------------------------------------------------------------------------------
# `profile --latency`.

MEASURE_FLAGS = {"latency_batch_sizes": "--batch-sizes", "device": "--device",
                 "channels_last": "--channels-last", "fuse_bn": "--fuse-bn", "threads": "--threads"}


def profile_latency(args: argparse.Namespace, loaded, counts: Counts
                    ) -> Optional[latency.LatencyReport]:
    """With --latency: a pruned checkpoint is timed against its unpruned model (rebuilt from the
    checkpoint's spec), anything else alone. Without it: None (measurement flags are refused)."""
    from tp_vgg.counting import count
    from tp_vgg.models import build_model

    if not args.latency:
        given = [flag for dest, flag in MEASURE_FLAGS.items()
                 if getattr(args, dest, None) is not None]
        if given:
            raise UserError(f"{given[0]} only applies with --latency")
        return None
    cfg = latency_config(args, loaded.spec)
    if loaded.history:  # a checkpoint's unpruned model, with the consent it was read with
        original = (loaded.checkpoint.build_unpruned() if loaded.checkpoint is not None
                    else build_model(loaded.spec))
        macs_original = count(original, loaded.spec).macs
        return latency.compare(original, loaded.model, loaded.spec, cfg, macs_original,
                               counts.macs)
    return latency.single(loaded.model, loaded.spec, cfg, counts.macs)
