"""Latency flags shared by `profile --latency`, `prune --latency` and `sweep --latency`, and the
glue that adds measured latency to a prune report."""

from __future__ import annotations

import argparse
import copy
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from tp_vgg import latency
from tp_vgg.counting import Counts
from tp_vgg.errors import UserError
from tp_vgg.models import ModelSpec

DEFAULT_BATCH_SIZES = "1,64"


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
         help=f"batch sizes to time (default {DEFAULT_BATCH_SIZES})")
    _add(g, "--device", metavar="DEV", help="cpu, cuda, cuda:N (default: CUDA when present, else cpu)")
    _add(g, "--channels-last", action=argparse.BooleanOptionalAction, default=None,
         help="time in channels_last memory format (default off; on is faster on CPU, "
              "see BENCHMARKS.md)")
    _add(g, "--dtype", default="fp32", metavar="DT",
         help=f"{', '.join(latency.DTYPES)} (default fp32)")
    _add(g, "--fuse-bn", action="store_true", help="fold BatchNorm into the convs before timing")
    _add(g, "--warmup", type=int, default=3, metavar="N", help="untimed passes per model (default 3)")
    _add(g, "--repeats", type=int, default=20, metavar="N",
         help="timed passes per model and batch size, interleaved (default 20)")
    _add(g, "--threads", type=int, metavar="N", help="CPU threads (torch.set_num_threads)")


def resolve_device(device: Optional[str]) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _given(args: argparse.Namespace, name: str, default: Any) -> Any:
    value = getattr(args, name, None)
    return default if value is None else value


def latency_config(args: argparse.Namespace) -> latency.LatencyConfig:
    text = getattr(args, "latency_batch_sizes", None) or DEFAULT_BATCH_SIZES
    cfg = latency.LatencyConfig(
        batch_sizes=latency.parse_batch_sizes(text),
        device=resolve_device(getattr(args, "device", None)),
        dtype=getattr(args, "dtype", None) or "fp32",
        channels_last=bool(getattr(args, "channels_last", None)),
        fuse_bn=bool(getattr(args, "fuse_bn", False)),
        warmup=_given(args, "warmup", 3),
        repeats=_given(args, "repeats", 20),
        threads=getattr(args, "threads", None))
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------------------------
# `prune --latency`: two calls from cmd_prune.

def add_prune_latency_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("latency")
    g.add_argument("--latency", nargs="?", const=DEFAULT_BATCH_SIZES, default=None,
                   metavar="B1,B2",
                   help="also time the pruned model against the original (interleaved, median) at "
                        f"these batch sizes (default {DEFAULT_BATCH_SIZES}); report.json gains "
                        "speed-up and efficiency = speed-up / MAC ratio. Uses --device, "
                        "--channels-last and --threads")


def keep_original(args: argparse.Namespace, model: nn.Module) -> Optional[nn.Module]:
    """A copy of the model before pruning when --latency was asked for (checked early)."""
    if not getattr(args, "latency", None):
        return None
    _prune_latency_config(args)  # a bad --latency value fails before any work
    return copy.deepcopy(model)


def _prune_latency_config(args: argparse.Namespace) -> latency.LatencyConfig:
    ns = argparse.Namespace(**vars(args))
    ns.latency_batch_sizes = args.latency
    try:
        return latency_config(ns)
    except UserError as e:
        raise UserError(str(e).replace("--batch-sizes", "--latency")) from None


def prune_latency(args: argparse.Namespace, original: Optional[nn.Module], pruned: nn.Module,
                  spec: ModelSpec, before: Counts, after: Counts) -> Dict[str, Any]:
    """``{"latency": {...}}`` for report.json (empty without --latency); prints the table."""
    if original is None:
        return {}
    cfg = _prune_latency_config(args)
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
        given = [flag for dest, flag in MEASURE_FLAGS.items() if getattr(args, dest, None)]
        if given:
            raise UserError(f"{given[0]} only applies with --latency")
        return None
    cfg = latency_config(args)
    if loaded.history:
        original = build_model(loaded.spec)
        macs_original = count(original, loaded.spec).macs
        return latency.compare(original, loaded.model, loaded.spec, cfg, macs_original,
                               counts.macs)
    return latency.single(loaded.model, loaded.spec, cfg, counts.macs)
