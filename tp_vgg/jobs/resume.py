"""An interrupted prune job, finished by `tp-vgg prune --resume DIR` (:func:`resume_run`):
``DIR/resume.json`` (:func:`resume_state`, written when fine-tuning starts) holds the report and
meta known before fine-tuning and the stages after it; ``DIR/finetune/last.pt`` the model and
the fine-tuning state.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch

from tp_vgg.data.datasets import DataConfig, ImageData, load_data
from tp_vgg.errors import UserError
from tp_vgg.jobs.stages import JobResult, Log, Prepared, measure, save_outputs, say_wrote
from tp_vgg.latency import timing as latency
from tp_vgg.models import counting
from tp_vgg.pruning import graph as pruning
from tp_vgg.pruning import iterative
from tp_vgg.report import summary as report_json
from tp_vgg.train import interrupt
from tp_vgg.train import loop as train
from tp_vgg.train.config import TrainConfig
from tp_vgg.train.distributed import DistContext

if TYPE_CHECKING:
    from tp_vgg.jobs.prune import PruneJob


RESUME_FILE = "resume.json"  # in DIR while the job fine-tunes; removed once pruned.pt is written


_TAIL = ("schedule", "notes")  # make_report's last keys, after the extras


def resume_state(job: PruneJob, prep: Prepared, partial: Dict[str, Any], meta: Dict[str, Any],
                 steps: Optional[iterative.Schedule]) -> Dict[str, Any]:
    """What :func:`resume_run` needs besides ``DIR/finetune/last.pt`` (the pruned model, its
    history and the fine-tuning state): the report and meta known before fine-tuning and the
    stages after it (scratch control, latency). Written to ``DIR/resume.json`` (atomically)
    when fine-tuning starts, with the accuracy so far."""
    ft = job.finetune
    scratch = None
    if ft is not None and ft.scratch_epochs is not None:
        epochs = ft.scratch_epochs or int(prep.loaded.meta.get("epoch") or 0) + ft.epochs
        scratch = dataclasses.replace(ft.train, epochs=epochs, lr=None, warmup_epochs=1.0,
                                      distill=False).to_dict()
    return {"job": "prune", "report": partial, "meta": meta,
            "schedule": steps.to_dict() if steps is not None else None,
            "finetune_epochs": ft.epochs if ft is not None else 0,
            "source_history": len(prep.loaded.history),
            "latency": dataclasses.asdict(job.latency) if job.latency is not None else None,
            "latency_runtimes": list(job.latency_runtimes), "scratch": scratch,
            "scratch_data": dataclasses.asdict(ft.data) if scratch else None}


def resumable(e: interrupt.Interrupted, out_dir: str, consent: Dict[str, bool]
               ) -> interrupt.Interrupted:
    """``e`` continued by `tp-vgg prune --resume DIR` (the fine-tuning checkpoint is kept)."""
    kept = e.kept or os.path.join(out_dir, "finetune", "last.pt")
    trust = bool((e.resume and e.resume.trust_model_code) or consent.get("trust_model_code"))
    out = interrupt.Interrupted(e.signum, kept, e.where, interrupt.Resume(
        "prune", out_dir, trust, bool(consent.get("allow_changed_model_code"))))
    return out


def remove_state(out_dir: Optional[str]) -> None:
    if out_dir and os.path.exists(os.path.join(out_dir, RESUME_FILE)):
        os.remove(os.path.join(out_dir, RESUME_FILE))


def complete_report(partial: Dict[str, Any], middle: Dict[str, Any],
                    schedule: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """report.json from the part known before fine-tuning (:func:`make_report` without accuracy,
    latency and schedule), ``middle`` (accuracy, latency) and the schedule, keys in
    :func:`make_report`'s order."""
    keys = list(partial)
    cut = keys.index("layers") + 1 if "layers" in keys else len(keys)
    out = {k: partial[k] for k in keys[:cut]}
    out.update(middle)
    tail = dict({"schedule": schedule} if schedule is not None else {},
                **{k: partial[k] for k in keys[cut:] if k in _TAIL})
    out.update({k: partial[k] for k in keys[cut:] if k not in _TAIL})
    out.update({k: tail[k] for k in _TAIL if k in tail})
    return out


def read_resume_state(out_dir: str) -> Dict[str, Any]:
    """``DIR/resume.json`` of an interrupted prune job; a UserError naming what DIR holds."""
    path = os.path.join(out_dir, RESUME_FILE)
    if not os.path.isdir(out_dir):
        raise UserError(f"--resume {out_dir!r} is not a folder; give the --out DIR of an "
                        "interrupted tp-vgg prune")
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(out_dir, "pruned.pt")):
            raise UserError(f"--resume {out_dir!r}: that prune job has finished "
                            "(pruned.pt and report.json are there); nothing to resume")
        raise UserError(f"--resume {out_dir!r} holds no interrupted prune job ({RESUME_FILE} is "
                        "written when fine-tuning starts; a job stopped before it starts anew: "
                        "run the prune command again)")
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path!r}: {e}") from e
    if not isinstance(state, dict) or state.get("job") != "prune":
        raise UserError(f"{path!r} is not a tp-vgg prune job's resume file")
    return state


