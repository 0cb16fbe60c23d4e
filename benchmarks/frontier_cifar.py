"""Accuracy at equal cost on CIFAR-10 (JPEG set), CPU: uniform L1 pruning against the width
search (``--search N``) at the same MAC budget, after the same fine-tuning, over seeds.

Base: ``cifar_vgg11_bn --width 0.25`` trained ``--base-epochs`` epochs with tp-vgg's training
recipe (or ``--base CKPT``). For each budget (``--speedups``, MACs before / after) and seed:

* ``uniform``  ``tp-vgg prune --checkpoint base --target-speedup X`` (L1, every layer the same
               ratio), BN statistics re-estimated on 50 batches, fine-tuned ``--epochs``;
* ``search``   the same with ``--search N`` (``--search-finalists``, ``--search-epochs``,
               5,000 held-out training images): the chosen widths, then the same recovery.

Both rows start from the pruned, re-estimated weights and fine-tune the same epochs (the
search's short fine-tunes of its finalists are not carried over; their cost is in
``search_s``). Each run is the library calls ``tp-vgg prune`` makes (``tp_vgg.jobs.stages`` and
``tp_vgg.search.widths``), on data loaded once. After the runs, each budget's pruned models are
timed interleaved (median ms, batch 64, 1 thread, BN folded, channels-last).

``--correlation K`` also fine-tunes K search candidates (the best by score and a spread below)
for ``--search-epochs`` epochs each, to measure how well the adaptive-BN score ranks them.

    python benchmarks/frontier_cifar.py --data-dir data/cifar10-jpeg --threads 2

Writes benchmarks/results/frontier_cifar.json and frontier_cifar.md (table) and
frontier_cifar.png (top-1 against MACs and against measured ms). A rerun skips finished runs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
BN_BATCHES = 50


def command(a, base: str, speedup: float, row: str, seed: int) -> str:
    cmd = (f"tp-vgg prune --checkpoint {base} --target-speedup {speedup:g} --data imagefolder "
           f"--data-dir {a.data_dir} --finetune-epochs {a.epochs} --seed {seed} --threads "
           f"{a.threads} --device cpu")
    cmd += ROW_FLAGS.get(row, "")
    if row == "search":
        cmd += (f" --search {a.search} --search-finalists {a.finalists} --search-epochs "
                f"{a.search_epochs} --search-bn-batches {a.search_bn} --search-heldout "
                f"{a.heldout}")
    return cmd + f" --out runs/frontier/{speedup:g}x_{row}_s{seed}"


# what each row adds to the tp-vgg prune command it stands for
ROW_FLAGS = {"fpgm": " --importance fpgm", "scratch": " --scratch",
             "global-taylor-raw": " --global --importance taylor-raw",
             "global-group-norm": " --global --importance group-norm",
             "depgraph": " --recipe depgraph", "slimming": " --recipe slimming"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data/cifar10-jpeg")
    ap.add_argument("--model", default="cifar_vgg11_bn", help="the base's model (a zoo name)")
    ap.add_argument("--width", type=float, default=0.25, help="the base's width multiplier")
    ap.add_argument("--label-smoothing", type=float, default=0.0,
                    help="the base's training recipe, when this script trains it")
    ap.add_argument("--base", default=None)
    ap.add_argument("--base-epochs", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs per run")
    ap.add_argument("--speedups", default="4,2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rows", default="uniform,search")
    ap.add_argument("--search", type=int, default=200)
    ap.add_argument("--finalists", type=int, default=3)
    ap.add_argument("--search-epochs", type=int, default=1)
    ap.add_argument("--search-bn", type=int, default=8, help="the search's BN batches")
    ap.add_argument("--heldout", type=int, default=5000)
    ap.add_argument("--correlation", type=int, default=0)
    ap.add_argument("--sparse-epochs", type=int, default=10, help="the recipes' sparse learning")
    ap.add_argument("--time-only", action="store_true",
                    help="no runs: time every finished seed-0 row again (a quiet machine) and "
                         "rewrite the table and plot")
    ap.add_argument("--repeats", type=int, default=15, help="timing repeats per model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="training, evaluation and timing device")
    ap.add_argument("--amp", default="auto", help="fine-tuning's autocast (CUDA only)")
    ap.add_argument("--work", default=None, help="default runs/frontier[_MODEL_wWIDTH]")
    ap.add_argument("--results", default=RESULTS, help="where the JSON, table and plots go")
    ap.add_argument("--train-images", type=int, default=None, help="smoke runs: a sample")
    ap.add_argument("--tag", default=None,
                    help="result files' suffix; default '' for cifar_vgg11_bn w0.25 (the first "
                         "base), else _MODEL_wWIDTH: each base has its own files")
    a = ap.parse_args()
    own = f"_{a.model}_w{a.width:g}" if (a.model, a.width) != ("cifar_vgg11_bn", 0.25) else ""
    a.tag = own if a.tag is None else a.tag
    a.work = a.work or f"runs/frontier{own}"
    torch.set_num_threads(a.threads)

    from tp_vgg import count
    from tp_vgg.checkpoint import store as checkpoint
    from tp_vgg.data.datasets import DataConfig, load_data
    from tp_vgg.files import write_json, write_text
    from tp_vgg.latency import timing
    from tp_vgg.models.zoo import ModelSpec, build_model
    from tp_vgg.pruning import graph as pruning
    from tp_vgg.train import evaluation
    from tp_vgg.train import loop as train
    from tp_vgg.train.config import finetuning

    os.makedirs(a.results, exist_ok=True)
    os.makedirs(a.work, exist_ok=True)
    out_json = os.path.join(a.results, f"frontier_cifar{a.tag}.json")
    done = json.load(open(out_json)) if os.path.exists(out_json) else {}
    runs = done.setdefault("runs", [])
    log = lambda s: print("    " + s, flush=True)  # noqa: E731

    t0 = time.time()
    data_cfg = DataConfig("imagefolder", data_dir=a.data_dir)
    data = load_data(data_cfg)
    if a.train_images:
        idx = torch.randperm(len(data.train_labels),
                             generator=torch.Generator().manual_seed(0))[:a.train_images]
        data = dataclasses.replace(data, train_images=data.train_images[idx],
                                   train_labels=data.train_labels[idx])
    print(f"data loaded in {time.time() - t0:.0f}s", flush=True)

    base_path = a.base
    if base_path is None:
        base_dir = os.path.join(a.work, "base")
        base_path = os.path.join(base_dir, "last.pt")
        if not os.path.exists(base_path):
            t = time.time()
            spec = ModelSpec(a.model, width=a.width, num_classes=data.num_classes)
            train.seed_everything(0)
            cfg = train.TrainConfig(epochs=a.base_epochs, device=a.device, progress="plain",
                                    seed=0, label_smoothing=a.label_smoothing)
            train.fit(build_model(spec), spec, data, cfg, base_dir, data_cfg=data_cfg, log=log)
            done["base_train_s"] = time.time() - t
    ck = checkpoint.load_checkpoint(base_path)
    spec = ck.spec
    pre = train.resolve_preprocessing(data, spec, ck.preprocessing)
    base = ck.build()
    base_counts = count(base, spec)
    if "unpruned" not in done:
        done["unpruned"] = {"top1": evaluation.evaluate_on(base, spec, data, pre,
                                                           device=a.device).top1,
                            "macs": base_counts.macs, "params": base_counts.params,
                            "base": base_path, "base_epochs": ck.meta.get("epoch")}
    ft = finetuning(epochs=a.epochs, device=a.device, progress="none", amp=a.amp)
    done["setup" if not a.time_only else "timing_setup"] = {
        "data": dataclasses.asdict(data_cfg), "train_images": len(data.train_labels),
        "test_images": len(data.test_labels), "finetune": ft.resolved().to_dict(),
        "bn_batches": BN_BATCHES, "search": {"candidates": a.search, "finalists": a.finalists,
                                             "finalist_epochs": a.search_epochs,
                                             "bn_batches": a.search_bn,
                                             "heldout": a.heldout},
        "threads": a.threads, "torch": torch.__version__, "machine": platform.machine(),
        "processor": platform.processor(), "cpus": os.cpu_count(), "argv": sys.argv,
        "date": time.strftime("%Y-%m-%d")}
    write_json(out_json, done)
    models = {}
    ctx = Context(a, ck, spec, data, pre, ft, log)

    for speedup in [] if a.time_only else [float(s) for s in a.speedups.split(",")]:
        for seed in [int(s) for s in a.seeds.split(",")]:
            for row in a.rows.split(","):
                key = (speedup, row, seed)
                if row not in ROWS:
                    raise SystemExit(f"--rows: unknown row {row!r}; accepted: {', '.join(ROWS)}")
                rec = {"speedup": speedup, "row": row, "seed": seed,
                       "command": command(a, base_path, speedup, row, seed)}
                prior = next((r for r in runs if (r["speedup"], r["row"], r["seed"]) == key),
                             None)
                t = time.time()
                model, cfg, grads = ROWS[row](ctx, speedup, seed, rec, prior)
                rec.setdefault("setup_s", time.time() - t)
                result = pruning.prune(model, spec, cfg, gradients=grads)
                models[(speedup, row, seed)] = copy.deepcopy(model)
                if prior is not None:
                    continue
                c = count(model, spec)
                rec.update(macs=c.macs, params=c.params, speedup_reached=base_counts.macs / c.macs,
                           widths=pruning.out_channels(model), history_len=len(result.history))
                rec["top1_pruned"] = evaluation.evaluate_on(model, spec, data, pre,
                                                            device=a.device).top1
                evaluation.recalibrate_on(model, spec, data, pre, BN_BATCHES, ft.batch_size,
                                          a.device, seed)
                rec["top1_recalibrated"] = evaluation.evaluate_on(model, spec, data, pre,
                                                                  device=a.device).top1
                t = time.time()
                history = ck.history + result.history
                if row == "scratch":  # the control: the pruned architecture from random init
                    # as many epochs as the base had, plus the fine-tuning's; in its own run
                    # directory, so a stopped session continues it exactly (train.resume)
                    base_epochs = done["unpruned"].get("base_epochs") or a.base_epochs
                    scfg = train.TrainConfig(epochs=base_epochs + a.epochs, device=a.device,
                                             progress="none", seed=seed,
                                             label_smoothing=(ck.meta.get("train") or {}).get(
                                                 "label_smoothing", 0.0))
                    res = scratch(ck, spec, history, data, data_cfg, pre, scfg, log, os.path.join(
                        a.work, f"scratch_{speedup:g}x_s{seed}"), rec)
                    rec["epochs"] = scfg.epochs
                else:
                    res = train.fit(model, spec, data, dataclasses.replace(ft, seed=seed), None,
                                    history=history, preprocessing=pre, command="finetune",
                                    log=log)
                rec["finetune_s"] = time.time() - t
                rec["top1"] = res.final.top1
                print(f"{speedup:g}x {row} seed {seed}: {c.macs} MACs, top-1 after BN "
                      f"{100 * rec['top1_recalibrated']:.2f}%, fine-tuned {100 * rec['top1']:.2f}%",
                      flush=True)
                runs.append(rec)
                write_json(out_json, done)

    # measured latency, interleaved per budget: every finished seed-0 row of the budget, rebuilt
    # from its recorded widths (timing does not depend on the weights)
    lat = done.setdefault("latency", {})
    mcfg = timing.LatencyConfig(batch_sizes=(64,), device=a.device, channels_last=True,
                                fuse_bn=True, threads=1, warmup=3, repeats=a.repeats)
    for speedup in sorted({r["speedup"] for r in runs}, reverse=True):
        group = {r["row"]: architecture(ck, spec, r["widths"]) for r in runs
                 if r["speedup"] == speedup and r["seed"] == 0}
        if len(group) < 2:
            continue
        group["unpruned"] = ck.build()
        res = timing.measure(group, spec, mcfg)[64]
        lat[f"{speedup:g}"] = {row: r.median_ms for row, r in res.items()}
        done["latency_setup"] = {"batch": 64, "threads": 1, "repeats": a.repeats,
                                 "date": time.strftime("%Y-%m-%d %H:%M"),
                                 "load_before": os.getloadavg()[0]}
    write_json(out_json, done)
    write_text(os.path.join(a.results, f"frontier_cifar{a.tag}.md"), table(done))
    plot(done, os.path.join(a.results, f"frontier_cifar{a.tag}.png"), spec)
    plot_widths(done, os.path.join(a.results, f"frontier_cifar{a.tag}_widths.png"), spec)
    print(table(done))
    return 0


def scratch(ck, spec, history, data, data_cfg, pre, cfg, log, run_dir, rec):
    """Train the pruned architecture from random init in ``run_dir``; a ``last.pt`` there (a
    session that stopped) is continued exactly instead of started again (``rec`` says from which
    epoch). The final test top-1 is the last epoch's, also when the run had already finished."""
    from tp_vgg.pruning import graph as pruning
    from tp_vgg.train import loop as train

    last = os.path.join(run_dir, "last.pt")
    if os.path.exists(last):
        point = train.ResumePoint.read(last)
        def recipe(c):
            return {k: v for k, v in c.resolved().to_dict().items()
                    if k not in train.TrainConfig.RUNTIME}
        if recipe(point.config) != recipe(cfg) or point.checkpoint.history != history:
            raise SystemExit(f"{run_dir}: a scratch run of another recipe or architecture; "
                             "remove it to start again")
        rec["resumed_after_epoch"] = int(point.checkpoint.train_state["epoch"])
        res = train.resume(point, data, run_dir, runtime={"progress": cfg.progress}, log=log)
    else:
        train.seed_everything(cfg.seed)
        model = pruning.replay(ck.build_unpruned(), spec, history)
        res = train.fit(model, spec, data, cfg, run_dir, data_cfg=data_cfg, history=history,
                        preprocessing=pre, command="scratch", log=log)
    if res.final is None:  # finished before: its last epoch's figures
        res = dataclasses.replace(res, final=types.SimpleNamespace(
            top1=res.records[-1]["test_top1"]))
    return res


