"""Pruning methods on the command line.

* `tp-vgg sensitivity`: each layer alone at ratios 0.1 ... 0.9, CSV + PNG, and ``--layer-ratios``
  for an accuracy budget (Li et al. 2017);
* flags of `tp-vgg prune`: ``--target-speedup``/``--target-macs``, ``--iterative-steps`` with
  ``--finetune-epochs-per-step``, ``--taylor-batches`` (``--importance taylor`` uses ``--data``),
  ``--unstructured`` with ``--lottery-rounds``/``--rewind-epoch``;
* flags of `tp-vgg train` and `tp-vgg finetune`: ``--sparsity``/``--sparsity-reg``.

`prune`'s own command (tp_vgg/cli/pruning_cmds.py) calls :class:`PruneMethods` at a few points
and hands ``--unstructured`` to :func:`prune_unstructured`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from tp_vgg import checkpoint, counting, iterative, pruning, report, sensitivity, sparsity, targets
from tp_vgg import train, unstructured
from tp_vgg.cli import train_cmds
from tp_vgg.cli.common import (MODEL_FLAGS, Loaded, add_model_args, code_consent, load_model,
                               nonneg_float, nonneg_int, positive_int)
from tp_vgg.counting import human
from tp_vgg.criteria import GradientBatches
from tp_vgg.data import Batches, BatchTransform, ImageData, load_data
from tp_vgg.errors import UserError
from tp_vgg.io import atomic_path, ensure_dir, write_json, write_text

DEFAULT_TAYLOR_BATCHES = 8
TAYLOR_BATCH_SIZE = 64


# --------------------------------------------------------------------------------------------
# Argument types.

def _speedup(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; accepted: a number > 1, e.g. 4")
    if not (v > 1 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"{text!r} is not > 1; accepted: a number > 1 "
                                         "(MACs before / after), e.g. 4")
    return v


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






def _ratio_list(text: str) -> List[float]:
    try:
        out = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ratios, "
                                         "e.g. 0.1,0.3,0.5")
    if not out or any(not 0 < r < 1 for r in out):
        raise argparse.ArgumentTypeError(f"{text!r}: ratios must be in (0, 1), e.g. 0.1,0.3,0.5")
    return sorted(set(out))


def _name_list(text: str) -> List[str]:
    out = [t.strip() for t in text.split(",") if t.strip()]
    if not out:
        raise argparse.ArgumentTypeError(f"{text!r}: give layer names separated by commas")
    return out


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
    g.add_argument("--importance", default="l1", choices=pruning.IMPORTANCES.names(),
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
                   help=f"--importance taylor: training batches for the gradients "
                        f"(default {DEFAULT_TAYLOR_BATCHES})")
    g.add_argument("--output-layer", metavar="NAME",
                   help="the layer producing the logits, when the graph cannot tell")
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


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; accepted: a number > 0, e.g. 1e-4")
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"{text!r} is not > 0; accepted: a number > 0, e.g. 1e-4")
    return v


def add_prune_method_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target-driven and iterative pruning")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--target-speedup", type=_speedup, metavar="X",
                   help="prune until MACs before / after >= X (instead of --ratio)")
    t.add_argument("--target-macs", type=_macs, metavar="N",
                   help="prune until MACs <= N, e.g. 150M (instead of --ratio)")
    g.add_argument("--iterative-steps", type=positive_int, metavar="K",
                   help="reach the ratio or target in K pruning steps (same final MACs as one "
                        "shot), fine-tuning between them with --finetune-epochs-per-step")
    g.add_argument("--finetune-epochs-per-step", type=positive_int, metavar="E",
                   help="epochs of fine-tuning on --data after each step but the last "
                        "(--finetune-epochs N fine-tunes after the last)")
    g.add_argument("--taylor-batches", type=positive_int, metavar="N",
                   help=f"--importance taylor: training batches of --data run forward and "
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


def check_prune_args(args: argparse.Namespace) -> None:
    """Refuse combinations that mean nothing, in one line."""
    if _given(args, "unstructured"):
        if _given(args, "latency"):
            raise UserError("--latency with --unstructured would time the same dense layers: "
                            "zeroed weights do not make dense kernels faster (the report gives "
                            "nonzero-weight MACs instead)")
        for name in ("target_speedup", "target_macs", "iterative_steps", "finetune_epochs_per_step",
                     "layer_ratios", "round_to", "max_layer_ratio", "taylor_batches"):
            if _given(args, name):
                raise UserError(f"{_flag(name)} applies to structured (channel) pruning, not "
                                "--unstructured, which zeroes single weights by magnitude")
        if getattr(args, "importance", "l1") != "l1":
            raise UserError(f"--importance {args.importance} ranks channels; --unstructured ranks "
                            "single weights by magnitude (leave --importance out)")
        if getattr(args, "ratio", None) is None:
            raise UserError("--unstructured needs --ratio R, the fraction of weights to zero")
        if _given(args, "lottery_rounds") and not _given(args, "finetune_epochs"):
            raise UserError("--lottery-rounds needs --finetune-epochs N (training epochs per "
                            "round) and --data")
        if _given(args, "rewind_epoch") and not _given(args, "lottery_rounds"):
            raise UserError("--rewind-epoch applies to lottery-ticket mode: add --lottery-rounds R")
        return
    for name in ("lottery_rounds", "rewind_epoch"):
        if _given(args, name):
            raise UserError(f"{_flag(name)} applies to --unstructured pruning (lottery tickets)")
    has_target = _given(args, "target_speedup") or _given(args, "target_macs")
    if has_target and getattr(args, "ratio", None) is not None:
        which = "--target-speedup" if _given(args, "target_speedup") else "--target-macs"
        raise UserError(f"--ratio cannot be combined with {which}: the target sets the ratio")
    if not has_target and getattr(args, "ratio", None) is None:
        raise UserError("one of --ratio R, --target-speedup X or --target-macs N is required")
    if _given(args, "finetune_epochs_per_step") and (getattr(args, "iterative_steps", None) or 1) < 2:
        raise UserError("--finetune-epochs-per-step needs --iterative-steps K with K >= 2")
    if _given(args, "taylor_batches") and getattr(args, "importance", None) != "taylor":
        raise UserError("--taylor-batches applies to --importance taylor")


def _evaluate(model: torch.nn.Module, spec, data: ImageData, pre: Dict[str, Any],
              device: Optional[str], batch_size: int = 256) -> float:
    home = next(model.parameters()).device  # pruning continues where the model was
    top1 = train.evaluate_on(model, spec, data, pre, batch_size=batch_size, device=device).top1
    model.to(home, memory_format=torch.contiguous_format)
    return top1


def _gradients(data: ImageData, pre: Dict[str, Any], spec, batches: int, seed: int) -> GradientBatches:
    """Shuffled, unaugmented training batches for the Taylor criterion."""
    b = Batches(data.train_images, data.train_labels, TAYLOR_BATCH_SIZE,
                BatchTransform(pre["mean"], pre["std"], pre["input_size"]), "cpu",
                train=True, augment=False, seed=seed)
    return GradientBatches(b, max_batches=batches, output_key=spec.output_key,
                           description=f"{batches} batches of {TAYLOR_BATCH_SIZE} {data.name} "
                                       "training images (shuffled, no augmentation)")


@dataclass
class PruneMethods:
    """What the method flags add to one `tp-vgg prune` run (structured)."""

    args: argparse.Namespace
    steps: int = 1
    epochs_per_step: int = 0
    target: Optional[targets.Target] = None
    plan: Optional[targets.TargetPlan] = None
    schedule: Optional[iterative.Schedule] = None
    data: Optional[ImageData] = None
    preprocessing: Dict[str, Any] = field(default_factory=dict)
    gradients: Optional[GradientBatches] = None
    train_cfg: Optional[train.TrainConfig] = None
    teacher: Optional[train.Teacher] = None  # --distill: the model before the first step
    bn_batches: int = 0                       # --bn-recalibrate: after every step

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PruneMethods":
        check_prune_args(args)
        target = None
        if _given(args, "target_speedup") or _given(args, "target_macs"):
            target = targets.Target(speedup=getattr(args, "target_speedup", None),
                                    macs=getattr(args, "target_macs", None))
            target.validate()
        return cls(args, steps=getattr(args, "iterative_steps", None) or 1,
                   epochs_per_step=getattr(args, "finetune_epochs_per_step", None) or 0,
                   target=target)

    def config(self, cfg: pruning.PruneConfig) -> pruning.PruneConfig:
        """``cfg`` with the iterative steps, and a placeholder ratio while a target decides."""
        return dataclasses.replace(cfg, iterative_steps=self.steps,
                                   ratio=0.0 if self.target is not None else cfg.ratio)

    @property
    def needs_data(self) -> bool:
        return getattr(self.args, "importance", None) == "taylor" or self.epochs_per_step > 0

    def start(self, loaded: Loaded, ft: Optional[train_cmds.PruneFinetune]) -> None:
        """Load the data (or take fine-tuning's) when a criterion or the schedule needs them."""
        if not self.needs_data:
            return
        args = self.args
        if not getattr(args, "data", None):
            why = ("--importance taylor needs data: it runs a few batches forward and backward "
                   "for the gradients" if getattr(args, "importance", None) == "taylor" else
                   "--finetune-epochs-per-step fine-tunes on data")
            raise UserError(f"{why}; pass --data D ({', '.join(train_cmds.DATASETS.names())})")
        if ft is not None:
            self.data, self.preprocessing = ft.data, ft.preprocessing
            self.train_cfg, self.teacher, self.bn_batches = ft.cfg, ft.teacher, ft.bn_batches
        else:
            if getattr(args, "threads", None):
                torch.set_num_threads(args.threads)
            self.data = load_data(train_cmds.data_config(args))
            self.preprocessing = train.resolve_preprocessing(self.data, loaded.spec,
                                                             loaded.preprocessing)
            self.train_cfg = train_cmds.train_config(args, finetune=True)
        if getattr(args, "importance", None) == "taylor":
            self.gradients = _gradients(self.data, self.preprocessing, loaded.spec,
                                        args.taylor_batches or DEFAULT_TAYLOR_BATCHES,
                                        getattr(args, "seed", 0) or 0)

    def solve(self, model, spec, cfg: pruning.PruneConfig, before: counting.Counts) -> pruning.PruneConfig:
        if self.target is None:
            return cfg
        cfg, self.plan = targets.solve(model, spec, cfg, self.target, gradients=self.gradients)
        return cfg

    def prune_kwargs(self, spec) -> Dict[str, Any]:
        kw: Dict[str, Any] = {"gradients": self.gradients}
        if self.steps > 1:
            finetune = evaluate = None
            if self.epochs_per_step > 0:
                data, pre, tcfg = self.data, self.preprocessing, self.train_cfg
                device, teacher, bn = tcfg.device, self.teacher, self.bn_batches

                def evaluate(model):  # after re-estimating BN statistics (--bn-recalibrate)
                    if bn:
                        home = next(model.parameters()).device
                        train.recalibrate_on(model, spec, data, pre, bn, tcfg.batch_size, device,
                                             tcfg.seed, tcfg.channels_last)
                        model.to(home, memory_format=torch.contiguous_format)
                    return _evaluate(model, spec, data, pre, device)

                def finetune(model, epochs):
                    home = next(model.parameters()).device
                    res = train.fit(model, spec, data, dataclasses.replace(tcfg, epochs=epochs),
                                    None, preprocessing=pre, command="finetune-step",
                                    teacher=teacher)  # the original model throughout
                    model.to(home, memory_format=torch.contiguous_format)
                    return res.final.top1 if res.final else None
            self.schedule = iterative.Schedule(spec, self.steps, self.epochs_per_step,
                                               finetune=finetune, evaluate=evaluate)
            kw["between_steps"] = self.schedule
        return kw

    def finish(self, model, accuracy: Optional[Dict[str, float]]) -> None:
        if self.schedule is not None:
            acc = accuracy or {}
            self.schedule.finish(model, acc.get("pruned"),
                                 getattr(self.args, "finetune_epochs", None) or 0,
                                 acc.get("finetuned"))

    def report(self, after: counting.Counts, result: pruning.PruneResult) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if self.plan is not None:
            d = self.plan.to_dict()
            d.update(reached_macs=after.macs,
                     reached_speedup=self.plan.macs_before / max(after.macs, 1),
                     how=targets.describe(self.plan, after.macs))
            out["target"] = d
        if self.schedule is not None:
            out["schedule"] = self.schedule.to_dict()
        if result.notes:
            out["notes"] = list(result.notes)
        return out

    def print_summary(self, after: counting.Counts, result: pruning.PruneResult) -> None:
        if self.plan is not None:
            print(targets.describe(self.plan, after.macs))
        if self.schedule is not None:
            for r in self.schedule.records:
                acc = "".join(f", top-1 {k} {100 * v:.2f}%" for k, v in
                              (("pruned", r.top1_pruned), ("fine-tuned", r.top1_finetuned))
                              if v is not None)
                print(f"step {r.step}/{self.steps}: {human(r.macs)} MACs, {human(r.params)} params"
                      f"{acc}" + (f" ({r.finetune_epochs} epochs)" if r.finetune_epochs else ""))
        for note in result.notes:
            print(f"note: {note}")


# --------------------------------------------------------------------------------------------
# `tp-vgg prune --unstructured`.

def prune_unstructured(args: argparse.Namespace, loaded: Loaded,
                       ft: Optional[train_cmds.PruneFinetune]) -> int:
    """Magnitude masks (or lottery tickets), made permanent in DIR/pruned.pt; report.json with
    per-layer sparsity, dense MACs (unchanged) and nonzero-weight MACs."""
    model, spec = loaded.model, loaded.spec
    before = counting.count(model, spec)
    global_ranking = bool(getattr(args, "global_pruning", False))
    keep = unstructured.output_layers(model, spec, getattr(args, "output_layer", None))
    config: Dict[str, Any] = {"unstructured": True, "ratio": args.ratio, "global": global_ranking,
                              "method": "torch.nn.utils.prune "
                                        + ("global_unstructured" if global_ranking else "l1_unstructured"),
                              "not_pruned": keep}
    accuracy: Dict[str, Any] = {}
    rounds = None
    if _given(args, "lottery_rounds"):
        assert ft is not None  # check_prune_args: --lottery-rounds needs --finetune-epochs
        lcfg = unstructured.LotteryConfig(sparsity=args.ratio, rounds=args.lottery_rounds,
                                          epochs=args.finetune_epochs,
                                          rewind_epoch=args.rewind_epoch or 0,
                                          global_ranking=global_ranking, exclude=keep)
        lcfg.validate()
        config["lottery"] = unstructured.config_dict(lcfg)

        def run(m, epochs, after_step, on_epoch_end):
            res = train.fit(m, spec, ft.data, dataclasses.replace(ft.cfg, epochs=epochs), None,
                            preprocessing=ft.preprocessing, command="lottery",
                            after_step=after_step, on_epoch_end=on_epoch_end)
            m.to("cpu", memory_format=torch.contiguous_format)
            return res.final.top1 if res.final else None

        _, rounds = unstructured.lottery(model, lcfg, run)
        model.eval()
        accuracy = {"before": ft.before, "finetuned": rounds[-1]["top1"]}
    else:
        unstructured.magnitude_prune(model, args.ratio, global_ranking, keep)
        if ft is not None:  # fit() keeps the zeros: the meta says "unstructured"
            accuracy = ft.finish(model, spec, loaded.history,
                                 dict(loaded.meta, unstructured=config))
    after = counting.count(model, spec)
    sparse = unstructured.sparsity_report(model, after)
    extra: Dict[str, Any] = {"unstructured": sparse}
    if accuracy:
        extra["accuracy"] = accuracy
    if rounds is not None:
        extra["lottery_rounds"] = rounds
    rep = report.prune_report(spec, config, before, after, keep, 0, **extra)
    info = dict(config, sparsity=sparse["sparsity"], macs_nonzero=sparse["macs_nonzero"])
    meta = dict(loaded.meta, importance="magnitude (unstructured)", ratio=args.ratio,
                config=config, unstructured=info, macs_before=before.macs, macs_after=after.macs,
                params_before=before.params, params_after=after.params,
                **({"accuracy": accuracy} if accuracy else {}))
    ensure_dir(args.out)
    # both files or neither, as `tp-vgg prune`: report.json first, then pruned.pt renamed in
    with atomic_path(os.path.join(args.out, "pruned.pt")) as ckpt_tmp:
        checkpoint.save(ckpt_tmp, model, spec, history=loaded.history,
                        preprocessing=ft.preprocessing if ft else loaded.preprocessing, meta=meta,
                        atomic=False)
        write_json(os.path.join(args.out, "report.json"), rep)
    print(format_sparsity_table(sparse))
    if rounds is not None:
        for r in rounds:
            top = f"top-1 {100 * r['top1']:.2f}%" if r["top1"] is not None else ""
            print(f"lottery round {r['round']}: {100 * r['sparsity']:.1f}% zero, "
                  f"{r['epochs']} epochs, {top}")
    if accuracy:
        print("top-1: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in accuracy.items()
                                     if v is not None))
    print(unstructured.describe(sparse))
    print(f"wrote {os.path.join(args.out, 'pruned.pt')} and report.json")
    return 0


