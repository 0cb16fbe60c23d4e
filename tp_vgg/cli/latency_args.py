"""Latency flags shared by `profile --latency`, `prune --latency` and `sweep --latency`."""

from __future__ import annotations

import argparse
from typing import Any, Optional

from tp_vgg.cli.common import numeric
from tp_vgg.device import device_name
from tp_vgg.errors import UserError
from tp_vgg.latency import runtimes
from tp_vgg.latency import timing as latency
from tp_vgg.models.counting import Counts
from tp_vgg.models.zoo import ModelSpec, build_model


def _sizes(sizes) -> str:
    return ",".join(map(str, sizes))


DEFAULT_HELP = (f"default {_sizes(latency.SMALL_INPUT_BATCHES)} for inputs up to 64 px, "
                f"{_sizes(latency.LARGE_INPUT_BATCHES)} above")


def default_batch_sizes(spec: Optional[ModelSpec]) -> str:
    return _sizes(latency.default_batch_sizes(spec))


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
    _add(g, "--runtime", metavar="NAME", default=None, help=RUNTIME_HELP)


RUNTIME_HELP = ("what the model is timed in: " + "; ".join(
    f"{n}: {runtimes.RUNTIMES.help(n)}" for n in runtimes.RUNTIMES) + " (default torch)")


# ``--round-to``: a positive integer, or ``auto`` (the device's multiple; see
# :meth:`tp_vgg.jobs.prune.PruneJob.prune_config`).
round_to_arg = numeric(int, lambda v: v >= 1, "an integer >= 1 or auto", "is below 1",
                       words=("auto",))


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
        device=device_name(getattr(args, "device", None)),
        dtype=getattr(args, "dtype", None) or "fp32",
        channels_last=_given(args, "channels_last", True),
        fuse_bn=_given(args, "fuse_bn", True),
        warmup=_given(args, "warmup", 3),
        repeats=_given(args, "repeats", 20),
        threads=getattr(args, "threads", None),
        runtime=getattr(args, "runtime", None) or "torch")
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------------------------
# `prune --latency`: the job's latency sub-config.

def add_prune_latency_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("latency")
    g.add_argument("--latency", nargs="?", const="default", default=None,
                   metavar="B1,B2",
                   help="also time the pruned model against the original (interleaved, median, "
                        f"channels_last, BN folded) at these batch sizes ({DEFAULT_HELP}); "
                        "report.json gains speed-up and efficiency = speed-up / MAC ratio. Uses "
                        "--runtime, --device, --channels-last and --threads")
    g.add_argument("--runtime", metavar="NAME[,NAME]", default=None,
                   help=RUNTIME_HELP + "; for --latency (several, comma-separated: each is timed "
                        "and plotted), --target-latency and --round-to auto (one)")
    g.add_argument("--latency-batch", type=numeric(int, lambda v: v >= 1, "an integer >= 1",
                                                   "is below 1"), metavar="N",
                   help="the batch size --target-latency and --round-to auto time at (default "
                        f"{latency.SMALL_INPUT_BATCHES[-1]} for inputs up to 64 px, "
                        f"{latency.LARGE_INPUT_BATCHES[-1]} above)")
    g.add_argument("--latency-cache", metavar="DIR",
                   help="folder of the per-layer latency tables (default $TP_VGG_CACHE, else "
                        "~/.cache/tp-vgg)")