def resume_run(out_dir: str, log: Log = print, dist: Optional[DistContext] = None, *,
               trust_model_code: bool = False, allow_changed_model_code: bool = False,
               runtime: Optional[Dict[str, Any]] = None) -> JobResult:
    """Finish the prune job interrupted in ``out_dir`` (`tp-vgg prune --resume DIR`): continue
    its fine-tuning exactly from ``DIR/finetune/last.pt`` (:func:`tp_vgg.train.loop.resume`),
    then the stages after it (scratch control, latency), and write ``pruned.pt`` and
    ``report.json`` as the uninterrupted job would have. ``trust_model_code``: the model is a
    user factory (as for :func:`tp_vgg.load_checkpoint`); ``runtime``: device, progress, ..."""
    dist = dist or DistContext()
    state = read_resume_state(out_dir)
    consent = {"trust_model_code": trust_model_code,
               "allow_changed_model_code": allow_changed_model_code}
    if not dist.is_main:
        log = lambda s: None  # noqa: E731
    ft_dir = os.path.join(out_dir, "finetune")
    last = os.path.join(ft_dir, "last.pt")
    if not os.path.isfile(last):
        raise UserError(f"--resume {out_dir!r}: {last!r} is missing; the job cannot be finished, "
                        "run the prune command again")
    point = train.ResumePoint.read(last, **consent)
    data = load_data(point.data, log)
    ck = point.checkpoint
    done = int(ck.train_state["epoch"])
    step = int(ck.train_state.get("step") or 0)
    log(f"resuming the prune job in {out_dir}: fine-tuning after epoch {done}/"
        f"{point.config.epochs}" + (f" and step {step}" if step else ""))
    try:
        res = train.resume(point, data, ft_dir, runtime=runtime, dist=dist, log=log)
        model = res.model.to("cpu", memory_format=torch.contiguous_format).eval()
        spec, history = ck.spec, list(ck.history)
        accuracy = dict(state.get("accuracy") or {})
        accuracy["finetuned"] = (res.final.top1 if res.final is not None
                                 else ck.meta.get("test_top1", accuracy.get("recalibrated")))
        if state.get("scratch"):
            accuracy["scratch"] = _resume_scratch(state, ck, data, out_dir, history, log, dist)
        interrupt.check()
        n_src = int(state.get("source_history") or 0)
        steps = None
        if state.get("schedule"):
            sch = state["schedule"]
            steps = iterative.Schedule(spec, sch["iterative_steps"], sch["finetune_epochs_per_step"])
            steps.records = [iterative.StepRecord(**r) for r in sch["steps"]]
            steps.finish(model, accuracy.get("pruned"), state.get("finetune_epochs") or 0,
                         accuracy.get("finetuned"), accuracy.get("recalibrated"))
        original = pruning.replay(ck.build_unpruned(), spec, history[:n_src]).eval()
        before, after = counting.count(original, spec), counting.count(model, spec)
        lat: Dict[str, Any] = {}
        if state.get("latency") is not None:
            lcfg = dict(state["latency"], batch_sizes=tuple(state["latency"]["batch_sizes"]))
            lat = measure(latency.LatencyConfig(**lcfg), tuple(state.get("latency_runtimes") or ()),
                          original, model, spec, before, after, log)
        acc = {"accuracy": accuracy}
        rep = complete_report(state["report"], dict(**acc, **lat),
                              steps.to_dict() if steps is not None else None)
        meta = dict(state["meta"], **acc)
        interrupt.check()
    except interrupt.Interrupted as e:
        raise resumable(e, out_dir, consent)
    if dist.is_main:
        save_outputs(out_dir, model, spec, history, ck.preprocessing, meta, rep)
        remove_state(out_dir)
    log(report_json.format_prune_table(rep))
    say_wrote(out_dir if dist.is_main else None, log)
    return JobResult(model, spec, history, before, after, rep, meta, ck.preprocessing, accuracy,
                     out_dir)


def _resume_scratch(state: Dict[str, Any], ck, data: ImageData, out_dir: str,
                    history: List[list], log: Log, dist: Optional[DistContext]) -> Optional[float]:
    """The scratch control of a resumed job: continued from ``DIR/scratch/last.pt`` when it
    holds a run in progress, else trained as :func:`scratch_control` does."""
    folder = os.path.join(out_dir, "scratch")
    last = os.path.join(folder, "last.pt")
    if os.path.isfile(last):
        point = train.ResumePoint.read(last, **ck.consent())
        res = train.resume(point, data, folder, dist=dist, log=log)
        return res.final.top1 if res.final else point.checkpoint.meta.get("test_top1")
    cfg = TrainConfig.from_dict(state["scratch"])
    train.seed_everything(cfg.seed)
    model = pruning.replay(ck.build_unpruned(), ck.spec, history)
    log(f"scratch control: the pruned architecture from random initialization, "
        f"{cfg.epochs} epochs")
    res = train.fit(model, ck.spec, data, cfg, folder,
                    data_cfg=DataConfig(**state["scratch_data"]), history=history,
                    preprocessing=ck.preprocessing, meta={"scratch": True}, command="scratch",
                    dist=dist)
    return res.final.top1 if res.final else None

