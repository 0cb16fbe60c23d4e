"""Measured inference latency, and how much of the MAC reduction it turns into speed.

Every model in a comparison runs in the same process on the same input, interleaved: each round
times one forward pass of every model (the order alternates between rounds), after warm-up
passes that let oneDNN/cuDNN pick and cache their kernels (on CUDA with ``cudnn.benchmark`` on,
so each shape gets its fastest algorithm). A slow stretch of a shared machine therefore hits all
models alike, and the medians discard outliers. On CUDA each pass is timed with device events
after a synchronize; on the CPU with ``time.perf_counter`` (or, with ``clock="thread"`` and one
thread, the thread's CPU time, which time spent descheduled by other jobs does not inflate).

Figures::

    speed-up   = median latency of the original / median latency of the pruned model
    MAC ratio  = MACs of the original / MACs of the pruned model (fvcore, batch 1)
    efficiency = speed-up / MAC ratio     (1.0: every MAC removed saved its share of time)

Each speed-up is computed from the original's timing in the same session, which is what every
report shows beside it; :func:`compare_each` (`tp-vgg sweep --latency`) times the original once
with all the pruned models, so that all their speed-ups share one baseline.

Models are measured in a deployment form (:func:`prepare`): a copy in eval mode on the device
and dtype asked for, channels-last and with BatchNorm folded into the convs when asked (the CLI
asks for both by default).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from tp_vgg.data.preprocessing import input_hw
from tp_vgg.device import resolve_device, set_threads
from tp_vgg.errors import UserError, naming_fields, parse_list
from tp_vgg.export.onnx_eval import OnnxModel, onnxruntime_version
from tp_vgg.latency import runtimes
from tp_vgg.models.counting import count, human
from tp_vgg.models.zoo import ModelSpec
from tp_vgg.report.summary import format_ms, table

DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16,
                                  "bf16": torch.bfloat16}

# The channel multiple convolution kernels are blocked on, as documented: oneDNN on the CPU
# computes channels in blocks of the SIMD width (16 fp32 lanes with AVX-512, 8 with AVX2), padding
# a partial block, so 145 channels cost what 160 do (measured: benchmarks/conv_widths.py); GPU
# tensor cores take fp16 channels in multiples of 8. ``--round-to auto`` learns the multiple from
# a width scan instead (tp_vgg.latency.table); this is the placeholder while a job is validated.
CPU_ROUND_TO = {"AVX512": 16}
CUDA_ROUND_TO = 8


# Where latency is measured (--device).
DEVICES = ("cpu", "cuda", "cuda:N")


@dataclass
class LatencyConfig:
    """How to measure. ``repeats`` timed passes per model and batch size, after ``warmup``."""

    batch_sizes: Tuple[int, ...] = (1,)
    device: str = "cpu"
    dtype: str = "fp32"
    channels_last: bool = False
    fuse_bn: bool = False
    warmup: int = 3
    repeats: int = 20
    threads: Optional[int] = None  # torch.set_num_threads for the measurement; None: leave as is
    # "wall": elapsed time (CUDA: device events). "thread": CPU time of the calling thread, for
    # --threads 1 on a shared machine: time spent descheduled by other jobs is not counted.
    clock: str = "wall"
    runtime: str = "torch"  # tp_vgg.latency.runtimes: torch, onnxruntime

    def validate(self) -> None:
        with naming_fields("LatencyConfig"):
            self._check()

    def _check(self) -> None:
        dev = resolve_device(self.device, DEVICES)
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype!r} is not supported; accepted: {', '.join(DTYPES)}")
        runtimes.get(self.runtime).check(dev, self.dtype)
        if not self.batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                                       for b in self.batch_sizes):
            raise UserError(f"--batch-sizes {list(self.batch_sizes)!r} must be positive integers, "
                            "e.g. 1,64")
        for what, v, low in (("warmup", self.warmup, 0), ("repeats", self.repeats, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise UserError(f"--{what} must be an integer >= {low}, got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UserError(f"--threads must be a positive integer, got {self.threads!r}")
        if self.clock not in CLOCKS:
            raise UserError(f"--clock {self.clock!r} is not accepted; accepted: {', '.join(CLOCKS)}")
        if self.clock == "thread" and (self.threads != 1 or torch.device(self.device).type != "cpu"):
            raise UserError("--clock thread measures one CPU thread; it needs --device cpu and "
                            "--threads 1")
        if self.clock == "thread" and self.runtime != "torch":
            raise UserError("--clock thread times the calling thread; --runtime "
                            f"{self.runtime} runs on its own threads (accepted: --clock wall)")


def default_round_to(device: str = "cpu") -> int:
    """The channel multiple that suits ``device``'s convolution kernels (``--round-to auto``):
    16 on AVX-512 CPUs, 8 on other CPUs and on CUDA GPUs."""
    if torch.device(device).type == "cuda":
        return CUDA_ROUND_TO
    return CPU_ROUND_TO.get(torch.backends.cpu.get_cpu_capability(), 8)


# Batch sizes timed when none are given: 1 (one request) and a throughput batch that keeps a
# measurement within a minute or two on a small CPU.
SMALL_INPUT_BATCHES = (1, 64)   # inputs up to 64x64 (CIFAR-form)
LARGE_INPUT_BATCHES = (1, 8)    # larger inputs (224x224 torchvision VGGs)


def default_batch_sizes(spec: Optional[ModelSpec]) -> Tuple[int, ...]:
    """The batch sizes timed for ``spec``'s input size when none are given."""
    size = spec.resolved().input_size if spec is not None else None
    return LARGE_INPUT_BATCHES if size and max(input_hw(size)) > 64 else SMALL_INPUT_BATCHES


