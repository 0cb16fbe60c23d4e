"""Where a model's time goes, layer by layer (`tp-vgg profile --latency --layers`).

Each leaf module of the model in its measured form (:func:`tp_vgg.latency.timing.prepare`) is timed with
forward hooks, over ``cfg.repeats`` passes after ``cfg.warmup``, at the largest of
``cfg.batch_sizes``; with an unpruned model the two alternate pass by pass (interleaved).
Per layer: median ms, its share of the summed layer time, and for a pruned model the unpruned
layer's ms, the measured speed-up and the layer's MAC ratio (fvcore; 1 MAC = one multiply-add).
On the CPU with one thread the clock is the thread's CPU time (other jobs do not inflate it),
else wall time (after a CUDA synchronize on a GPU). Hooks add a little time to every module, so
the whole-model figure comes from :func:`tp_vgg.latency.timing.measure`, not from this sum.
Only ``--runtime torch`` has modules to hook.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from tp_vgg.device import resolve_device, set_threads
from tp_vgg.errors import UserError
from tp_vgg.latency.timing import DEVICES, LatencyConfig, _input, fit_layout, prepare
from tp_vgg.models.counting import count
from tp_vgg.models.zoo import ModelSpec
from tp_vgg.report.summary import table


@dataclass
class LayerRow:
    name: str
    type: str
    ms: float
    share: float
    macs: int = 0
    unpruned_ms: Optional[float] = None
    speedup: Optional[float] = None
    mac_ratio: Optional[float] = None


@dataclass
class LayerTimes:
    batch_size: int
    clock: str
    rows: List[LayerRow] = field(default_factory=list)
    by_type: Dict[str, float] = field(default_factory=dict)   # ms per module type

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


class _Hooks:
    def __init__(self, model: nn.Module, clock, sync):
        self.leaves = {n: m for n, m in model.named_modules()
                       if next(m.children(), None) is None and not isinstance(m, nn.Identity)}
        self.times: Dict[str, List[float]] = {n: [] for n in self.leaves}
        self.start: Dict[str, float] = {}
        self.on = False
        for n, m in self.leaves.items():
            m.register_forward_pre_hook(lambda mod, inp, n=n: self._begin(n))
            m.register_forward_hook(lambda mod, inp, out, n=n: self._end(n))
        self.clock, self.sync = clock, sync

    def _begin(self, n):
        if self.on:
            self.sync()
            self.start[n] = self.clock()

    def _end(self, n):
        if self.on:
            self.sync()
            self.times[n].append((self.clock() - self.start[n]) * 1e3)


def layer_times(model: nn.Module, spec: ModelSpec, cfg: LatencyConfig,
                unpruned: Optional[nn.Module] = None) -> LayerTimes:
    """Per-layer latency of ``model`` (and of ``unpruned``, interleaved, when given)."""
    cfg.validate()
    cfg = fit_layout(model, spec, cfg)
    if cfg.runtime != "torch":
        raise UserError(f"--layers times each PyTorch module with hooks; --runtime "
                        f"{cfg.runtime} runs the whole graph (accepted with --layers: --runtime "
                        "torch)")
    dev = resolve_device(cfg.device, DEVICES)
    b = max(cfg.batch_sizes)
    thread_clock = dev.type == "cpu" and (cfg.threads or torch.get_num_threads()) == 1
    clock = time.thread_time if thread_clock else time.perf_counter
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    models = {"model": prepare(model, cfg)}
    if unpruned is not None:
        models["unpruned"] = prepare(unpruned, cfg)
    hooks = {k: _Hooks(m, clock, sync) for k, m in models.items()}
    x = _input(spec, b, cfg)
    old = set_threads(cfg.threads)
    old_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = dev.type == "cuda" or old_benchmark  # as measure()
    try:
        with torch.inference_mode():
            for m in models.values():
                for _ in range(max(cfg.warmup, 1)):
                    m(x)
            for h in hooks.values():
                h.on = True
            for r in range(cfg.repeats):
                order = list(models) if r % 2 == 0 else list(models)[::-1]
                for k in order:
                    models[k](x)
    finally:
        set_threads(old)
        torch.backends.cudnn.benchmark = old_benchmark
    macs = {l.name: l.macs for l in count(model, spec).layers}
    macs_u = {l.name: l.macs for l in count(unpruned, spec).layers} if unpruned is not None else {}
    med = {k: {n: statistics.median(v) for n, v in h.times.items() if v} for k, h in hooks.items()}
    total = sum(med["model"].values()) or 1.0
    out = LayerTimes(b, "thread CPU time" if thread_clock else "wall")
    for n, m in hooks["model"].leaves.items():
        if n not in med["model"]:
            continue
        ms = med["model"][n]
        row = LayerRow(n, type(m).__name__, ms, ms / total, int(macs.get(n, 0)))
        if unpruned is not None and n in med["unpruned"]:
            row.unpruned_ms = med["unpruned"][n]
            row.speedup = row.unpruned_ms / ms if ms else None
            if macs.get(n):
                row.mac_ratio = macs_u.get(n, 0) / macs[n]
        out.rows.append(row)
        out.by_type[row.type] = out.by_type.get(row.type, 0.0) + ms
    return out


def format_layer_times(lt: LayerTimes) -> str:
    pruned = any(r.unpruned_ms is not None for r in lt.rows)
    head = ["layer", "type", "ms", "share"] + (["unpruned ms", "speed-up", "MAC ratio"]
                                               if pruned else [])

    def opt(v, fmt):
        return fmt.format(v) if v is not None else "-"

    rows = [[r.name, r.type, f"{r.ms:.3f}", f"{100 * r.share:.1f}%"]
            + ([opt(r.unpruned_ms, "{:.3f}"), opt(r.speedup, "{:.2f}x"),
                opt(r.mac_ratio, "{:.2f}x")] if pruned else []) for r in lt.rows]
    total = sum(lt.by_type.values()) or 1.0
    types = ", ".join(f"{t} {ms:.2f} ms ({100 * ms / total:.0f}%)"
                      for t, ms in sorted(lt.by_type.items(), key=lambda kv: -kv[1]))
    return (f"per-layer latency at batch {lt.batch_size} ({lt.clock}, forward hooks, median):\n"
            + table(head, rows) + f"\nby type: {types}")
