"""`tp-vgg models`, `tp-vgg prune` and `tp-vgg profile`."""

from __future__ import annotations

import argparse
import json
import os
from typing import Optional

from tp_vgg.cli import common, latency_args, methods_cmds, search_args, train_cmds
from tp_vgg.cli.common import (REQUIRE_ONE_OF, add_model_args, code_consent, json_object,
                               load_model, ratio)
from tp_vgg.data.datasets import DATASETS
from tp_vgg.errors import UserError
from tp_vgg.jobs import PruneJob, resume_run, run
from tp_vgg.jobs.stages import check_out_dir
from tp_vgg.latency.layers import format_layer_times
from tp_vgg.models import counting
from tp_vgg.models.zoo import TIMM_INSTALL, TIMM_VGGS, list_models, timm_installed
from tp_vgg.pruning import graph as pruning
from tp_vgg.pruning import recipes
from tp_vgg.pruning.criteria import IMPORTANCES, default_importance
from tp_vgg.report import summary as report_json
from tp_vgg.search import widths
from tp_vgg.train import distributed
from tp_vgg.train.config import TrainConfig


def register(sub, common) -> None:
    p = sub.add_parser("models", parents=[common], help="list the model zoo")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("prune", parents=[common], help="remove channels, write DIR/pruned.pt and report.json")
    add_model_args(p)
    p.set_defaults(**{REQUIRE_ONE_OF: ("model", "checkpoint", "resume")})
    add_prune_args(p)
    p.add_argument("--out", metavar="DIR", help="output folder (required unless --resume)")
    p.add_argument("--resume", metavar="DIR",
                   help="finish the prune job interrupted in DIR (its --out): fine-tuning "
                        "continues exactly from DIR/finetune/last.pt, then DIR/pruned.pt and "
                        "report.json are written; the job's own settings are used (only --device, "
                        "--progress, --threads, --amp, --channels-last, --compile may be given; "
                        "--trust-model-code for a user model)")
    train_cmds.add_prune_finetune_args(p)  # --finetune-epochs N --data D [training flags]
    latency_args.add_prune_latency_args(p)  # --latency [B1,B2]
    methods_cmds.add_prune_method_args(p)  # --target-*, --iterative-steps, --unstructured, ...
    search_args.add_search_args(p)  # --search N
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("profile", parents=[common], help="MACs and params per layer and in total")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--latency", action="store_true",
                   help="also time the model (a pruned checkpoint: against its unpruned model, "
                        "interleaved) and print speed-up and efficiency = speed-up / MAC ratio")
    latency_args.add_measure_args(p)
    p.add_argument("--layers", action="store_true", default=None,
                   help="with --latency: time every layer with forward hooks (--runtime torch) "
                        "and show where the time goes, against the unpruned model for a pruned "
                        "checkpoint")
    p.set_defaults(func=cmd_profile)


def add_prune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pruning")
    g.add_argument("--ratio", type=ratio, metavar="R",
                   help="fraction of channels removed from every prunable layer, in [0, 1) "
                        "(or give --target-speedup / --target-macs)")
    g.add_argument("--importance", choices=IMPORTANCES.names(),
                   help="channel ranking criterion (default l1; with --global group-norm; "
                        "--recipe sets its own)")
    g.add_argument("--global", dest="global_pruning", action="store_true",
                   help="rank channels across layers instead of per layer")
    g.add_argument("--max-layer-ratio", type=ratio, metavar="R",
                   help="most any layer may lose (default 0.9 with --global)")
    g.add_argument("--round-to", type=latency_args.round_to_arg, metavar="K",
                   help="keep a multiple of K channels per layer (rounds down); auto: the "
                        "multiple that runs fast on --device in --runtime, learned from a width "
                        "scan of one conv (cached with the latency table) and said")
    g.add_argument("--layer-ratios", type=json_object, metavar="JSON",
                   help="per-layer ratios by module name, e.g. '{\"features.0\": 0.5}'")
    g.add_argument("--output-layer", metavar="NAME",
                   help="the layer producing the logits, when the graph cannot tell")
    g.add_argument("--seed", type=int, default=0, help="seed for --importance random (default 0)")
    g = p.add_argument_group("recipes (sparse learning, then global pruning)")
    g.add_argument("--recipe", choices=recipes.RECIPES.names(),
                   help="; ".join(f"{n}: {recipes.RECIPES.help(n)}" for n in recipes.RECIPES)
                        + "; needs --data")
    g.add_argument("--sparse-epochs", type=common.positive_int, metavar="N",
                   help="--recipe: epochs of sparse learning before pruning (default "
                        f"{recipes.DEFAULT_SPARSE_EPOCHS})")
    g.add_argument("--sparse-reg", type=methods_cmds._positive_float, metavar="L",
                   help="--recipe: the regularizer's strength (default: the recipe's)")