def parse_batch_sizes(text: str) -> Tuple[int, ...]:
    """'1,64' -> (1, 64); UserError naming the bad value otherwise."""
    return tuple(parse_list(text, int, lambda v: v >= 1, "--batch-sizes", "a positive integer",
                            "comma-separated integers >= 1, e.g. 1,64"))


@dataclass
class Timing:
    """Latency of one model at one batch size, in milliseconds."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    runs: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> "Timing":
        s = sorted(samples_ms)
        q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
        return cls(median_ms=statistics.median(s), p25_ms=q[0], p75_ms=q[2], min_ms=s[0],
                   runs=len(s))


@dataclass
class Comparison:
    """Original vs pruned at one batch size."""

    batch_size: int
    original: Timing
    pruned: Timing
    speedup: float
    mac_ratio: float
    efficiency: float

    @classmethod
    def of(cls, batch_size: int, original: Timing, pruned: Timing, mac_ratio: float) -> "Comparison":
        speedup = original.median_ms / pruned.median_ms
        return cls(batch_size, original, pruned, speedup, mac_ratio, speedup / mac_ratio)


@dataclass
class LatencyReport:
    """``timings[batch_size][model name]``, the comparisons when there are two models, and the
    settings and machine they were measured on."""

    config: LatencyConfig
    timings: Dict[int, Dict[str, Timing]]
    comparisons: List[Comparison] = field(default_factory=list)
    macs: Dict[str, int] = field(default_factory=dict)
    environment: Dict[str, object] = field(default_factory=dict)
    # what else ran in the session, when more than these models did (compare_each)
    session: Optional[str] = None

    def to_dict(self) -> dict:
        out = {
            "units": "milliseconds per forward pass of a whole batch; median of interleaved runs "
                     "after warm-up; speed-up = original median / pruned median, both shown; "
                     "efficiency = speed-up / MAC ratio",
            "config": dataclasses.asdict(self.config),
            "environment": self.environment,
            "macs": self.macs,
            "timings": {str(b): {n: dataclasses.asdict(t) for n, t in d.items()}
                        for b, d in self.timings.items()},
            "comparisons": [dataclasses.asdict(c) for c in self.comparisons],
        }
        if self.session:
            out["session"] = self.session
        return out


def environment(device: torch.device, runtime: str = "torch") -> Dict[str, object]:
    env: Dict[str, object] = {"device": str(device), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "runtime": runtime,
                              "runtime_version": runtimes.get(runtime).version()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        env["mkldnn"] = torch.backends.mkldnn.is_available()
    return env


def prepare(model: nn.Module, cfg: LatencyConfig) -> nn.Module:
    """A copy of ``model`` in its measured form: eval mode, on ``cfg.device`` in ``cfg.dtype``,
    BN folded when ``cfg.fuse_bn``, channels-last when ``cfg.channels_last``."""
    m = copy.deepcopy(model).eval()
    if cfg.fuse_bn:
        from tp_vgg.export.exporters import fuse_bn
        m = fuse_bn(m)
    m = m.to(device=resolve_device(cfg.device, DEVICES), dtype=DTYPES[cfg.dtype])
    if cfg.channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m


def fit_layout(model: nn.Module, spec: ModelSpec, cfg: LatencyConfig) -> LatencyConfig:
    """``cfg``, or ``cfg`` without channels-last when the model's forward cannot run on a
    channels-last tensor (e.g. ``x.view(n, -1)`` after the convs; ``reshape`` would): the
    deployment form is then the contiguous one."""
    if not cfg.channels_last:
        return cfg
    try:
        with torch.inference_mode():
            prepare(model, cfg)(_input(spec, 1, cfg))
    except RuntimeError as e:  # anything else (a dtype the device lacks ...) is measure()'s to say
        if "view size is not compatible" in str(e):
            return dataclasses.replace(cfg, channels_last=False)
    return cfg


def _input(spec: ModelSpec, batch: int, cfg: LatencyConfig, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = spec.resolved()
    x = torch.randn(batch, s.in_channels, *input_hw(s.input_size), generator=g)
    x = x.to(device=resolve_device(cfg.device, DEVICES), dtype=DTYPES[cfg.dtype])
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


CLOCKS = ("wall", "thread")


def _timer(device: torch.device, clock: str = "wall") -> Callable[[Callable[[], object]], float]:
    """A function that runs ``fn`` once and returns its time in ms: wall time (device time from
    CUDA events on a GPU), or the calling thread's CPU time (``clock='thread'``)."""
    if clock == "thread":
        def thread_time(fn):
            t0 = time.thread_time()
            fn()
            return (time.thread_time() - t0) * 1e3
        return thread_time
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)

        def cuda_time(fn):
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        return cuda_time

    def cpu_time(fn):
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return cpu_time