@dataclasses.dataclass
class Context:
    a: argparse.Namespace
    ck: object
    spec: object
    data: object
    pre: object
    ft: object
    log: object
    shared: dict = dataclasses.field(default_factory=dict)


def _solved(ctx, speedup: float, seed: int, grads=None, model=None, **prune):
    """The base model (or ``model``) and the config that reaches ``speedup`` fewer MACs with
    ``prune``."""
    from tp_vgg.pruning import graph as pruning
    from tp_vgg.pruning import targets

    model = model if model is not None else ctx.ck.build()
    cfg, _ = targets.solve(model, ctx.spec, pruning.PruneConfig(seed=seed, **prune),
                           targets.Target(speedup=speedup), gradients=grads)
    return model, cfg


def row_uniform(ctx, speedup, seed, rec, prior):
    """uniform L1: every layer the same ratio."""
    return (*_solved(ctx, speedup, seed, importance="l1"), None)


def row_fpgm(ctx, speedup, seed, rec, prior):
    """uniform FPGM (geometric median)."""
    return (*_solved(ctx, speedup, seed, importance="fpgm"), None)


def row_scratch(ctx, speedup, seed, rec, prior):
    """the uniform architecture trained from random init, base + fine-tuning epochs."""
    return row_uniform(ctx, speedup, seed, rec, prior)