def runtime_names(text: str) -> list:
    """``--runtime torch,onnxruntime`` -> the names, each checked (one line naming a bad one)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError(f"--runtime {text!r} names no runtime; accepted: "
                        f"{', '.join(runtimes.RUNTIMES.names())}")
    for n in names:
        runtimes.get(n)
    return names


def prune_latency_runtimes(args: argparse.Namespace) -> tuple:
    """The runtimes after the first in ``--runtime A,B`` (--latency times in each)."""
    text = getattr(args, "runtime", None)
    return tuple(runtime_names(text)[1:]) if text else ()


def round_to_timing(args: argparse.Namespace) -> Optional[latency.LatencyConfig]:
    """Where ``--round-to auto`` scans widths without ``--target-latency``: --runtime,
    --latency-batch, --threads, --device, --channels-last (None: not asked for)."""
    if getattr(args, "round_to", None) != "auto" or getattr(args, "target_latency", None):
        return None
    channels_last = getattr(args, "channels_last", None)
    cfg = latency.LatencyConfig(
        batch_sizes=(args.latency_batch,) if getattr(args, "latency_batch", None) else (1,),
        device=device_name(getattr(args, "device", None)),
        runtime=runtime_names(args.runtime)[0] if getattr(args, "runtime", None) else "torch",
        threads=getattr(args, "threads", None),
        channels_last=True if channels_last is None else channels_last, fuse_bn=True)
    cfg.validate()
    if not getattr(args, "latency_batch", None):
        cfg.batch_sizes = ()  # the throughput batch for the model's input size
    return cfg


def check_latency_flags(args: argparse.Namespace) -> None:
    """--runtime, --latency-batch and --latency-cache only where something is timed."""
    timed = (getattr(args, "latency", None) or getattr(args, "target_latency", None) is not None
             or getattr(args, "round_to", None) == "auto")
    learns = getattr(args, "target_latency", None) is not None or \
        getattr(args, "round_to", None) == "auto"
    if getattr(args, "runtime", None) is not None:
        names = runtime_names(args.runtime)
        if not timed:
            raise UserError("--runtime applies to --latency, --target-latency and --round-to auto")
        if len(names) > 1 and learns:
            raise UserError(f"--runtime {args.runtime!r}: --target-latency and --round-to auto "
                            "time in one runtime; give one (several apply to --latency alone)")
    for dest, flag in (("latency_batch", "--latency-batch"), ("latency_cache", "--latency-cache")):
        if getattr(args, dest, None) is not None and not learns:
            raise UserError(f"{flag} applies to --target-latency and --round-to auto")


def prune_latency_config(args: argparse.Namespace) -> Optional[latency.LatencyConfig]:
    """``--latency [B1,B2]`` with the measurement flags (None without it); no batch sizes:
    the defaults for the model's input size. A bad value fails before any work."""
    check_latency_flags(args)
    if not getattr(args, "latency", None):
        return None
    ns = argparse.Namespace(**vars(args))
    ns.latency_batch_sizes = None if args.latency == "default" else args.latency
    ns.runtime = runtime_names(args.runtime)[0] if args.runtime else None
    try:
        cfg = latency_config(ns)
    except UserError as e:
        raise UserError(str(e).replace("--batch-sizes", "--latency")) from None
    if args.latency == "default":
        cfg.batch_sizes = ()
    return cfg


# --------------------------------------------------------------------------------------------
# `profile --latency`.

MEASURE_FLAGS = {"latency_batch_sizes": "--batch-sizes", "device": "--device",
                 "channels_last": "--channels-last", "fuse_bn": "--fuse-bn", "threads": "--threads",
                 "runtime": "--runtime", "layers": "--layers"}


def profile_latency(args: argparse.Namespace, loaded, counts: Counts
                    ) -> Optional[latency.LatencyReport]:
    """With --latency: a pruned checkpoint is timed against its unpruned model (rebuilt from the
    checkpoint's spec, with the consent it was read with), anything else alone. Without it: None
    (measurement flags are refused)."""
    if not args.latency:
        given = [flag for dest, flag in MEASURE_FLAGS.items()
                 if getattr(args, dest, None) is not None]
        if given:
            raise UserError(f"{given[0]} only applies with --latency")
        return None
    if args.layers and (args.runtime or "torch") != "torch":
        raise UserError(f"--layers times each PyTorch module with hooks; --runtime {args.runtime} "
                        "runs the whole graph (accepted with --layers: --runtime torch)")
    cfg = latency_config(args, loaded.spec)
    return latency.profile(loaded.model, loaded.spec, cfg, counts.macs, _unpruned(loaded))


def _unpruned(loaded):
    """The model before pruning, for a pruned checkpoint (with the consent it was read with)."""
    if not loaded.history:
        return None
    return (loaded.checkpoint.build_unpruned() if loaded.checkpoint is not None
            else build_model(loaded.spec))


def profile_layers(args: argparse.Namespace, loaded):
    """`profile --latency --layers`: the per-layer breakdown."""
    from tp_vgg.latency.layers import layer_times

    return layer_times(loaded.model, loaded.spec, latency_config(args, loaded.spec),
                       _unpruned(loaded))