def _run_dtype_check(name: str, fn: Callable[[], object], cfg: LatencyConfig) -> None:
    try:
        fn()
    except (RuntimeError, NotImplementedError) as e:
        if cfg.dtype != "fp32" and ("not implemented" in str(e) or "Half" in str(e)
                                    or "BFloat16" in str(e)):
            raise UserError(f"--dtype {cfg.dtype} is not supported for {name} on {cfg.device}: "
                            f"{str(e).splitlines()[0][:160]}; accepted here: fp32") from e
        raise


def measure(models: Dict[str, nn.Module], spec: ModelSpec, cfg: LatencyConfig,
            prepared: bool = False, fitted: bool = False) -> Dict[int, Dict[str, Timing]]:
    """Median latency of each model at each batch size, all models interleaved.

    ``models`` are copied and prepared (:func:`prepare`) unless ``prepared`` is true.
    """
    cfg.validate()
    dev = resolve_device(cfg.device, DEVICES)
    if not (prepared or fitted):  # ``fitted``: the caller ran fit_layout already
        cfg = fit_layout(next(iter(models.values())), spec, cfg)
    ready = models if prepared else {n: prepare(m, cfg) for n, m in models.items()}
    names = list(ready)
    timer = _timer(dev, cfg.clock)
    wall = _timer(torch.device("cpu"))
    runtime = runtimes.get(cfg.runtime)
    old_threads = set_threads(cfg.threads)
    # On CUDA let cuDNN time its algorithms for each shape during warm-up, as a deployment
    # runtime would: an odd pruned width then gets its best kernel, not the heuristic's guess.
    old_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = dev.type == "cuda" or old_benchmark
    out: Dict[int, Dict[str, Timing]] = {}
    try:
        with torch.inference_mode():
            for b in cfg.batch_sizes:
                x = _input(spec, b, cfg)
                calls = {n: runtime.load(ready[n], x, torch.get_num_threads(), spec.output_key)
                         for n in names}
                for n in names:
                    _run_dtype_check(n, calls[n], cfg)
                    for _ in range(cfg.warmup):
                        calls[n]()
                samples: Dict[str, List[float]] = {n: [] for n in names}
                for r in range(cfg.repeats):
                    order = names if r % 2 == 0 else names[::-1]
                    for n in order:
                        samples[n].append((wall if calls[n].wall_clock else timer)(calls[n]))
                out[b] = {n: Timing.from_samples(samples[n]) for n in names}
    finally:
        set_threads(old_threads)
        torch.backends.cudnn.benchmark = old_benchmark
    return out


