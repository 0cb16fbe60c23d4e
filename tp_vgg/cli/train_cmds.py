"""`tp-vgg train`, `tp-vgg finetune`, `tp-vgg eval`, and the fine-tuning sub-config of
`tp-vgg prune --finetune-epochs` (:func:`finetune_config`).

Works under torchrun (``torchrun --nproc_per_node=2 $(which tp-vgg) train ...``): every rank
trains its share of each batch, rank 0 alone prints and writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
from typing import Any, Optional

from tp_vgg.checkpoint.source import is_checkpoint_file, load_source, weights_checkpoint_message
from tp_vgg.checkpoint.store import load_checkpoint
from tp_vgg.cli.common import (MODEL_FLAGS, Loaded, add_model_args, add_trust_args, code_consent,
                               comma_list, fraction, json_object, load_model, log, model_source,
                               nonneg_float, nonneg_int, positive_float, positive_int, unit_float)
from tp_vgg.data.datasets import DATASETS, LOADERS, MEMORY_SHARE, DataConfig, load_data
from tp_vgg.errors import UserError
from tp_vgg.jobs import FinetuneConfig
from tp_vgg.train.evaluation import DEFAULT_BN_RECALIBRATE
from tp_vgg.models.weights import is_weights_file
from tp_vgg.models.zoo import MODELS
from tp_vgg.train import distributed, evaluation
from tp_vgg.train import loop as train
from tp_vgg.train import progress
from tp_vgg.train.config import AMP_MODES, OPTIMIZERS, SCHEDULES, TrainConfig, finetuning

# Flags that set the training recipe; with --resume the saved recipe is used and these are refused.
RECIPE = ("epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov", "weight_decay",
          "schedule", "warmup_epochs", "step_size", "milestones", "gamma", "label_smoothing",
          "grad_clip", "augment", "seed", "sparsity", "sparsity_reg", "distill",
          "distill_temperature", "distill_alpha")
RUNTIME = ("device", "amp", "channels_last", "compile", "progress", "log_every_s")



def register(sub, common) -> None:
    p = sub.add_parser("train", parents=[common],
                       help="train a model from scratch (or from torchvision weights); "
                            "writes DIR/last.pt, best.pt, metrics.jsonl, config.json")
    add_model_args(p, checkpoint=False, required=False)
    add_trust_args(p)  # for --resume of a user model's run
    add_data_args(p)
    add_train_args(p)
    add_run_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", parents=[common],
                       help="train a (pruned) checkpoint's architecture from its weights")
    p.add_argument("--checkpoint", metavar="FILE", help="the checkpoint to fine-tune (e.g. pruned.pt)")
    p.add_argument("--scratch", action="store_true",
                   help="train the checkpoint's (pruned) architecture from a random initialization "
                        "instead, with the training defaults (the control of 'Rethinking the Value "
                        "of Network Pruning')")
    add_data_args(p)
    add_train_args(p)
    add_distill_args(p, prune=False)
    add_run_args(p)
    add_trust_args(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("eval", parents=[common],
                       help="top-1, top-5 and loss averaged over the test images")
    add_model_args(p)
    add_data_args(p, required=True)
    g = p.add_argument_group("evaluation")
    g.add_argument("--split", default="test", choices=["test", "train"],
                   help="which split to evaluate (default test; imagefolder: val/ or test/)")
    g.add_argument("--batch-size", type=positive_int, default=256, metavar="N")
    g.add_argument("--device", metavar="DEV", help="auto (default: CUDA when present), cpu, cuda, cuda:N")
    g.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads (torch.set_num_threads)")
    g.add_argument("--seed", type=int, metavar="S",
                   help="seeds the --train-images/--test-images sample (default 0; give the "
                        "training run's --seed to score the same images)")
    g.add_argument("--json", action="store_true",
                   help="print a JSON object (top1, top5, loss, images) as the last line")
    p.set_defaults(func=cmd_eval)


def _add(g, *flags: str, **kw: Any) -> None:
    """Add an option unless the parser already has it (another command module may add e.g.
    --device to `prune`)."""
    if any(f in g._option_string_actions for f in flags):  # shared by a parser's groups
        return
    g.add_argument(*flags, **kw)


def add_data_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("data")
    _add(g, "--data", metavar="NAME", required=required,
         help=f"dataset: {', '.join(DATASETS.names())}")
    _add(g, "--data-dir", metavar="DIR",
         help="where the dataset lives (cifar10/cifar100: default ./data; imagefolder: a folder "
              "with train/ and val/ or test/)")
    _add(g, "--download", action="store_true", help="download cifar10/cifar100 (needs a network)")
    _add(g, "--data-kwargs", type=json_object, metavar="JSON",
         help="dataset options, e.g. fake: '{\"train_size\": 256}', imagefolder: "
              "'{\"image_size\": 32}' or '{\"channels\": 1}'")
    _add(g, "--data-loader", choices=LOADERS, metavar="HOW",
         help="imagefolder: memory (decode once, hold in memory), stream (read from disk as it "
              "trains: sets larger than memory, images of any size; ImageNet-style transforms), "
              f"or auto (default: stream when the decoded set would exceed {MEMORY_SHARE:.0%}% of "
              "this machine's memory per process, or when image sizes differ)")
    _add(g, "--workers", type=nonneg_int, metavar="N",
         help="--data-loader stream: loader processes per rank (default: the cores less one)")
    _add(g, "--mean", type=_per_channel, metavar="M1,M2,M3",
         help="the per-channel mean your model was trained with, in [0, 1] units (with --std), "
              "e.g. 0.5,0.5,0.5; default: the checkpoint's or the weights', else the data's")
    _add(g, "--std", type=_per_channel, metavar="S1,S2,S3",
         help="the per-channel std your model was trained with (with --mean), each > 0")
    _add(g, "--allow-class-mismatch", action="store_true", default=None,
         help="go on (with a notice) when the data's class names differ from those the "
              "checkpoint or ONNX file records (the same classes under other names)")
    _add(g, "--train-images", type=positive_int, metavar="N",
         help="use only N training images, a random sample seeded by --seed (the same N "
              "images for the same seed; default all; any dataset)")
    _add(g, "--test-images", type=positive_int, metavar="N",
         help="use only N test images, a random sample seeded by --seed (default all)")


_per_channel = comma_list(float, lambda v: True,
                          "{text} is not a comma-separated list of numbers, e.g. 0.5,0.5,0.5",
                          "{text} holds no numbers; accepted: one number per channel, e.g. "
                          "0.5,0.5,0.5")


_milestones = comma_list(int, lambda ms: all(m >= 1 for m in ms),
                         "{text} is not a comma-separated list of epochs, e.g. 15,25",
                         "{text}: milestones are epochs >= 1, e.g. 15,25", sorted)


def add_train_args(p: argparse.ArgumentParser, epochs: bool = True) -> None:
    """Training flags. Defaults are None here and come from TrainConfig, so that an explicitly
    given flag can be told apart (refused with --resume)."""
    d = TrainConfig()
    g = p.add_argument_group("training")
    if epochs:
        _add(g, "--epochs", type=positive_int, metavar="N", help=f"default {d.epochs}")
    _add(g, "--batch-size", type=positive_int, metavar="N",
         help=f"per process (torchrun: global = N x processes); default {d.batch_size}")
    _add(g, "--optimizer", metavar="NAME",
         help=f"{', '.join(OPTIMIZERS.names())} (default {d.optimizer})")
    _add(g, "--lr", type=positive_float, metavar="LR",
         help="peak learning rate (default: sgd 0.05, adamw 0.001; finetune: a fifth of that)")
    _add(g, "--momentum", type=fraction, metavar="M", help=f"SGD momentum (default {d.momentum})")
    _add(g, "--nesterov", action=argparse.BooleanOptionalAction, default=None,
         help="Nesterov momentum (default on)")
    _add(g, "--weight-decay", type=nonneg_float, metavar="WD", help="default: sgd 5e-4, adamw 0.05")
    _add(g, "--schedule", metavar="NAME",
         help=f"{', '.join(SCHEDULES.names())} (default {d.schedule}), applied per step")
    _add(g, "--warmup-epochs", type=nonneg_float, metavar="E",
         help=f"linear LR warm-up, may be fractional (default {d.warmup_epochs}; finetune 0)")
    _add(g, "--step-size", type=positive_int, metavar="E", help="step schedule: epochs per decay")
    _add(g, "--milestones", type=_milestones, metavar="E1,E2",
         help="multistep schedule: epochs where the LR is multiplied by --gamma")
    _add(g, "--gamma", type=positive_float, metavar="G", help="step/multistep decay factor (default 0.1)")
    _add(g, "--label-smoothing", type=fraction, metavar="S", help="default 0")
    _add(g, "--grad-clip", type=positive_float, metavar="NORM", help="clip the gradient norm")
    _add(g, "--augment", action=argparse.BooleanOptionalAction, default=None,
         help="random crop (pad 4) and flip (no flip for digits); default on")
    _add(g, "--seed", type=int, metavar="S", help="seeds init, data order, augmentation (default 0)")
    r = p.add_argument_group("device")
    _add(r, "--device", metavar="DEV", help="auto (default: CUDA when present), cpu, cuda, cuda:N")
    _add(r, "--amp", choices=AMP_MODES, default=None,
         help="mixed precision on CUDA: auto (bf16 where supported, else fp16 + GradScaler), off")
    _add(r, "--channels-last", action=argparse.BooleanOptionalAction, default=None,
         help="channels_last memory format (default on)")
    _add(r, "--compile", action="store_true", default=None, help="torch.compile the model")
    _add(r, "--progress", choices=progress.PROGRESS.names(), default=None,
         help="auto (default: a tqdm bar on a terminal, one line per epoch otherwise), bar, "
              "plain (one line per epoch, and within an epoch a line every --log-every "
              "seconds: step, running loss, images/s), none")
    _add(r, "--log-every", dest="log_every_s", type=nonneg_float, metavar="SECONDS",
         help=f"--progress plain: seconds between the lines within an epoch (default "
              f"{d.log_every_s:g}; 0: at every progress update, each few steps)")
    _add(r, "--threads", type=positive_int, metavar="N", help="CPU threads (torch.set_num_threads)")


def add_distill_args(p: argparse.ArgumentParser, prune: bool = True) -> None:
    d = TrainConfig()
    g = p.add_argument_group("distillation")
    _add(g, "--distill", action="store_true", default=None,
         help="fine-tune against a teacher's soft labels (KL at --distill-temperature, weight "
              "--distill-alpha, plus cross-entropy); the teacher is " +
              ("the model before pruning, or --teacher" if prune else "--teacher CKPT"))
    _add(g, "--teacher", metavar="CKPT",
         help="a tp-vgg checkpoint to distill from" + (" (default: the model before pruning)" if prune else ""))
    _add(g, "--distill-temperature", type=positive_float, metavar="T",
         help=f"softmax temperature of the distillation term (default {d.distill_temperature})")
    _add(g, "--distill-alpha", type=unit_float, metavar="A",
         help=f"weight of the distillation term, 1 - A of cross-entropy (default {d.distill_alpha})")


def check_distill_args(args: argparse.Namespace) -> None:
    """The distillation flags need --distill."""
    if not getattr(args, "distill", None):
        for flag in ("teacher", "distill_temperature", "distill_alpha"):
            if getattr(args, flag, None) is not None:
                raise UserError(f"--{flag.replace('_', '-')} is given without --distill; add "
                                "--distill to fine-tune against a teacher")


def teacher_from_args(args: argparse.Namespace) -> Optional[train.Teacher]:
    """``--teacher CKPT`` when ``--distill`` (`tp-vgg finetune`)."""
    check_distill_args(args)
    if not getattr(args, "distill", None):
        return None
    if not getattr(args, "teacher", None):
        raise UserError("--distill needs --teacher CKPT here: a checkpoint of the model to "
                        "distill from (e.g. the unpruned model's last.pt)")
    return train.Teacher.read(args.teacher, **code_consent(args))


def add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR",
                   help="output folder (with --resume: default the checkpoint's folder)")
    g.add_argument("--resume", metavar="LAST_PT",
                   help="continue a run exactly from its DIR/last.pt (model, optimizer, scheduler, "
                        "RNG, epoch); the saved recipe is used")


def data_config(args: argparse.Namespace) -> DataConfig:
    if not getattr(args, "data", None):
        raise UserError(f"--data is required; accepted: {', '.join(DATASETS.names())}")
    DATASETS.get(args.data)
    cfg = DataConfig(name=args.data, data_dir=args.data_dir, download=bool(args.download),
                     kwargs=args.data_kwargs or {}, loader=getattr(args, "data_loader", None) or "auto",
                     workers=getattr(args, "workers", None), mean=getattr(args, "mean", None),
                     std=getattr(args, "std", None),
                     allow_class_mismatch=bool(getattr(args, "allow_class_mismatch", None)),
                     train_images=getattr(args, "train_images", None),
                     test_images=getattr(args, "test_images", None),
                     subset_seed=getattr(args, "seed", None) or 0)
    cfg.validate()
    return cfg


def train_config(args: argparse.Namespace, finetune: bool = False) -> TrainConfig:
    given = {k: getattr(args, k) for k in RECIPE + RUNTIME if getattr(args, k, None) is not None}
    cfg = finetuning(**given) if finetune else TrainConfig(**given)
    cfg.validate()
    return cfg


def _setup_runtime(args: argparse.Namespace) -> distributed.DistContext:
    return distributed.from_env(os.environ)


def _start_dist(ctx: distributed.DistContext, device: Optional[str]) -> distributed.DistContext:
    return distributed.init(ctx, ctx.device(device))


def _check_out(out: Optional[str]) -> str:
    if not out:
        raise UserError("--out DIR is required")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out!r} is a file; give a folder")
    return out


def _log(ctx: distributed.DistContext):
    def log(msg: str) -> None:
        if ctx.is_main:
            print(msg, flush=True)
    return log


def _summary(result: train.FitResult, log) -> None:
    if result.final is not None:
        log(f"final test top-1 {100 * result.final.top1:.2f}%  top-5 {100 * result.final.top5:.2f}%  "
            f"loss {result.final.loss:.4f}; best top-1 {100 * result.best_top1:.2f}%")
    if result.out_dir:
        names = [n for n in ("last.pt", "best.pt", "metrics.jsonl", "config.json")
                 if os.path.exists(os.path.join(result.out_dir, n))]
        log(f"wrote {os.path.join(result.out_dir, names[0]) if names else result.out_dir}"
            + "".join(f", {n}" for n in names[1:]))


def _run(ctx: distributed.DistContext, fn) -> int:
    try:
        fn()
    finally:
        distributed.shutdown(ctx)
    return 0


def _resume(args: argparse.Namespace, ctx: distributed.DistContext, command: str) -> int:
    given = [k for k in RECIPE if k != "epochs" and getattr(args, k, None) is not None]
    if given:
        raise UserError(f"--{given[0].replace('_', '-')} cannot be given with --resume: the run "
                        "continues with the configuration saved in its last.pt (only --epochs "
                        "may grow)")
    for flag in ("model", "checkpoint", "data") + MODEL_FLAGS:
        if getattr(args, flag, None):
            raise UserError(f"--{flag.replace('_', '-')} cannot be given with --resume: the run "
                            "continues with the model, weights and data saved in its last.pt")
    point = train.ResumePoint.read(args.resume, **code_consent(args))
    out = args.out or os.path.dirname(os.path.abspath(args.resume))
    _check_out(out)
    runtime = {k: getattr(args, k) for k in RUNTIME if getattr(args, k, None) is not None}
    data = load_data(point.data, _log(ctx))
    ctx = _start_dist(ctx, runtime.get("device", point.config.device))
    log = _log(ctx)
    done = int(point.checkpoint.train_state["epoch"])
    epochs = getattr(args, "epochs", None)
    if point.replans(epochs):
        log(f"resuming {args.resume} after epoch {done} of {point.config.epochs}, continuing to "
            f"{epochs} epochs: the LR schedule is re-planned for {epochs} epochs from epoch {done} "
            "(metrics.jsonl: planned_epochs)")
    else:
        step = int(point.checkpoint.train_state.get("step") or 0)  # stopped by a signal
        log(f"resuming {args.resume} after epoch {done}/{point.config.epochs}"
            + (f" and step {step} of epoch {done + 1}" if step else ""))
    return _run(ctx, lambda: _summary(
        train.resume(point, data, out, runtime=runtime, dist=ctx, log=log, epochs=epochs), log))


def cmd_train(args: argparse.Namespace) -> int:
    ctx = _setup_runtime(args)
    if args.resume:
        return _resume(args, ctx, "train")
    if not args.model:
        raise UserError("one of --model or --resume is required")
    if is_weights_file(args.weights) and is_checkpoint_file(args.weights):
        w = shlex.quote(args.weights)
        raise UserError(weights_checkpoint_message(
            args.weights, f"tp-vgg train builds a new model: continue that run with tp-vgg "
                          f"train --resume {w} (a last.pt), or train on from its weights with "
                          f"tp-vgg finetune --checkpoint {w}"))
    out = _check_out(args.out)
    cfg = train_config(args)
    data_cfg = data_config(args)
    data = load_data(data_cfg, _log(ctx))
    source = model_source(args)
    spec = source.spec
    if spec.num_classes is None and not spec.is_user_factory and \
            "num_classes" in MODELS.get(spec.name).accepts:
        source.spec = dataclasses.replace(spec, num_classes=data.num_classes)
    train.seed_everything(cfg.seed)
    loaded = load_source(dataclasses.replace(source, seed=cfg.seed), _log(ctx))
    ctx = _start_dist(ctx, cfg.device)
    log = _log(ctx)
    return _run(ctx, lambda: _summary(
        train.fit(loaded.model, loaded.spec, data, cfg, out, data_cfg=data_cfg, dist=ctx, log=log,
                  preprocessing=loaded.preprocessing if loaded.preprocessing.normalized else None,
                  meta=loaded.meta or None), log))


def cmd_finetune(args: argparse.Namespace) -> int:
    ctx = _setup_runtime(args)
    if args.resume:
        if args.checkpoint:
            raise UserError("--checkpoint cannot be given with --resume: the run continues with "
                            "the model saved in its last.pt")
        return _resume(args, ctx, "finetune")
    if not args.checkpoint:
        raise UserError("one of --checkpoint or --resume is required")
    out = _check_out(args.out)
    cfg = train_config(args, finetune=not args.scratch)
    data_cfg = data_config(args)
    ck = load_checkpoint(args.checkpoint, **code_consent(args))
    teacher = teacher_from_args(args)
    data = load_data(data_cfg, _log(ctx))
    train.seed_everything(cfg.seed)
    ctx = _start_dist(ctx, cfg.device)
    log = _log(ctx)
    return _run(ctx, lambda: _summary(
        train.finetune(ck, data, cfg, out, scratch=args.scratch, data_cfg=data_cfg, dist=ctx,
                       log=log, teacher=teacher),
        log))


def cmd_eval(args: argparse.Namespace) -> int:
    loaded: Loaded = load_model(args)
    data = load_data(data_config(args), log)
    res = evaluation.evaluate_on(loaded.model, loaded.spec, data, loaded.preprocessing, args.split,
                      args.batch_size, args.device)
    split = data.test_split if args.split == "test" else "train"
    print(f"{data.name} {split}: top-1 {100 * res.top1:.2f}%  top-5 {100 * res.top5:.2f}%  "
          f"loss {res.loss:.4f}  ({res.images} images)")
    if args.json:
        print(json.dumps({"top1": res.top1, "top5": res.top5, "loss": res.loss, "images": res.images,
                          "data": data.name, "split": split,
                          "checkpoint": getattr(args, "checkpoint", None)}))
    return 0


# --------------------------------------------------------------------------------------------
# `tp-vgg prune ... --finetune-epochs N --data D`: accuracy before, pruned, fine-tuned.

def add_prune_finetune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fine-tuning after pruning")
    _add(g, "--finetune-epochs", type=positive_int, metavar="N",
         help="fine-tune the pruned model for N epochs on --data, then evaluate (report.json "
              "gains accuracy before/pruned/recalibrated/finetuned; pruned.pt holds the "
              "fine-tuned weights)")
    _add(g, "--bn-recalibrate", type=nonneg_int, metavar="N",
         help="after pruning, re-estimate BatchNorm running statistics on N training batches "
              f"(no training) before evaluating and fine-tuning (default {DEFAULT_BN_RECALIBRATE} "
              "whenever --data is given; 0: off)")
    _add(g, "--scratch", nargs="?", const=0, type=positive_int, metavar="E",
         help="the control: also train the pruned architecture from a random initialization for "
              "E epochs with the training recipe (default: the checkpoint's training epochs + "
              "--finetune-epochs); report.json accuracy gains 'scratch'")
    add_data_args(p)
    add_train_args(p, epochs=False)
    add_distill_args(p)


def finetune_config(args: argparse.Namespace, data_used: bool = False) -> Optional[FinetuneConfig]:
    """The fine-tuning sub-config of `tp-vgg prune` (None without --data). ``data_used``:
    another flag uses --data (e.g. --importance taylor)."""
    epochs = getattr(args, "finetune_epochs", None) or 0
    bn = getattr(args, "bn_recalibrate", None)
    if not epochs:
        if getattr(args, "scratch", None) is not None:
            raise UserError("--scratch is given without --finetune-epochs N; the control is "
                            "compared with fine-tuning")
        if getattr(args, "distill", None):
            raise UserError("--distill is given without --finetune-epochs N; distillation "
                            "happens while fine-tuning")
        if not (bn and getattr(args, "data", None)):
            if getattr(args, "data", None) and not data_used:
                raise UserError("--data is given without --finetune-epochs N; add it to "
                                "fine-tune after pruning (or --bn-recalibrate N to only "
                                "re-estimate BatchNorm statistics)")
            if bn:
                raise UserError(f"--bn-recalibrate {bn} needs --data D: the statistics are "
                                "re-estimated on training batches")
            if not data_used:
                return None
            return FinetuneConfig(data_config(args), train_config(args, finetune=True), 0, 0)
    data_cfg = data_config(args)
    cfg = train_config(args, finetune=True)
    check_distill_args(args)
    return FinetuneConfig(data_cfg, cfg, epochs, DEFAULT_BN_RECALIBRATE if bn is None else bn,
                          getattr(args, "teacher", None) if cfg.distill else None,
                          getattr(args, "scratch", None))  # None: no control; 0: same total

