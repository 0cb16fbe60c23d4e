"""`tp-vgg models`, `tp-vgg prune` and `tp-vgg profile`."""

from __future__ import annotations

import argparse
import json
import os

from tp_vgg import checkpoint, counting, pruning, report
from tp_vgg.cli import latency_args, methods_cmds, train_cmds
from tp_vgg.cli.common import Loaded, add_model_args, json_object, load_model, ratio
from tp_vgg.errors import UserError
from tp_vgg.io import atomic_path, ensure_dir, write_json
from tp_vgg.models import list_models


def register(sub, common) -> None:
    p = sub.add_parser("models", parents=[common], help="list the model zoo")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("prune", parents=[common], help="remove channels, write DIR/pruned.pt and report.json")
    add_model_args(p)
    add_prune_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    train_cmds.add_prune_finetune_args(p)  # --finetune-epochs N --data D [training flags]
    latency_args.add_prune_latency_args(p)  # --latency [B1,B2]
    methods_cmds.add_prune_method_args(p)  # --target-*, --iterative-steps, --unstructured, ...
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("profile", parents=[common], help="MACs and params per layer and in total")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--latency", action="store_true",
                   help="also time the model (a pruned checkpoint: against its unpruned model, "
                        "interleaved) and print speed-up and efficiency = speed-up / MAC ratio")
    latency_args.add_measure_args(p)
    p.set_defaults(func=cmd_profile)


def add_prune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pruning")
    g.add_argument("--ratio", type=ratio, metavar="R",
                   help="fraction of channels removed from every prunable layer, in [0, 1) "
                        "(or give --target-speedup / --target-macs)")
    g.add_argument("--importance", default="l1", choices=pruning.IMPORTANCES.names(),
                   help="channel ranking criterion (default l1)")
    g.add_argument("--global", dest="global_pruning", action="store_true",
                   help="rank channels across layers instead of per layer")
    g.add_argument("--max-layer-ratio", type=ratio, metavar="R",
                   help="most any layer may lose (default 0.9 with --global)")
    g.add_argument("--round-to", type=latency_args.round_to_arg, metavar="K",
                   help="keep a multiple of K channels per layer (rounds down); auto: what the "
                        "device's conv kernels are blocked on (16 on AVX-512 CPUs, else 8)")
    g.add_argument("--layer-ratios", type=json_object, metavar="JSON",
                   help="per-layer ratios by module name, e.g. '{\"features.0\": 0.5}'")
    g.add_argument("--output-layer", metavar="NAME",
                   help="the layer producing the logits, when the graph cannot tell")
    g.add_argument("--seed", type=int, default=0, help="seed for --importance random (default 0)")


def prune_config(args: argparse.Namespace) -> pruning.PruneConfig:
    return pruning.PruneConfig(
        ratio=args.ratio, importance=args.importance, global_pruning=args.global_pruning,
        max_layer_ratio=args.max_layer_ratio, round_to=latency_args.resolve_round_to(args),
        layer_ratios=args.layer_ratios or {}, seed=args.seed,
        output_layer=args.output_layer)


def cmd_models(args: argparse.Namespace) -> int:
    for name, desc in list_models().items():
        print(f"{name:16s} {desc}")
    print("\nor your own: --model package.module:factory | --model path/to/file.py:factory")
    return 0


def _check_out(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out!r} is a file; give a folder")


def cmd_prune(args: argparse.Namespace) -> int:
    _check_out(args.out)
    methods = methods_cmds.PruneMethods.from_args(args)  # targets, iterative steps, unstructured
    if not args.unstructured:
        cfg = methods.config(prune_config(args))
        cfg.validate()
    loaded: Loaded = load_model(args)
    model, spec = loaded.model, loaded.spec
    ft = train_cmds.PruneFinetune.begin(  # with --finetune-epochs: top-1 before
        args, loaded, data_used=methods.needs_data)
    if args.unstructured:
        return methods_cmds.prune_unstructured(args, loaded, ft)
    methods.start(loaded, ft)  # data for --importance taylor / fine-tuning between steps
    original = latency_args.keep_original(args, model)  # with --latency: the unpruned copy
    before = counting.count(model, spec)
    cfg = methods.solve(model, spec, cfg, before)  # --target-*: the ratio that reaches it
    cfg = latency_args.fit_round_to(args, cfg, model)  # --round-to auto: small layers keep >= 1
    result = pruning.prune(model, spec, cfg, **methods.prune_kwargs(spec))
    after = counting.count(model, spec)
    acc = {}
    if ft is not None:  # fine-tune in place (DIR/finetune/), then pruned.pt holds those weights
        acc = {"accuracy": ft.finish(model, spec, loaded.history + result.history, loaded.meta)}
    methods.finish(model, acc.get("accuracy"))
    rep = report.prune_report(spec, cfg, before, after, result.output_layers, len(result.history),
                              **acc, **latency_args.prune_latency(args, original, model, spec,
                                                                  before, after),
                              **methods.report(after, result))
    meta = dict(loaded.meta, importance=cfg.importance, ratio=cfg.ratio, config=rep["config"],
                macs_before=before.macs, macs_after=after.macs,
                params_before=before.params, params_after=after.params, **acc)
    ensure_dir(args.out)
    # Both files or neither: pruned.pt is written whole under a temp name, report.json is
    # written (atomically), and only then is pruned.pt renamed into place.
    with atomic_path(os.path.join(args.out, "pruned.pt")) as ckpt_tmp:
        checkpoint.save(ckpt_tmp, model, spec, history=loaded.history + result.history,
                        preprocessing=ft.preprocessing if ft else loaded.preprocessing, meta=meta,
                        atomic=False)
        write_json(os.path.join(args.out, "report.json"), rep)
    print(report.format_prune_table(rep))
    methods.print_summary(after, result)
    print(f"wrote {os.path.join(args.out, 'pruned.pt')} and report.json")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    loaded = load_model(args)
    c = counting.count(loaded.model, loaded.spec)
    lat = latency_args.profile_latency(args, loaded, c)  # None without --latency
    if args.json:
        extra = {"latency": lat.to_dict()} if lat else {}
        print(json.dumps({"units": report.MAC_NOTE, **c.to_dict(), **extra}, indent=2))
    else:
        print(report.format_profile_table(c))
        if lat:
            print(latency_args.latency.format_latency_table(lat))
    return 0
