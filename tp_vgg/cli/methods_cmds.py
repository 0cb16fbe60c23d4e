"""Pruning methods on the command line.

* `tp-vgg sensitivity`: each layer alone at ratios 0.1 ... 0.9, CSV + PNG, and ``--layer-ratios``
  for an accuracy budget (Li et al. 2017);
* flags of `tp-vgg prune`: ``--target-speedup``/``--target-macs``, ``--iterative-steps`` with
  ``--finetune-epochs-per-step``, ``--taylor-batches`` (``--importance taylor`` uses ``--data``),
  ``--unstructured`` with ``--lottery-rounds``/``--rewind-epoch``;
* flags of `tp-vgg train` and `tp-vgg finetune`: ``--sparsity``/``--sparsity-reg``.

`prune`'s own command (tp_vgg/cli/pruning_cmds.py) takes their sub-configs of the
:class:`tp_vgg.jobs.prune.PruneJob` from :func:`method_configs`.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from typing import Any, Dict, Optional

from tp_vgg.jobs import sensitivity as sensitivity_job
from tp_vgg.cli import train_cmds
from tp_vgg.cli.common import (MODEL_FLAGS, add_model_args, code_consent, comma_list, log,
                               model_source, nonneg_float, nonneg_int, numeric, positive_int)
from tp_vgg.data.datasets import DATASETS
from tp_vgg.errors import UserError
from tp_vgg.jobs import IterativeConfig, UnstructuredConfig
from tp_vgg.latency.budget import LatencyBudget
from tp_vgg.pruning import sensitivity, sparsity, targets
from tp_vgg.pruning.criteria import DEFAULT_TAYLOR_BATCHES, IMPORTANCES, needs_gradients
from tp_vgg.train.evaluation import DEFAULT_BN_RECALIBRATE

# --------------------------------------------------------------------------------------------
# Argument types.

_speedup = numeric(float, lambda v: v > 1 and math.isfinite(v), "a number > 1, e.g. 4",
                   "is not > 1", "a number > 1 (MACs before / after), e.g. 4")
_positive_float = numeric(float, lambda v: v > 0 and math.isfinite(v), "a number > 0, e.g. 1e-4",
                          "is not > 0")


_SUFFIX = {"K": 1e3, "M": 1e6, "G": 1e9}


def _macs(text: str) -> int:
    t = text.strip().upper()
    scale = _SUFFIX.get(t[-1:], 1.0)
    try:
        v = float(t[:-1] if t[-1:] in _SUFFIX else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MACs; accepted: e.g. "
                                         "150000000, 1.5e8 or 150M")
    if not (v >= 1 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of MACs")
    return int(v)






_ratio_list = comma_list(float, lambda rs: all(0 < r < 1 for r in rs),
                         "{text} is not a comma-separated list of ratios, e.g. 0.1,0.3,0.5",
                         "{text}: ratios must be in (0, 1), e.g. 0.1,0.3,0.5",
                         lambda rs: sorted(set(rs)))
_name_list = comma_list(str, bool, "", "{text}: give layer names separated by commas")


# --------------------------------------------------------------------------------------------
# Registration.

def register(sub, common) -> None:
    p = sub.add_parser("sensitivity", parents=[common],
                       help="prune each layer alone at ratios 0.1..0.9, evaluate; write "
                            "sensitivity.csv/.png and --layer-ratios for an accuracy budget")
    add_model_args(p)
    train_cmds.add_data_args(p, required=True)
    g = p.add_argument_group("sensitivity")
    g.add_argument("--ratios", type=_ratio_list, default=list(sensitivity.DEFAULT_RATIOS),
                   metavar="R1,R2", help="ratios to try per layer (default 0.1,0.2,...,0.9)")
    g.add_argument("--importance", default="l1", choices=IMPORTANCES.names(),
                   help="channel ranking criterion (default l1, as Li et al. 2017)")
    g.add_argument("--budget", type=nonneg_float, default=1.0, metavar="POINTS",
                   help="top-1 points each layer may cost when pruned alone (default 1); sets "
                        "the recommended --layer-ratios")
    g.add_argument("--layers", type=_name_list, metavar="NAME,NAME",
                   help="only these layers (default: every Conv2d/Linear but the logits layer)")
    g.add_argument("--eval-images", type=positive_int, metavar="N",
                   help="evaluate on a seeded sample of N test images (default all)")
    g.add_argument("--batch-size", type=positive_int, default=256, metavar="N")
    g.add_argument("--taylor-batches", type=positive_int, metavar="N",
                   help=f"--importance taylor or taylor-raw: training batches for the gradients "
                        f"(default {DEFAULT_TAYLOR_BATCHES})")
    g.add_argument("--output-layer", metavar="NAME",
                   help="the layer producing the logits, when the graph cannot tell")
    g.add_argument("--bn-recalibrate", type=nonneg_int, default=DEFAULT_BN_RECALIBRATE,
                   metavar="N", help="re-estimate each pruned copy's BatchNorm statistics on N "
                   f"training batches before evaluating it (default {DEFAULT_BN_RECALIBRATE}; "
                   "0: evaluate the raw pruned copy)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", metavar="DEV", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=cmd_sensitivity)

    for name in ("train", "finetune"):  # registered before this module (COMMAND_MODULES)
        add_sparsity_args(sub.choices[name])


def add_sparsity_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sparsity training")
    g.add_argument("--sparsity", choices=sparsity.METHODS.names(), metavar="METHOD",
                   help="add a sparsity regularizer to the gradients: "
                        + "; ".join(f"{n}: {sparsity.METHODS.help(n)}" for n in sparsity.METHODS)
                        + "; writes sparsity.json and bn_gamma.png (BN gamma before/after)")
    g.add_argument("--sparsity-reg", type=_positive_float, metavar="L",
                   help=f"regularization strength (default {sparsity.DEFAULT_REG:g})")


def add_prune_method_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target-driven and iterative pruning")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--target-speedup", type=_speedup, metavar="X",
                   help="prune until MACs before / after >= X (instead of --ratio)")
    t.add_argument("--target-macs", type=_macs, metavar="N",
                   help="prune until MACs <= N, e.g. 150M (instead of --ratio)")
    t.add_argument("--target-latency", type=_positive_float, metavar="MS",
                   help="prune until the measured latency (ms per batch of --latency-batch, in "
                        "--runtime on --device with --threads, BN folded, channels-last) is <= MS: "
                        "channels go in order of importance per predicted ms saved, from a "
                        "per-layer latency table timed on this machine and cached (instead of "
                        "--ratio)")
    g.add_argument("--iterative-steps", type=positive_int, metavar="K",
                   help="reach the ratio or target in K pruning steps (same final MACs as one "
                        "shot), fine-tuning between them with --finetune-epochs-per-step")
    g.add_argument("--finetune-epochs-per-step", type=positive_int, metavar="E",
                   help="epochs of fine-tuning on --data after each step but the last "
                        "(--finetune-epochs N fine-tunes after the last)")
    g.add_argument("--taylor-batches", type=positive_int, metavar="N",
                   help=f"--importance taylor or taylor-raw: training batches of --data run forward and "
                        f"backward for the gradients (default {DEFAULT_TAYLOR_BATCHES})")
    u = p.add_argument_group("unstructured pruning")
    u.add_argument("--unstructured", action="store_true",
                   help="zero the smallest-magnitude weights instead of removing channels: "
                        "--ratio is the fraction of conv/linear weights zeroed (per layer, or "
                        "across layers with --global); dense MACs do not change")
    u.add_argument("--lottery-rounds", type=positive_int, metavar="R",
                   help="lottery-ticket mode: R rounds of train, prune, rewind (needs "
                        "--finetune-epochs N = training epochs per round, and --data)")
    u.add_argument("--rewind-epoch", type=nonneg_int, metavar="E",
                   help="rewind surviving weights to their values after epoch E of the dense "
                        "run (default 0: the starting weights)")


# --------------------------------------------------------------------------------------------
# `tp-vgg prune`: structured methods.

def _given(args: argparse.Namespace, name: str) -> bool:
    return getattr(args, name, None) not in (None, False)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_prune_args(args: argparse.Namespace, ratio: Optional[float] = None) -> None:
    """Refuse combinations that mean nothing, in one line (``ratio``: sweep's, for --ratio)."""
    if ratio is None:
        ratio = getattr(args, "ratio", None)
    if _given(args, "unstructured"):
        if _given(args, "latency"):
            raise UserError("--latency with --unstructured would time the same dense layers: "
                            "zeroed weights do not make dense kernels faster (the report gives "
                            "nonzero-weight MACs instead)")
        for name in ("target_speedup", "target_macs", "target_latency", "iterative_steps", "finetune_epochs_per_step",
                     "layer_ratios", "round_to", "max_layer_ratio", "taylor_batches"):
            if _given(args, name):
                raise UserError(f"{_flag(name)} applies to structured (channel) pruning, not "
                                "--unstructured, which zeroes single weights by magnitude")
        if getattr(args, "importance", None) not in (None, "l1"):
            raise UserError(f"--importance {args.importance} ranks channels; --unstructured ranks "
                            "single weights by magnitude (leave --importance out)")
        if ratio is None:
            raise UserError("--unstructured needs --ratio R, the fraction of weights to zero")
        if _given(args, "lottery_rounds") and not _given(args, "finetune_epochs"):
            raise UserError("--lottery-rounds needs --finetune-epochs N (training epochs per "
                            "round) and --data")
        if _given(args, "rewind_epoch") and not _given(args, "lottery_rounds"):
            raise UserError("--rewind-epoch applies to lottery-ticket mode: add --lottery-rounds R "
                            "with --finetune-epochs N and --data D")
        return
    for name in ("lottery_rounds", "rewind_epoch"):
        if _given(args, name):
            raise UserError(f"{_flag(name)} applies to --unstructured pruning (lottery tickets)")
    given = [f for f in ("target_speedup", "target_macs", "target_latency") if _given(args, f)]
    if given and ratio is not None:
        raise UserError(f"--ratio cannot be combined with {_flag(given[0])}: the target sets the "
                        "ratio")
    if not given and ratio is None:
        raise UserError("one of --ratio R, --target-speedup X, --target-macs N or "
                        "--target-latency MS is required")
    if _given(args, "target_latency") and (getattr(args, "iterative_steps", None) or 1) > 1:
        raise UserError("--target-latency measures one pruned model; --iterative-steps applies "
                        "to --ratio, --target-speedup and --target-macs")
    if _given(args, "finetune_epochs_per_step") and (getattr(args, "iterative_steps", None) or 1) < 2:
        raise UserError("--finetune-epochs-per-step needs --iterative-steps K with K >= 2")
    if _given(args, "taylor_batches") and not needs_gradients(getattr(args, "importance", None)):
        raise UserError("--taylor-batches applies to --importance taylor or taylor-raw")


def method_configs(args: argparse.Namespace, ratio: Optional[float] = None) -> Dict[str, Any]:
    """The method sub-configs of a PruneJob (``target``, ``iterative``, ``unstructured``,
    ``taylor_batches``) and ``needs_data``: whether a criterion or the schedule uses --data."""
    check_prune_args(args, ratio)
    target = None
    if _given(args, "target_latency"):
        channels_last = getattr(args, "channels_last", None)
        target = targets.Target(latency=LatencyBudget(
            ms=args.target_latency, runtime=getattr(args, "runtime", None) or "torch",
            device=getattr(args, "device", None),
            batch_size=getattr(args, "latency_batch", None), threads=getattr(args, "threads", None),
            channels_last=True if channels_last is None else channels_last,
            cache_dir=getattr(args, "latency_cache", None)))
        target.validate()
    elif _given(args, "target_speedup") or _given(args, "target_macs"):
        target = targets.Target(speedup=getattr(args, "target_speedup", None),
                                macs=getattr(args, "target_macs", None))
    steps = getattr(args, "iterative_steps", None)
    per_step = getattr(args, "finetune_epochs_per_step", None) or 0
    schedule = IterativeConfig(steps, per_step) if steps or per_step else None
    lottery = UnstructuredConfig(getattr(args, "lottery_rounds", None),
                                 getattr(args, "rewind_epoch", None) or 0)
    taylor = needs_gradients(getattr(args, "importance", None))
    if (taylor or per_step > 0) and not getattr(args, "data", None):
        names = ", ".join(DATASETS.names())
        if taylor:
            raise UserError(f"--importance {args.importance} needs data: it runs a few batches "
                            f"forward and backward for the gradients; pass --data D ({names})")
        raise UserError(f"--finetune-epochs-per-step fine-tunes on data; pass --data D ({names})")
    return {"target": target, "iterative": schedule,
            "unstructured": lottery if _given(args, "unstructured") else None,
            "taylor_batches": getattr(args, "taylor_batches", None),
            "needs_data": (taylor or per_step > 0) and not _given(args, "unstructured")}


# --------------------------------------------------------------------------------------------
# `tp-vgg sensitivity`.

def cmd_sensitivity(args: argparse.Namespace) -> int:
    study = sensitivity_job.SensitivityStudy(
        model_source(args), train_cmds.data_config(args), ratios=args.ratios,
        importance=args.importance, budget=args.budget, layers=args.layers,
        eval_images=args.eval_images, batch_size=args.batch_size,
        taylor_batches=args.taylor_batches, output_layer=args.output_layer, seed=args.seed,
        device=args.device, source_flags=_source_flags(args), bn_batches=args.bn_recalibrate)
    sensitivity_job.run_sensitivity(study, args.out, log=log)
    return 0


def _source_flags(args: argparse.Namespace) -> str:
    """The model flags of this command, to repeat in the suggested `tp-vgg prune`."""
    if getattr(args, "checkpoint", None):  # with the consent it was read with
        flags = ["--checkpoint", args.checkpoint] + (["--model", args.model] if args.model else [])
        return shlex.join(flags + [_flag(k) for k, on in code_consent(args).items() if on])
    flags = ["--model", args.model]
    for name in MODEL_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            flags += [_flag(name), json.dumps(value) if isinstance(value, dict) else str(value)]
    return shlex.join(flags)