def row_search(ctx, speedup, seed, rec, prior):
    """--search N under the uniform plan's MAC budget."""
    from tp_vgg.pruning import targets
    from tp_vgg.search import widths

    a = ctx.a
    model, cfg = _solved(ctx, speedup, seed, importance="l1")
    goal = targets.Target(speedup=speedup).goal(count_macs(ctx, model))
    space, budget = widths.mac_budget(model, ctx.spec, cfg, goal)
    if prior is not None:
        return model, space.config(cfg, prior["search"]["chosen_widths"]), None
    t = time.time()
    scfg = widths.SearchConfig(candidates=a.search, finalists=a.finalists,
                               finalist_epochs=a.search_epochs, bn_batches=a.search_bn,
                               heldout=a.heldout, seed=seed)
    s = widths.Search(model, ctx.spec, cfg, space, budget, scfg, ctx.data, ctx.pre,
                      dataclasses.replace(ctx.ft, seed=seed), device=a.device, log=ctx.log)
    cfg, srep = s.run()
    rec["search_s"] = time.time() - t
    rec["search"] = {k: v for k, v in srep.items() if k != "rows"}
    rec["search_rows"] = srep["rows"]
    if a.correlation and seed == 0:
        rec["correlation"] = correlation(s, srep, a.correlation, widths)
    return model, cfg, None