def format_sparsity_table(sparse: Dict[str, Any]) -> str:
    rows = [[l["name"], l["type"], str(l["weights"]), f"{100 * l['sparsity']:.1f}%",
             human(l["macs_dense"]), human(l["macs_nonzero"])] for l in sparse["layers"]]
    rows.append(["total", "", str(sparse["weights"]), f"{100 * sparse['sparsity']:.1f}%",
                 human(sparse["macs_dense"]), human(sparse["macs_nonzero"])])
    return report._table(["layer", "type", "weights", "zero", "dense MACs", "nonzero MACs"], rows)


# --------------------------------------------------------------------------------------------
# `tp-vgg sensitivity`.

def _subset(data: ImageData, n: Optional[int], seed: int) -> ImageData:
    if not n or n >= len(data.test_labels):
        return data
    idx = torch.randperm(len(data.test_labels), generator=torch.Generator().manual_seed(seed))[:n]
    idx = idx.sort().values
    return dataclasses.replace(data, test_images=data.test_images[idx],
                               test_labels=data.test_labels[idx])


def cmd_sensitivity(args: argparse.Namespace) -> int:
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out!r} is a file; give a folder")
    if args.taylor_batches and args.importance != "taylor":
        raise UserError("--taylor-batches applies to --importance taylor")
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args)
    model, spec = loaded.model, loaded.spec
    data = load_data(train_cmds.data_config(args))
    pre = train.resolve_preprocessing(data, spec, loaded.preprocessing)
    test = _subset(data, args.eval_images, args.seed)
    gradients = (_gradients(data, pre, spec, args.taylor_batches or DEFAULT_TAYLOR_BATCHES, args.seed)
                 if args.importance == "taylor" else None)

    def evaluate(m):
        return _evaluate(m, spec, test, pre, args.device, args.batch_size)

    res = sensitivity.analyze(model, spec, evaluate, ratios=args.ratios,
                              importance=args.importance, layers=args.layers, seed=args.seed,
                              output_layer=args.output_layer, gradients=gradients)
    ratios = sensitivity.recommend(res, args.budget)
    trial = _copy_pruned(model, spec, ratios, args)
    after = counting.count(trial, spec) if trial is not None else counting.count(model, spec)
    source = _source_flags(args)
    command = (f"tp-vgg prune {source} --ratio 0 --layer-ratios "
               f"{shlex.quote(json.dumps(ratios))} --out DIR")
    rep = {
        "units": report.MAC_NOTE, "model": spec.to_dict(), "data": data.name,
        "test_images": len(test.test_labels), "importance": args.importance,
        "budget_points": args.budget, "baseline_top1": res.baseline_top1,
        "layer_ratios": ratios,
        "predicted": {"macs_before": res.baseline_macs, "macs_after": after.macs,
                      "macs_reduction": res.baseline_macs / max(after.macs, 1),
                      "note": "layers pruned together may cost more than each alone; fine-tune"},
        "command": command, "rows": res.rows, "skipped": res.skipped,
    }
    ensure_dir(out)
    sensitivity.write_csv(os.path.join(out, "sensitivity.csv"), res)
    sensitivity.plot(os.path.join(out, "sensitivity.png"), res, args.budget,
                     f"{spec.name}: sensitivity to pruning ({args.importance}, {data.name})")
    write_text(os.path.join(out, "layer_ratios.json"), json.dumps(ratios, indent=2) + "\n")
    write_json(os.path.join(out, "report.json"), rep)
    print(format_sensitivity_table(res, ratios))
    print(f"budget {args.budget:g} top-1 points per layer: {len(ratios)} of {len(res.layers)} layers "
          f"pruned, {human(res.baseline_macs)} -> {human(after.macs)} MACs "
          f"({res.baseline_macs / max(after.macs, 1):.2f}x fewer) before fine-tuning")
    print(f"next: {command}")
    print(f"wrote {os.path.join(out, 'sensitivity.csv')}, sensitivity.png, layer_ratios.json, "
          "report.json")
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


def _copy_pruned(model, spec, ratios: Dict[str, float], args) -> Optional[torch.nn.Module]:
    if not ratios:
        return None
    import copy

    m = copy.deepcopy(model)
    pruning.prune(m, spec, pruning.PruneConfig(ratio=0.0, layer_ratios=ratios,
                                               output_layer=args.output_layer))
    return m


def format_sensitivity_table(res: sensitivity.Sensitivity, ratios: Dict[str, float]) -> str:
    header = ["layer"] + [f"{r:g}" for r in res.ratios] + ["chosen"]
    rows = []
    for layer in res.layers:
        by_ratio = {r["ratio"]: r for r in res.curve(layer)}
        rows.append([layer] + [f"{100 * by_ratio[r]['top1']:.1f}" if r in by_ratio else "-"
                               for r in res.ratios] + [f"{ratios.get(layer, 0):g}"])
    text = report._table(header, rows)
    return (f"top-1 (%) with one layer pruned at each ratio (unpruned "
            f"{100 * res.baseline_top1:.2f}%):\n" + text)
