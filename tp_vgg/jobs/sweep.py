"""A sweep (`tp-vgg sweep`): :func:`sweep` runs one :class:`~tp_vgg.jobs.prune.PruneJob` at
several ratios, each into its own folder, then times every pruned model against the original
in one interleaved session (:func:`measure_sweep`) and writes sweep.json and report.md.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict, Optional, Sequence

from tp_vgg.checkpoint.source import load_source
from tp_vgg.errors import UserError
from tp_vgg.files import ensure_dir, write_json
from tp_vgg.jobs.prune import PruneJob, run
from tp_vgg.jobs.stages import JobResult, Log, check_out_dir, latency_config
from tp_vgg.latency import timing as latency
from tp_vgg.pruning import graph as pruning
from tp_vgg.report import markdown as report_md


def run_dir_name(ratio: float) -> str:
    """0.5 -> 'ratio_0.50', 0.125 -> 'ratio_0.125'."""
    text = f"{ratio:.4f}".rstrip("0")
    return "ratio_" + (text if len(text.split(".")[1]) >= 2 else f"{ratio:.2f}")


def sweep(job: PruneJob, ratios: Sequence[float], out_dir: str, log: Log = print,
          latency_label: Optional[str] = None) -> Dict[str, Any]:
    """:func:`run` ``job`` at each ratio into ``out_dir/ratio_R/``; ``out_dir/sweep.json`` lists
    the runs (rewritten after each) and ``report.md`` shows the trade-off curves.
    ``latency_label`` is what sweep.json records for the latency setting (default: the batch
    sizes, or ``"default"``).

    With ``job.latency`` the runs are not timed one by one: once all are pruned,
    :func:`measure_sweep` times the original once, interleaved with every pruned model in one
    session (per runtime), so that every speed-up -- in each run's report.json, in sweep.json,
    report.md and the printed table -- is the one baseline shown / that model's ms."""
    if job.target is not None:
        raise UserError("a sweep sets the ratio: leave PruneJob.target (--target-*) out")
    check_out_dir(out_dir)
    ratios = sorted(dict.fromkeys(float(r) for r in ratios))
    for r in ratios:
        pruning.check_ratio("--ratios", r, "sweep's ratios")
    job.validate()
    ensure_dir(out_dir)
    if latency_label is None and job.latency is not None:
        latency_label = ",".join(map(str, job.latency.batch_sizes)) or "default"
    runs = [{"ratio": r, "dir": run_dir_name(r)} for r in ratios]
    ft = job.finetune
    record = {"model": job.source.describe(), "ratios": ratios, "runs": runs,
              "finetune_epochs": (ft.epochs or None) if ft else None,
              "data": ft.data.name if ft else None, "latency": latency_label}
    path = os.path.join(out_dir, report_md.SWEEP_FILE)
    write_json(path, record)
    each = _untimed(job)
    results: Dict[str, JobResult] = {}
    for i, entry in enumerate(runs):
        t0 = time.perf_counter()
        log(f"== sweep {i + 1}/{len(runs)}: ratio {entry['ratio']} -> "
            f"{os.path.join(out_dir, entry['dir'])}")
        results[entry["dir"]] = run(
            dataclasses.replace(each, prune=dataclasses.replace(job.prune, ratio=entry["ratio"])),
            os.path.join(out_dir, entry["dir"]), log)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        write_json(path, record)
    if job.latency is not None:
        measure_sweep(job, record, results, out_dir, log)
        write_json(path, record)
    written = report_md.write_report(out_dir)
    log(f"wrote {path} and {written.markdown}")
    return record


def _untimed(job: PruneJob) -> PruneJob:
    """``job`` without its latency measurement (the sweep times all runs together), the
    ``--round-to auto`` scan still where --latency's settings would have put it."""
    if job.latency is None:
        return job
    timing = job.timing
    if timing is None and job.prune.round_to == "auto":
        timing = dataclasses.replace(job.latency, batch_sizes=())
    return dataclasses.replace(job, latency=None, latency_runtimes=(), timing=timing)


def measure_sweep(job: PruneJob, record: Dict[str, Any], results: Dict[str, "JobResult"],
                  out_dir: str, log: Log = print) -> None:
    """Time the original (the sweep's source, rebuilt) once, interleaved with every run's pruned
    model, per runtime; write each run's latency into its report.json (speed-up = the shared
    original's ms / its ms) and into ``record`` (sweep.json): ``latency_baseline_ms`` (runtime
    -> batch size -> the original's median ms) and, per run, ``latency`` (runtime -> a row per
    batch size: original_ms, pruned_ms, speedup, mac_ratio, efficiency)."""
    if not results:
        return
    first = next(iter(results.values()))
    spec = first.spec
    original = load_source(job.source, lambda s: None).model
    before = first.before.macs
    cfg = latency_config(job.latency, spec)
    label = {d: f"ratio {r['ratio']}" for r in record["runs"] for d in [r["dir"]]}
    names = [r["dir"] for r in record["runs"] if r["dir"] in results]
    session = (f"one interleaved session: the original and the {len(names)} pruned models of "
               f"the sweep (ratios {', '.join(str(r['ratio']) for r in record['runs'])})")
    by_runtime: Dict[str, Dict[str, latency.LatencyReport]] = {}
    for runtime in dict.fromkeys([cfg.runtime, *job.latency_runtimes]):
        log(f"== sweep latency ({runtime}): the original and {len(names)} pruned models, "
            "interleaved in one session")
        reps = latency.compare_each(original, {n: results[n].model for n in names}, spec,
                                    dataclasses.replace(cfg, runtime=runtime), before,
                                    {n: results[n].after.macs for n in names}, session)
        log(latency.format_session_table(reps, label))
        by_runtime[runtime] = reps
    main = by_runtime[cfg.runtime]
    record["latency_baseline_ms"] = {
        rt: {str(k.batch_size): k.original.median_ms
             for k in next(iter(reps.values())).comparisons} for rt, reps in by_runtime.items()}
    record["latency_note"] = ("the original was timed once per runtime, interleaved with every "
                              "ratio's pruned model in one session; speed-up = "
                              "latency_baseline_ms / pruned_ms")
    for entry in record["runs"]:
        name = entry["dir"]
        if name not in main:
            continue
        entry["latency"] = {rt: [{"batch_size": k.batch_size,
                                  "original_ms": k.original.median_ms,
                                  "pruned_ms": k.pruned.median_ms, "speedup": k.speedup,
                                  "mac_ratio": k.mac_ratio, "efficiency": k.efficiency}
                                 for k in reps[name].comparisons]
                             for rt, reps in by_runtime.items()}
        lat = {"latency": main[name].to_dict()}
        if len(by_runtime) > 1:
            lat["latency_by_runtime"] = {rt: reps[name].to_dict()
                                         for rt, reps in by_runtime.items()}
        rep = dict(results[name].report, **lat)
        results[name].report.update(lat)
        write_json(os.path.join(out_dir, name, report_md.REPORT_FILE), rep)