def _gradients(ctx, seed):
    from tp_vgg.pruning.criteria import training_gradients
    return training_gradients(ctx.data, ctx.pre, ctx.spec, seed=seed)


def _global(importance):
    def row(ctx, speedup, seed, rec, prior):
        grads = _gradients(ctx, seed) if needs_gradients(importance) else None
        model, cfg = _solved(ctx, speedup, seed, grads, importance=importance,
                             global_pruning=True, max_layer_ratio=GLOBAL_MAX_RATIO)
        return model, cfg, grads
    row.__doc__ = f"--global --importance {importance} --max-layer-ratio {GLOBAL_MAX_RATIO}"
    return row


def _recipe(name):
    def row(ctx, speedup, seed, rec, prior):
        from tp_vgg.jobs.stages import sparse_learning
        from tp_vgg.pruning import recipes
        from tp_vgg.pruning.graph import PruneConfig
        from tp_vgg.train import loop as train

        from tp_vgg.files import atomic_path, write_json

        stage = recipes.SparseLearning(name, epochs=ctx.a.sparse_epochs)
        model = ctx.ck.build()
        # the sparse-learned weights depend on the seed and the sparse epochs, not the budget:
        # learned once per seed, reused by every budget (the report says so)
        path = os.path.join(ctx.a.work, f"{name}_s{seed}.pt")
        meta = path[:-3] + ".json"
        learned = json.load(open(meta)) if os.path.exists(meta) else None
        if learned is not None and learned.get("epochs") != stage.epochs:
            learned = None
        if prior is None and learned is None:
            t = time.time()
            train.seed_everything(seed)
            report = sparse_learning(
                model, ctx.spec, ctx.data, ctx.pre, stage,
                dataclasses.replace(ctx.ft, seed=seed), ctx.ck.history, log=ctx.log)
            rec["sparse_learning"] = report
            with atomic_path(path) as tmp:
                torch.save(model.state_dict(), tmp)
            write_json(meta, {"epochs": stage.epochs, "report": report,
                              "seconds": time.time() - t})
        else:  # the sparse-learned weights of a finished run (this seed, these epochs)
            model.load_state_dict(torch.load(path, weights_only=True))
            if prior is None:
                rec["sparse_learning"] = dict(learned["report"], reused=True)
                rec["setup_s"] = learned["seconds"]  # what the method costs a user: learning
        cfg = stage.prune_config(PruneConfig(seed=seed), False)
        return (*_solved(ctx, speedup, seed, None, model, importance=cfg.importance,
                         global_pruning=True, max_layer_ratio=cfg.max_layer_ratio), None)
    row.__doc__ = f"--recipe {name} --sparse-epochs E"
    return row


