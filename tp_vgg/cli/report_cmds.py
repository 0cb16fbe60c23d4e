"""`tp-vgg export`, `tp-vgg report`, `tp-vgg compare` and `tp-vgg sweep`."""

from __future__ import annotations

import argparse
import os
from typing import List

from tp_vgg.cli import pruning_cmds
from tp_vgg.cli.common import add_model_args, load_model, log, positive_int
from tp_vgg.errors import UserError, parse_list
from tp_vgg.export import exporters as export
from tp_vgg.jobs.stages import check_out_dir
from tp_vgg.jobs.sweep import sweep
from tp_vgg.report import compare as report_compare
from tp_vgg.report import markdown as report_md


def register(sub, common) -> None:
    p = sub.add_parser("export", parents=[common],
                       help="write a (pruned) model for inference: ONNX (checked with onnxruntime) "
                            "and/or a torch.export program, optionally with BN folded into convs")
    add_model_args(p)
    g = p.add_argument_group("export")
    g.add_argument("--onnx", metavar="OUT.onnx", help="write ONNX (dynamic batch axis)")
    g.add_argument("--pt2", metavar="OUT.pt2",
                   help="write a torch.export program (load with torch.export.load)")
    g.add_argument("--fuse-bn", action="store_true",
                   help="fold each BatchNorm into the conv before it (inference form)")
    g.add_argument("--opset", type=positive_int, default=17, metavar="N", help="ONNX opset (default 17)")
    g.add_argument("--no-check", action="store_true",
                   help="skip running the ONNX file with onnxruntime against PyTorch")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", parents=[common],
                       help="write RUN_DIR/report.md with tables and PNG plots from the run's "
                            "report.json / sweep.json / metrics.jsonl")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by prune, sweep, train or finetune")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", parents=[common],
                       help="prune runs side by side: top-1, MACs, params, latency, and per "
                            "layer the overlap (Jaccard) of the channels each removed with the "
                            "first run's; --out DIR writes compare.json, compare.md, compare.png")
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="two or more folders written by tp-vgg prune --out (the first is the "
                        "reference)")
    p.add_argument("--out", metavar="DIR",
                   help="write DIR/compare.json, compare.md and compare.png")
    p.set_defaults(func=cmd_compare)

    # sweep takes every `prune` option (the same actions, so new prune flags apply here too),
    # with --ratios in place of --ratio; each run is one cmd_prune into DIR/ratio_R/.
    p = sub.add_parser("sweep", parents=[sub.choices["prune"]], conflict_handler="resolve",
                       help="prune at several ratios (DIR/ratio_R/, each like `tp-vgg prune`), "
                            "then write DIR/sweep.json and DIR/report.md with the trade-off curves")
    g = p.add_argument_group("sweep")
    g.add_argument("--ratios", required=True, metavar="R1,R2",
                   help="comma-separated pruning ratios, e.g. 0.1,0.3,0.5,0.7 (replaces --ratio)")
    p.set_defaults(func=cmd_sweep)


# --------------------------------------------------------------------------------------------

def cmd_export(args: argparse.Namespace) -> int:
    cfg = export.ExportConfig(args.onnx, args.pt2, args.fuse_bn, args.opset, not args.no_check)
    cfg.validate()  # before the model is loaded
    loaded = load_model(args)
    export.export_model(loaded.model, loaded.spec, cfg, loaded.preprocessing, loaded.meta, log=log)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    written = report_md.write_report(args.run_dir)
    print(f"wrote {written.markdown}" + (f" and {len(written.plots)} plots in "
                                         f"{os.path.join(args.run_dir, 'plots')}" if written.plots else ""))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    done = report_compare.compare(args.runs, args.out)
    print(done.text)
    if done.written:
        print("wrote " + ", ".join(done.written))
    return 0


# --------------------------------------------------------------------------------------------

def parse_ratios(text: str) -> List[float]:
    return sorted(parse_list(text, float, lambda r: 0.0 <= r < 1.0, "--ratios",
                             "a number in [0, 1)",
                             "comma-separated ratios, e.g. 0.1,0.3,0.5,0.7"))


NOT_FOR_SWEEP = {"ratio": "--ratio", "target_speedup": "--target-speedup",
                 "target_macs": "--target-macs", "target_latency": "--target-latency"}


def cmd_sweep(args: argparse.Namespace) -> int:
    for dest, flag in NOT_FOR_SWEEP.items():
        if getattr(args, dest, None) is not None:
            raise UserError(f"{flag} is not a sweep option; give --ratios R1,R2,...")
    if getattr(args, "recipe", None):
        raise UserError("--recipe is not a sweep option: every ratio would repeat the same "
                        "sparse learning (tp-vgg prune --recipe NAME prunes one budget)")
    ratios = parse_ratios(args.ratios)
    check_out_dir(args.out)
    if getattr(args, "data", None) and not getattr(args, "finetune_epochs", None):
        raise UserError("--data is given without --finetune-epochs N; add it to fine-tune each "
                        "pruned model")
    job = pruning_cmds.prune_job(args, ratio=ratios[0])
    sweep(job, ratios, args.out, log=log, latency_label=getattr(args, "latency", None))
    return 0
