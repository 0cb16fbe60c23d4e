"""`tp-vgg eval --model FILE.onnx` and `tp-vgg profile --model FILE.onnx`: a model exported with
`tp-vgg export --onnx`, run by onnxruntime. It holds no Python model code, so it needs no trust.

Registered after the command modules that define `eval` and `profile`: their handler is wrapped so
that an ONNX file goes here and everything else to them, unchanged.
"""

from __future__ import annotations

import argparse
import functools
import json
from typing import Callable

from tp_vgg.cli.common import MODEL_FLAGS, is_onnx, log
from tp_vgg.cli.latency_args import MEASURE_FLAGS
from tp_vgg.data.preprocessing import input_hw
from tp_vgg.errors import UserError
from tp_vgg.export import onnx_eval as exported
from tp_vgg.latency.timing import (LARGE_INPUT_BATCHES, SMALL_INPUT_BATCHES, parse_batch_sizes,
                                   time_onnx)
from tp_vgg.report import summary as report_json


def register(sub, common) -> None:
    for name, run_onnx in (("eval", cmd_eval_onnx), ("profile", cmd_profile_onnx)):
        p = sub.choices[name]
        p.set_defaults(func=_onnx_or(p.get_default("func"), run_onnx))


def _onnx_or(cmd: Callable[[argparse.Namespace], int],
             run_onnx: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(cmd)
    def run(args: argparse.Namespace) -> int:
        if is_onnx(getattr(args, "model", None)) and not getattr(args, "checkpoint", None):
            return run_onnx(args)
        return cmd(args)
    return run


def _refuse(args: argparse.Namespace, flags, why: str) -> None:
    for dest in flags:
        value = getattr(args, dest, None)
        if value not in (None, False):
            raise UserError(f"--{dest.replace('_', '-')} does not apply to an ONNX file: {why}")


def _common_checks(args: argparse.Namespace) -> None:
    _refuse(args, MODEL_FLAGS, "the file records its model")
    _refuse(args, ("trust_model_code", "allow_changed_model_code"), "it holds no model code")
    device = getattr(args, "device", None)
    if device not in (None, "auto", "cpu"):
        raise UserError(f"--device {device!r}: tp-vgg runs ONNX files on the CPU (onnxruntime's "
                        "CPUExecutionProvider); accepted: cpu")


def cmd_eval_onnx(args: argparse.Namespace) -> int:
    from tp_vgg.cli.train_cmds import data_config
    from tp_vgg.data.datasets import load_data

    _common_checks(args)
    model = exported.load_onnx(args.model, threads=args.threads)
    data = load_data(data_config(args), log)
    res = exported.evaluate_onnx(model, data, args.split, args.batch_size)
    split = data.test_split if args.split == "test" else "train"
    print(f"{data.name} {split}: top-1 {100 * res.top1:.2f}%  top-5 {100 * res.top5:.2f}%  "
          f"loss {res.loss:.4f}  ({res.images} images; {args.model} on onnxruntime "
          f"{exported.onnxruntime_version()})")
    if args.json:
        print(json.dumps({"top1": res.top1, "top5": res.top5, "loss": res.loss, "images": res.images,
                          "data": data.name, "split": split, "onnx": args.model,
                          "runtime": f"onnxruntime {exported.onnxruntime_version()}"}))
    return 0


def cmd_profile_onnx(args: argparse.Namespace) -> int:
    _common_checks(args)
    counts = exported.count_onnx(args.model)
    lat = None
    if args.latency:
        if getattr(args, "dtype", None) not in (None, "fp32"):
            raise UserError(f"--dtype {args.dtype!r}: an ONNX file is timed in the precision it "
                            "was exported in; accepted: fp32")
        _refuse(args, ("channels_last", "fuse_bn"), "the graph is timed as exported (onnxruntime "
                "picks its own layouts; fold BN at export with tp-vgg export --fuse-bn)")
        model = exported.load_onnx(args.model, threads=args.threads)
        default = (SMALL_INPUT_BATCHES if max(input_hw(model.info.input_size)) <= 64
                   else LARGE_INPUT_BATCHES)
        given = getattr(args, "latency_batch_sizes", None)
        sizes = parse_batch_sizes(given) if given else default
        for what, v, low in (("warmup", args.warmup, 0), ("repeats", args.repeats, 1)):
            if v < low:
                raise UserError(f"--{what} must be an integer >= {low}, got {v!r}")
        lat = time_onnx(model, sizes, args.warmup, args.repeats)
    else:
        given = [flag for dest, flag in MEASURE_FLAGS.items()
                 if getattr(args, dest, None) is not None]
        if given:
            raise UserError(f"{given[0]} only applies with --latency")
    if args.json:
        extra = {"latency": lat.to_dict()} if lat else {}
        print(json.dumps({"units": report_json.MAC_NOTE, "onnx": args.model, **counts.to_dict(), **extra},
                         indent=2))
    else:
        print(report_json.format_profile_table(counts).replace("fvcore does not count", "not counted"))
        if lat:
            print(exported_latency_table(lat))
    return 0


def exported_latency_table(lat) -> str:
    from tp_vgg.report.summary import table

    c = lat.config
    rows = [[str(b), f"{t['model'].median_ms:.2f}", f"{t['model'].p25_ms:.2f}-{t['model'].p75_ms:.2f}",
             f"{b * 1e3 / t['model'].median_ms:.1f}"] for b, t in lat.timings.items()]
    head = (f"latency on {lat.environment['device']} {lat.environment['onnxruntime']} "
            f"({lat.environment['threads']} threads); median of {c.repeats} runs after {c.warmup} "
            "warm-up")
    return head + "\n" + table(["batch N", "median ms per batch of N", "IQR ms", "images/s"], rows)