def _latency(imp):
    def row(ctx, speedup, seed, rec, prior):
        return row_latency(ctx, speedup, seed, rec, prior, imp)
    row.__doc__ = (f"--target-latency at the measured latency of uniform --ratio 0.5, --importance "
                   f"{imp}, with the guard against uniform")
    return row


def row_latency(ctx, speedup, seed, rec, prior, imp):
    """--target-latency at the measured latency of uniform --ratio 0.5 (the median of 3
    measurements), ranked by ``imp``, with the guard against uniform."""
    from tp_vgg.latency import budget as lt
    from tp_vgg.pruning import graph as pruning
    from tp_vgg.search import widths

    a = ctx.a
    grads = _gradients(ctx, seed) if needs_gradients(imp) else None
    lb = lt.LatencyBudget(ms=1.0, batch_size=64, threads=1, channels_last=True, fuse_bn=True)
    mcfg = lb.config(ctx.spec, a.device)
    model = ctx.ck.build()
    cfg = pruning.PruneConfig(seed=seed, importance=imp)
    if prior is not None:  # the kept widths of the finished run
        space, _ = widths.mac_budget(model, ctx.spec, dataclasses.replace(cfg, ratio=0.5), None,
                                     grads)
        return model, space.config(cfg, prior["latency_guard"]["widths"]), grads
    if "latency_budget_ms" not in ctx.shared:  # one budget for every latency row of the run
        ref = ctx.ck.build()
        pruning.prune(ref, ctx.spec, pruning.PruneConfig(ratio=0.5, importance="l1"))
        ctx.shared["latency_budget_ms"] = statistics.median(
            lt.measured_ms(ref, ctx.spec, mcfg) for _ in range(3))
    ms = ctx.shared["latency_budget_ms"]
    lb = dataclasses.replace(lb, ms=ms)
    rec["latency_budget_ms"] = ms
    rec["command"] = rec["command"].replace(
        f"--target-speedup {speedup:g}", f"--target-latency {ms:.4f} --latency-batch 64 "
        f"--importance {imp}").replace(f"--threads {a.threads}", "--threads 1")
    solved, plan = lt.solve(model, ctx.spec, cfg, lb, gradients=grads, device=a.device,
                            log=ctx.log)
    kept = {n: after for n, (_, after) in plan.channels.items()}
    if plan.round_to and plan.round_to > 1:  # uniform in the same fast-width steps, as the job
        cfg = dataclasses.replace(cfg, round_to=plan.round_to)
    chosen, guard = widths.guard_latency_plan(model, ctx.spec, cfg, lb, kept, ctx.data, ctx.pre,
                                              dataclasses.replace(ctx.ft, seed=seed), a.device,
                                              grads, seed, log=ctx.log)
    rec["latency_guard"] = guard
    rec["latency_plan"] = {"measured_ms": plan.measured_ms, "predicted_ms": plan.predicted_ms,
                           "rounds": plan.rounds}
    return model, chosen, grads