def sparse_learning(args: argparse.Namespace) -> Optional[recipes.SparseLearning]:
    """--recipe NAME: its sparse-learning stage; the flags it sets (--importance, --global,
    --max-layer-ratio unless given) are filled into ``args``. Without one, --importance defaults
    to l1, and with --global to the cross-layer ranking measured best
    (:func:`tp_vgg.pruning.criteria.default_importance`)."""
    name = getattr(args, "recipe", None)
    if name is None:
        extra = next((f for f in ("sparse_epochs", "sparse_reg") if getattr(args, f, None)
                      is not None), None)
        if extra:
            raise UserError(f"--{extra.replace('_', '-')} applies to a recipe: add --recipe "
                            f"NAME ({', '.join(recipes.RECIPES.names())}) with --data D")
        if args.importance is None:  # unstructured pruning ranks weights by magnitude alone
            args.importance = default_importance(bool(args.global_pruning)
                                                 and not getattr(args, "unstructured", False))
        return None
    r = recipes.RECIPES.get(name)
    clash = next((f for f in ("unstructured", "search", "target_latency")
                  if getattr(args, f, None) not in (None, False)), None)
    if clash:
        raise UserError(f"--recipe {name} ends in global channel pruning under a MAC budget or "
                        f"--ratio; it does not apply to --{clash.replace('_', '-')}")
    if args.importance not in (None, r.importance):
        raise UserError(f"--recipe {name} prunes with --importance {r.importance}; leave out "
                        f"--importance {args.importance}")
    if not getattr(args, "data", None):
        raise UserError(f"--recipe {name} trains with a regularizer before pruning; pass "
                        f"--data D ({', '.join(DATASETS.names())})")
    args.importance, args.global_pruning = r.importance, True
    if args.max_layer_ratio is None:
        args.max_layer_ratio = r.max_layer_ratio
    stage = recipes.SparseLearning(name, args.sparse_epochs or recipes.DEFAULT_SPARSE_EPOCHS,
                                   args.sparse_reg)
    stage.validate()
    return stage


def prune_config(args: argparse.Namespace, ratio: Optional[float] = None) -> pruning.PruneConfig:
    """--ratio (or ``ratio``) and the other pruning flags; --round-to may stay ``auto``."""
    return pruning.PruneConfig(
        ratio=args.ratio if ratio is None else ratio, importance=args.importance,
        global_pruning=args.global_pruning, max_layer_ratio=args.max_layer_ratio,
        round_to=args.round_to, layer_ratios=args.layer_ratios or {}, seed=args.seed,
        output_layer=args.output_layer)