def compare(original: nn.Module, pruned: nn.Module, spec: ModelSpec, cfg: LatencyConfig,
            macs_original: int, macs_pruned: int) -> LatencyReport:
    """Latency of ``original`` and ``pruned`` (interleaved), speed-up, MAC ratio, efficiency."""
    return compare_each(original, {"pruned": pruned}, spec, cfg, macs_original,
                        {"pruned": macs_pruned})["pruned"]


def compare_each(original: nn.Module, pruned: Dict[str, nn.Module], spec: ModelSpec,
                 cfg: LatencyConfig, macs_original: int, macs_pruned: Dict[str, int],
                 session: Optional[str] = None) -> Dict[str, LatencyReport]:
    """Every model of ``pruned`` timed against ``original`` in one interleaved session: the
    original is measured once, and each report (by the name in ``pruned``) holds that one
    timing as its "original", so that every speed-up is computed from the same baseline.
    ``session`` says in each report what else was timed with it (several pruned models)."""
    if "original" in pruned:
        raise ValueError("compare_each: 'original' names the baseline; name the pruned models "
                         "otherwise")
    cfg.validate()
    cfg = fit_layout(original, spec, cfg)  # what is reported is what was timed
    timings = measure({"original": original, **pruned}, spec, cfg, fitted=True)
    env = environment(resolve_device(cfg.device, DEVICES), cfg.runtime)
    if cfg.threads is not None:
        env["threads"] = cfg.threads
    out: Dict[str, LatencyReport] = {}
    for name in pruned:
        pair = {b: {"original": t["original"], "pruned": t[name]} for b, t in timings.items()}
        mac_ratio = macs_original / max(macs_pruned[name], 1)
        comps = [Comparison.of(b, t["original"], t["pruned"], mac_ratio) for b, t in pair.items()]
        out[name] = LatencyReport(cfg, pair, comps, {"original": int(macs_original),
                                                     "pruned": int(macs_pruned[name])},
                                  dict(env), session if len(pruned) > 1 else None)
    return out


def single(model: nn.Module, spec: ModelSpec, cfg: LatencyConfig, macs: int) -> LatencyReport:
    """Latency of one model (no comparison)."""
    cfg.validate()
    cfg = fit_layout(model, spec, cfg)
    timings = measure({"model": model}, spec, cfg, fitted=True)
    env = environment(resolve_device(cfg.device, DEVICES), cfg.runtime)
    if cfg.threads is not None:
        env["threads"] = cfg.threads
    return LatencyReport(cfg, timings, [], {"model": int(macs)}, env)


def profile(model: nn.Module, spec: ModelSpec, cfg: LatencyConfig, macs: int,
            unpruned: Optional[nn.Module] = None) -> LatencyReport:
    """`tp-vgg profile --latency`: ``model`` timed against ``unpruned`` (its model before
    pruning, e.g. :meth:`tp_vgg.Checkpoint.build_unpruned`), interleaved, or alone without one."""
    if unpruned is None:
        return single(model, spec, cfg, macs)
    return compare(unpruned, model, spec, cfg, count(unpruned, spec).macs, macs)