def architecture(ck, spec, kept: dict):
    """The base model pruned to ``kept`` channels per layer (the weights are the base's)."""
    from tp_vgg.pruning import graph as pruning
    from tp_vgg.search import widths

    model = ck.build()
    space, _ = widths.mac_budget(model, spec, pruning.PruneConfig(ratio=0.5), None)
    pruning.prune(model, spec, space.config(pruning.PruneConfig(), {r: kept[r]
                                                                   for r in space.roots}))
    assert all(pruning.out_channels(model)[n] == k for n, k in kept.items()), kept
    return model


def count_macs(ctx, model) -> int:
    from tp_vgg import count
    return count(model, ctx.spec).macs


GLOBAL_MAX_RATIO = 0.9  # --global's default


def needs_gradients(importance):
    from tp_vgg.pruning.criteria import needs_gradients as needs
    return needs(importance)


ROWS = {"uniform": row_uniform, "fpgm": row_fpgm, "search": row_search, "scratch": row_scratch,
        "global-taylor-raw": _global("taylor-raw"), "global-group-norm": _global("group-norm"),
        "depgraph": _recipe("depgraph"), "slimming": _recipe("slimming"),
        **{f"target-latency-{imp}": _latency(imp) for imp in ("l1", "group-norm", "taylor-raw")}}


def correlation(s, srep, k: int, widths) -> dict:
    """Fine-tune ``k`` candidates (spread over the score ranking) for the finalists' epochs and
    correlate their adaptive-BN score with the fine-tuned held-out top-1."""
    rows = sorted(srep["rows"], key=lambda r: -r["score"])
    pick = [rows[round(i * (len(rows) - 1) / max(k - 1, 1))] for i in range(min(k, len(rows)))]
    scores, tuned = [], []
    for r in pick:
        m = s._adapt(s._prune(r["widths"]))
        cfg = dataclasses.replace(s.train_cfg, epochs=s.scfg.finalist_epochs, progress="none")
        from tp_vgg.train import loop as train
        res = train.fit(m, s.spec, s.data, cfg, None, preprocessing=s.pre, log=lambda x: None)
        scores.append(r["score"])
        tuned.append(res.final.top1)
    return {"candidates": len(pick), "scores": scores, "finetuned": tuned,
            "spearman": widths.spearman(scores, tuned)}