def prune_job(args: argparse.Namespace, ratio: Optional[float] = None) -> PruneJob:
    """The job `tp-vgg prune` runs (`sweep`: at ``ratio``), after the flag checks."""
    check_out_dir(args.out)
    latency_args.check_latency_flags(args)  # --runtime, --latency-batch, --latency-cache
    sparse = sparse_learning(args)  # --recipe: fills in --importance, --global
    methods = methods_cmds.method_configs(args, ratio)  # target, iterative, unstructured
    cfg = prune_config(args, ratio)
    steps = methods["iterative"].steps if methods["iterative"] is not None else None
    default = (widths.default_search(methods["target"], cfg, bool(getattr(args, "data", None)),
                                     steps or 1, args.seed or 0)
               if getattr(args, "command", None) == "prune" and sparse is None
               and methods["unstructured"] is None else None)  # `sweep`: no default search
    search = search_args.search_config(args, default)
    finetune = train_cmds.finetune_config(args, data_used=methods.pop("needs_data")
                                          or search is not None or sparse is not None)
    return PruneJob(common.model_source(args), cfg, finetune=finetune,
                    search=search, sparse=sparse,
                    latency=latency_args.prune_latency_config(args),
                    latency_runtimes=latency_args.prune_latency_runtimes(args),
                    timing=latency_args.round_to_timing(args),
                    latency_cache=getattr(args, "latency_cache", None),
                    device=args.device, **methods)


def cmd_models(args: argparse.Namespace) -> int:
    for name, desc in list_models().items():
        print(f"{name:16s} {desc}")
    if not timm_installed():
        print(f"\ntimm's VGGs ({TIMM_VGGS[0]} ... {TIMM_VGGS[-1]}) need timm: {TIMM_INSTALL}")
    print("\nor your own: --model package.module:factory | --model path/to/file.py:factory")
    return 0


# What `prune --resume DIR` may change: where and how it runs, not what it does -- the same
# settings as `train --resume` (TrainConfig.RUNTIME, --log-every included)
RESUME_RUNTIME = TrainConfig.RUNTIME
RESUME_ALLOWED = RESUME_RUNTIME + ("resume", "threads", "debug", "trust_model_code",
                                   "allow_changed_model_code", "command", "func", REQUIRE_ONE_OF,
                                   "strict_weights")


def _refuse_with_resume(args: argparse.Namespace) -> None:
    defaults = {"seed": 0, "global_pruning": False}
    for name, value in vars(args).items():
        if name in RESUME_ALLOWED or value in (None, False) or defaults.get(name, object()) == value:
            continue
        raise UserError(f"--{name.replace('_', '-')} cannot be given with --resume: the prune "
                        "job continues with the settings it was started with (only "
                        + ", ".join("--" + f.replace("_", "-") for f in RESUME_RUNTIME + ("threads",))
                        + " may be given)")


def cmd_prune(args: argparse.Namespace) -> int:
    if args.resume:
        return cmd_prune_resume(args)
    if not args.out:
        raise UserError("--out DIR is required (or --resume DIR to finish an interrupted job)")
    job = prune_job(args)
    ctx = distributed.from_env(os.environ)  # torchrun: every rank prunes, fine-tunes its shard
    ctx = distributed.init(ctx, ctx.device(args.device))
    try:
        run(job, args.out, log=common.log, dist=ctx)
    finally:
        distributed.shutdown(ctx)
    return 0


def cmd_prune_resume(args: argparse.Namespace) -> int:
    """`tp-vgg prune --resume DIR`: finish an interrupted prune job."""
    _refuse_with_resume(args)
    runtime = {k: getattr(args, k) for k in RESUME_RUNTIME if getattr(args, k, None) is not None}
    ctx = distributed.from_env(os.environ)
    ctx = distributed.init(ctx, ctx.device(runtime.get("device")))
    try:
        resume_run(args.resume, log=common.log, dist=ctx, runtime=runtime or None,
                   **code_consent(args))
    finally:
        distributed.shutdown(ctx)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    loaded = load_model(args)
    c = counting.count(loaded.model, loaded.spec)
    lat = latency_args.profile_latency(args, loaded, c)  # None without --latency
    layers = latency_args.profile_layers(args, loaded) if args.layers else None
    if args.json:
        extra = {"latency": lat.to_dict()} if lat else {}
        if layers is not None:
            extra["latency_layers"] = layers.to_dict()
        print(json.dumps({"units": report_json.MAC_NOTE, **c.to_dict(), **extra}, indent=2))
    else:
        print(report_json.format_profile_table(c))
        if lat:
            print(latency_args.latency.format_latency_table(lat))
        if layers is not None:
            print(format_layer_times(layers))
    return 0