def latency_head(rep: LatencyReport) -> str:
    """Where and how a report was measured, in one line."""
    c = rep.config
    return (f"latency in {c.runtime} {rep.environment.get('runtime_version', '')} on "
            f"{rep.environment.get('device')} ({rep.environment.get('threads')} threads), "
            f"{c.dtype}{', channels-last' if c.channels_last else ''}"
            f"{', BN folded' if c.fuse_bn else ''}; median of {c.repeats} interleaved runs "
            f"after {c.warmup} warm-up")


def format_latency_table(rep: LatencyReport) -> str:
    """The printed table: per batch size N, the original's and the pruned model's median ms per
    batch of N and the speed-up computed from exactly those two (:func:`format_ms` shows enough
    digits for the ratio to be checked)."""
    head = latency_head(rep)
    if rep.comparisons:
        rows = [[str(k.batch_size), format_ms(k.original.median_ms), format_ms(k.pruned.median_ms),
                 f"{k.speedup:.2f}x", f"{k.mac_ratio:.2f}x", f"{k.efficiency:.2f}"]
                for k in rep.comparisons]
        text = table(["batch N", "original ms per batch of N", "pruned ms per batch of N",
                      "speed-up", "MAC ratio", "efficiency"], rows)
        return (head + "\n" + text + "\n(speed-up = original ms / pruned ms; efficiency = "
                "speed-up / MAC ratio; MACs: fvcore's 'flop' = one multiply-add)")
    rows = [[str(b), format_ms(t["model"].median_ms),
             f"{format_ms(t['model'].p25_ms)}-{format_ms(t['model'].p75_ms)}",
             f"{b * 1e3 / t['model'].median_ms:.1f}"] for b, t in rep.timings.items()]
    return head + "\n" + table(["batch N", "median ms per batch of N", "IQR ms", "images/s"],
                                rows)


def format_session_table(reports: Dict[str, LatencyReport], labels: Dict[str, str]) -> str:
    """One session of :func:`compare_each` (a sweep): the original once, then each pruned model
    (``labels``: report name -> row label) with its median ms per batch of N and its speed-up
    over the original's ms in the first row."""
    first = next(iter(reports.values()))
    sizes = [k.batch_size for k in first.comparisons]
    header = ["model", "MACs"]
    for b in sizes:
        header += [f"ms per batch of {b}", f"speed-up b{b}"]
    rows = [["original", human(first.macs["original"])]]
    for k in first.comparisons:
        rows[0] += [format_ms(k.original.median_ms), "1.00x"]
    for name, r in reports.items():
        row = [labels.get(name, name), human(r.macs["pruned"])]
        for k in r.comparisons:
            row += [format_ms(k.pruned.median_ms), f"{k.speedup:.2f}x"]
        rows.append(row)
    return (latency_head(first) + "; the original timed once, with every pruned model\n"
            + table(header, rows)
            + "\n(speed-up = the original's ms / the model's ms, both shown; MACs: fvcore's "
              "'flop' = one multiply-add)")


# --------------------------------------------------------------------------------------------
# An exported ONNX file, timed in its onnxruntime session (`tp-vgg profile --model FILE.onnx`).

def time_onnx(model: OnnxModel, batch_sizes: Sequence[int], warmup: int = 3,
              repeats: int = 20) -> LatencyReport:
    """Median latency of the onnxruntime session per batch size (wall clock, after warm-up)."""
    info = model.info
    timings: Dict[int, Dict[str, Timing]] = {}
    g = torch.Generator().manual_seed(0)
    for b in batch_sizes:
        x = torch.randn(b, info.in_channels, *input_hw(info.input_size), generator=g).numpy()
        feed = {info.input_name: x}
        for _ in range(warmup):
            model.session.run(None, feed)
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.session.run(None, feed)
            samples.append((time.perf_counter() - t0) * 1e3)
        timings[b] = {"model": Timing.from_samples(samples)}
    threads = model.session.get_session_options().intra_op_num_threads
    cfg = LatencyConfig(batch_sizes=tuple(batch_sizes), device="cpu", warmup=warmup,
                        repeats=repeats, threads=threads)
    env = {"device": "cpu (onnxruntime)", "onnxruntime": onnxruntime_version(), "threads": threads}
    return LatencyReport(cfg, timings, [], {}, env)