def table(done: dict) -> str:
    base = done["unpruned"]
    lines = [f"Unpruned: top-1 {100 * base['top1']:.2f}%, {base['macs'] / 1e6:.2f}M MACs "
             f"(fvcore 'flop' = one multiply-add), base epochs {base.get('base_epochs')}.", "",
             "| budget | row | seeds | MACs (M) | params (K) | measured ms (b64, seed 0) | "
             "top-1 after BN re-est. | top-1 fine-tuned, mean (min–max) | "
             "method s (before fine-tuning, median) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    by = {}
    for r in done["runs"]:
        by.setdefault((r["speedup"], r["row"]), []).append(r)
    for (speedup, row), rs in sorted(by.items(), key=lambda kv: (-kv[0][0], kv[0][1] != "uniform")):
        t = [100 * r["top1"] for r in rs]
        rec = [100 * r["top1_recalibrated"] for r in rs]
        ms = (done.get("latency", {}).get(f"{speedup:g}", {}) or {}).get(row)
        ss = [r.get("search_s", r.get("setup_s")) for r in rs
              if r.get("search_s", r.get("setup_s")) is not None]
        lines.append(
            f"| {speedup:g}× | {row} | {len(rs)} | "
            f"{statistics.mean(r['macs'] for r in rs) / 1e6:.3f} | "
            f"{statistics.mean(r['params'] for r in rs) / 1e3:.1f} | "
            f"{'' if ms is None else f'{ms:.2f}'} | {statistics.mean(rec):.2f} | "
            f"{statistics.mean(t):.2f} ({min(t):.2f}–{max(t):.2f}) | "
            f"{'' if not ss else f'{statistics.median(ss):.0f}'} |")
    return "\n".join(lines) + "\n"


def plot(done: dict, path: str, spec) -> None:
    from tp_vgg.report import plots

    fig = plots.new_figure(10, 4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    rows = list(dict.fromkeys(r["row"] for r in done["runs"]))
    for row, marker in zip(rows, "os^vD<>pP*hX"):
        rs = [r for r in done["runs"] if r["row"] == row]
        ax1.scatter([r["macs"] for r in rs], [100 * r["top1"] for r in rs], marker=marker,
                    label=row)
        lat = done.get("latency", {})
        pts = [(lat[f"{r['speedup']:g}"][row], 100 * r["top1"]) for r in rs
               if r["seed"] == 0 and row in lat.get(f"{r['speedup']:g}", {})]
        if pts:
            ax2.scatter(*zip(*pts), marker=marker, label=row)
    plots.style(ax1, plots.MAC_AXIS, "top-1 fine-tuned (%)",
                f"CIFAR-10, {spec.name} w{spec.width:g}")
    plots.style(ax2, "measured ms (batch 64, CPU, 1 thread)", "top-1 fine-tuned (%)",
                "seed 0, interleaved timing")
    ax1.legend()
    ax2.legend()
    plots.save_png(fig, path)


def plot_widths(done: dict, path: str, spec) -> None:
    """Kept channels per layer (seed 0) of every row, one panel per budget: where each method
    puts the channels."""
    from tp_vgg.report import plots

    budgets = sorted({r["speedup"] for r in done["runs"]}, reverse=True)
    if not budgets:
        return
    fig = plots.new_figure(6 * len(budgets), 4)
    for i, speedup in enumerate(budgets):
        ax = fig.add_subplot(1, len(budgets), i + 1)
        rs = [r for r in done["runs"] if r["speedup"] == speedup and r["seed"] == 0]
        for r, marker in zip(rs, "os^vD<>pP*hX"):
            layers = list(r["widths"])[:-1]  # the logits layer keeps its classes
            ax.plot(range(len(layers)), [r["widths"][l] for l in layers], marker=marker,
                    label=r["row"])
        ax.set_xticks(range(len(layers)), layers, rotation=70, fontsize=6)
        plots.style(ax, "layer", "kept channels", f"{speedup:g}× fewer MACs, "
                    f"{spec.name} w{spec.width:g}")
        ax.legend(fontsize=7)
    plots.save_png(fig, path)


if __name__ == "__main__":
    sys.exit(main())
