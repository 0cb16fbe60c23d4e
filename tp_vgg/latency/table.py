"""The per-layer latency table: each prunable layer timed at candidate widths, on the user's
device and runtime, cached on disk.

A model is cut into *segments*, one per prunable layer (Conv2d or Linear): the layer and the
leaf modules that run after it up to the next prunable layer (its folded BatchNorm, ReLU,
pooling, dropout ...), captured in execution order with forward hooks on the model in its
deployment form (:func:`tp_vgg.latency.timing.prepare`). Each segment is rebuilt standalone at
``(c_in, c_out)`` -- a fresh layer of the same kernel, stride, padding and input size, the
followers copied (normalization layers rebuilt at ``c_out``) -- and timed in the runtime
(:mod:`tp_vgg.latency.runtimes`) at the batch size asked for: median of ``repeats`` passes after
``warmup``. The grid is eighths of each dimension (1/8 ... 1, down to what ``max_layer_ratio``
allows); :meth:`LatencyTable.lookup` interpolates bilinearly between grid points.

Fast widths: :func:`scan` times one mid-sized convolution at every output width of the upper half
of its range. Kernels compute channels in blocks (oneDNN: the SIMD width; GPUs: tensor-core tiles),
so a width just above a multiple of the block costs what the next multiple costs. :func:`learn_block`
finds the largest multiple ``k`` for which widths half-way between multiples of ``k`` run as slowly
as the next multiple (``--round-to auto``); predictions round each conv width up to it.

The cache is one JSON file per :class:`TableKey` -- device and its hardware, runtime and its
version, threads, batch size, input size, dtype and layout, torch version -- under
``cache_dir()/latency/``; entries are keyed by the segment's geometry, so models that share a
layer shape share its timings. A file that is not a table of this version is ignored and
rewritten; nothing in it is executed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import re
import statistics
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from tp_vgg.errors import UserError
from tp_vgg.files import write_json
from tp_vgg.latency import runtimes

VERSION = 1
FRACTIONS = tuple(i / 8 for i in range(1, 9))
SCAN_WIDTHS = 128           # widths timed by :func:`scan` (the upper half of the layer, at most)
BLOCK_CANDIDATES = (2, 4, 8, 16, 32, 64)
MIN_TIMED_MS = 30.0         # each point is timed for at least this long (more passes when short)
MAX_REPEATS = 200
BLOCK_THRESHOLD = 0.5       # share of the next multiple's extra cost a half-way width must pay


def cache_dir(override: Optional[str] = None) -> str:
    """``override``, else ``$TP_VGG_CACHE``, else ``$XDG_CACHE_HOME/tp-vgg`` (``~/.cache/tp-vgg``)."""
    if override:
        return override
    if os.environ.get("TP_VGG_CACHE"):
        return os.environ["TP_VGG_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tp-vgg")


def hardware(device: torch.device) -> str:
    """What the device is: the GPU's name, or the CPU's model name and vector capability."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


@dataclass(frozen=True)
class TableKey:
    """Everything a timing depends on besides the layer: one cache file per key."""

    device: str
    hardware: str
    runtime: str
    runtime_version: str
    threads: int
    batch_size: int
    input_size: str          # "HxW"
    dtype: str = "fp32"
    channels_last: bool = True
    fuse_bn: bool = True
    torch: str = torch.__version__

    def file_name(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-",
                      f"{self.device}_{self.runtime}_t{self.threads}_b{self.batch_size}_"
                      f"{self.input_size}")
        return f"{slug}_{digest}.json"


# --------------------------------------------------------------------------------------------
# Segments.

@dataclass
class Segment:
    """A prunable layer and the modules that follow it, rebuildable at any width."""

    name: str
    layer: nn.Module                      # the prepared model's Conv2d or Linear
    in_shape: Tuple[int, ...]             # the layer's input without the batch dimension
    followers: List[nn.Module] = field(default_factory=list)
    stopped_at: Optional[str] = None      # a follower it could not rebuild (timed in the rest)

    @property
    def conv(self) -> bool:
        return isinstance(self.layer, nn.Conv2d)

    @property
    def c_in(self) -> int:
        return self.layer.in_channels if self.conv else self.layer.in_features

    @property
    def c_out(self) -> int:
        return self.layer.out_channels if self.conv else self.layer.out_features

    @property
    def grouped(self) -> bool:
        """A grouped convolution: timed at full width only, scaled by its MACs."""
        return self.conv and self.layer.groups != 1

    @property
    def signature(self) -> str:
        l = self.layer
        if self.conv:
            geo = dict(kind="conv", kernel=list(l.kernel_size), stride=list(l.stride),
                       padding=str(l.padding), dilation=list(l.dilation), groups=l.groups,
                       bias=l.bias is not None, mode=l.padding_mode)
        else:
            geo = dict(kind="linear", bias=l.bias is not None)
        geo["in"] = list(self.in_shape[1:]) if self.conv else list(self.in_shape[:-1])
        geo["then"] = [_describe(m) for m in self.followers]
        if self.grouped:
            geo["channels"] = [self.c_in, self.c_out]
        return json.dumps(geo, sort_keys=True)

    def build(self, c_in: int, c_out: int) -> nn.Module:
        l = self.layer
        if self.conv:
            first = nn.Conv2d(c_in, c_out, l.kernel_size, l.stride, l.padding, l.dilation,
                              l.groups if self.grouped else 1, l.bias is not None, l.padding_mode)
        else:
            first = nn.Linear(c_in, c_out, l.bias is not None)
        rest = [_resized(m, c_out) for m in self.followers]
        return nn.Sequential(first, *rest).eval()

    def input(self, c_in: int, batch: int) -> Tuple[int, ...]:
        if self.conv:
            return (batch, c_in) + tuple(self.in_shape[1:])
        return (batch,) + tuple(self.in_shape[:-1]) + (c_in,)


def _describe(m: nn.Module) -> str:
    if _stateless(m):
        return repr(m)
    return type(m).__name__ + (f"(groups={m.num_groups})" if isinstance(m, nn.GroupNorm) else "")


def _stateless(m: nn.Module) -> bool:
    return next(m.parameters(), None) is None and next(m.buffers(), None) is None


def _resized(m: nn.Module, c: int) -> Optional[nn.Module]:
    """``m`` for ``c`` channels: a copy when it has no state, normalization layers rebuilt; None
    when it cannot be rebuilt."""
    if _stateless(m):
        return copy.deepcopy(m)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return type(m)(c, eps=m.eps, affine=m.affine, track_running_stats=m.track_running_stats)
    if isinstance(m, nn.modules.instancenorm._InstanceNorm):
        return type(m)(c, eps=m.eps, affine=m.affine, track_running_stats=m.track_running_stats)
    if isinstance(m, nn.GroupNorm) and c % m.num_groups == 0:
        return nn.GroupNorm(m.num_groups, c, m.eps, m.affine)
    if isinstance(m, nn.PReLU) and m.num_parameters == 1:
        return copy.deepcopy(m)
    return None


def segments(prepared: nn.Module, example: torch.Tensor) -> Dict[str, Segment]:
    """The segments of ``prepared`` (a model in its deployment form), by layer name, in
    execution order. Leaves before the first prunable layer belong to none."""
    order: List[Tuple[str, nn.Module, Tuple[int, ...]]] = []
    handles = []
    for name, m in prepared.named_modules():
        if next(m.children(), None) is None:
            handles.append(m.register_forward_pre_hook(
                lambda mod, inp, name=name: order.append(
                    (name, mod, tuple(inp[0].shape[1:]) if inp and torch.is_tensor(inp[0])
                     else ()))))
    try:
        with torch.inference_mode():
            prepared(example)
    finally:
        for h in handles:
            h.remove()
    out: Dict[str, Segment] = {}
    current: Optional[Segment] = None
    for name, m, shape in order:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if name in out:  # a layer run twice: its first segment stands
                current = None
                continue
            current = out[name] = Segment(name, m, shape)
        elif current is not None and current.stopped_at is None:
            if _resized(m, current.c_out) is None:
                current.stopped_at = name
            else:
                current.followers.append(m)
    return out


# --------------------------------------------------------------------------------------------
# The table.

def grid(c: int, lowest: float, unit: int = 1, block: int = 1) -> List[int]:
    """Widths of a dimension of ``c`` channels (x ``unit`` features each) at eighths of it, from
    ``lowest`` (a fraction) up, rounded up to multiples of ``block`` where that stays <= c."""
    out = set()
    for f in FRACTIONS:
        if f < lowest - 1 / 8 + 1e-9:
            continue
        w = max(1, round(c * f))
        if block > 1 and w % block and -(-w // block) * block <= c:
            w = -(-w // block) * block
        out.add(w * unit)
    out.add(c * unit)
    return sorted(out)


class LatencyTable:
    """Timings (ms) of segments at widths, for one :class:`TableKey`, cached in ``path``."""

    def __init__(self, key: TableKey, folder: str, warmup: int = 2, repeats: int = 7,
                 min_timed_ms: float = MIN_TIMED_MS):
        self.key = key
        self.path = os.path.join(folder, "latency", key.file_name())
        self.warmup, self.repeats, self.min_timed_ms = warmup, repeats, min_timed_ms
        self.entries: Dict[str, Dict[str, float]] = {}
        self.scans: Dict[str, Dict[str, float]] = {}
        self.timed = 0            # measurements made by this process
        self.loaded = 0           # entries read from the cache file
        self._parsed: Dict[str, tuple] = {}
        self._read()

    def _read(self) -> None:
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return
        if not (isinstance(data, dict) and data.get("version") == VERSION
                and data.get("key") == asdict(self.key)):
            return
        for name in ("entries", "scans"):
            part = data.get(name)
            if isinstance(part, dict):
                clean = {sig: {k: float(v) for k, v in d.items()
                               if isinstance(k, str) and re.fullmatch(r"\d+,\d+", k)
                               and isinstance(v, (int, float)) and math.isfinite(v) and v > 0}
                         for sig, d in part.items() if isinstance(d, dict)}
                setattr(self, name, clean)
        self.loaded = sum(len(d) for d in self.entries.values()) + sum(
            len(d) for d in self.scans.values())

    def save(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._write()
        except OSError as e:
            raise UserError(f"cannot write the latency table {self.path!r} ({e.strerror or e}); "
                            "give a writable folder with --latency-cache DIR or $TP_VGG_CACHE") \
                from None

    def _write(self) -> None:
        write_json(self.path, {"version": VERSION, "units": "milliseconds per forward pass of "
                               "the segment at the key's batch size (median)",
                               "key": asdict(self.key), "entries": self.entries,
                               "scans": self.scans})

    # timing -----------------------------------------------------------------------------------

    def _time(self, seg: Segment, points: Iterable[Tuple[int, int]], store: Dict[str, float],
              device: torch.device, dtype: torch.dtype) -> None:
        from tp_vgg.latency.timing import Timing, _timer

        runtime = runtimes.get(self.key.runtime)
        timer, wall = _timer(device), _timer(torch.device("cpu"))
        with torch.inference_mode():
            for c_in, c_out in points:
                key = f"{c_in},{c_out}"
                if key in store:
                    continue
                self._parsed.pop(seg.signature, None)
                m = seg.build(c_in, c_out).to(device=device, dtype=dtype)
                g = torch.Generator().manual_seed(0)
                x = torch.randn(seg.input(c_in, self.key.batch_size), generator=g)
                x = x.to(device=device, dtype=dtype)
                if self.key.channels_last and x.dim() == 4:
                    m = m.to(memory_format=torch.channels_last)
                    x = x.contiguous(memory_format=torch.channels_last)
                run = runtime.load(m, x, self.key.threads)
                for _ in range(self.warmup):
                    run()
                clock = wall if run.wall_clock else timer
                first = clock(run)
                # short layers get more passes: at least MIN_TIMED_MS of samples per point
                n = min(max(self.repeats, math.ceil(self.min_timed_ms / max(first, 1e-3))),
                        MAX_REPEATS)
                samples = [first] + [clock(run) for _ in range(n - 1)]
                store[key] = Timing.from_samples(samples).median_ms
                self.timed += 1

    def ensure(self, seg: Segment, cins: Sequence[int], couts: Sequence[int],
               device: torch.device, dtype: torch.dtype) -> None:
        """Time ``seg`` at every (c_in, c_out) not in the table yet."""
        if seg.grouped:
            cins, couts = [seg.c_in], [seg.c_out]
        self._time(seg, [(i, o) for i in cins for o in couts],
                   self.entries.setdefault(seg.signature, {}), device, dtype)

    def lookup(self, seg: Segment, c_in: float, c_out: float, cins: Sequence[int],
               couts: Sequence[int]) -> float:
        """Milliseconds of ``seg`` at (c_in, c_out): bilinear between the grid points ``cins`` x
        ``couts`` (timed by :meth:`ensure`; linear beyond them)."""
        if seg.grouped:
            full = self.entries[seg.signature][f"{seg.c_in},{seg.c_out}"]
            return full * (c_in * c_out) / (seg.c_in * seg.c_out)
        pts = self._parsed.get(seg.signature)
        if pts is None:
            pts = self._parsed[seg.signature] = {
                tuple(int(v) for v in k.split(",")): t
                for k, t in (self.entries.get(seg.signature) or {}).items()}
        x0, x1 = _bracket(cins, c_in)
        y0, y1 = _bracket(couts, c_out)

        def lerp(a, b, ta, tb, v):
            return ta if a == b else ta + (tb - ta) * (v - a) / (b - a)

        lo = lerp(x0, x1, pts[x0, y0], pts[x1, y0], c_in)
        hi = lerp(x0, x1, pts[x0, y1], pts[x1, y1], c_in)
        return lerp(y0, y1, lo, hi, c_out)

    def scan(self, seg: Segment, device: torch.device, dtype: torch.dtype) -> Dict[int, float]:
        """``seg`` timed at every output width of the upper half of its range (at most
        :data:`SCAN_WIDTHS`), input at full width."""
        c = seg.c_out
        widths = range(max(1, c - SCAN_WIDTHS + 1, c // 2), c + 1)
        store = self.scans.setdefault(seg.signature + f"|in={seg.c_in}", {})
        self._time(seg, [(seg.c_in, w) for w in widths], store, device, dtype)
        return {int(k.split(",")[1]): v for k, v in store.items()}


def _bracket(xs: List[int], v: float) -> Tuple[int, int]:
    """The two grid points around ``v`` (the nearest two at either end)."""
    if len(xs) == 1:
        return xs[0], xs[0]
    for a, b in zip(xs, xs[1:]):
        if v <= b:
            return a, b
    return xs[-2], xs[-1]


def scan_segment(segs: Dict[str, Segment]) -> Optional[Segment]:
    """The convolution scanned for fast widths: the one with the most MACs per image among those of
    32 to 256 output channels (where a block's padding is a visible share of the time), else the
    one with the most MACs."""
    convs = [s for s in segs.values() if s.conv and not s.grouped]
    if not convs:
        return None

    def macs(s: Segment) -> float:
        k = s.layer.kernel_size
        hw = math.prod(s.in_shape[1:]) / math.prod(s.layer.stride)
        return s.c_in * s.c_out * k[0] * k[1] * hw

    mid = [s for s in convs if 32 <= s.c_out <= 256]
    return max(mid or convs, key=macs)


def learn_block(times: Dict[int, float]) -> Tuple[int, Dict[int, float]]:
    """The fast channel multiple from a width scan, and each candidate's score: for a multiple k,
    the widths half-way between multiples of k (w = k/2 mod k) against the next multiple c: how much
    of the cost a proportional kernel would save at w (1 - w/c) is *not* saved (1: w costs what c
    costs, the kernel pads to blocks of k; 0: time is proportional to width). The answer is the
    largest k whose score, and the score of every smaller candidate, is at least
    :data:`BLOCK_THRESHOLD` (padding to blocks of k also pads every width between multiples of
    the smaller candidates; 1 when none passes)."""
    scores: Dict[int, float] = {}
    for k in BLOCK_CANDIDATES:
        ratios, ideals = [], []
        for w, t in times.items():
            if w % k != k // 2:
                continue
            c = w + k // 2
            if c in times:
                ratios.append(t / times[c])
                ideals.append(w / c)
        if len(ratios) < 2:
            continue
        r, e = statistics.median(ratios), statistics.median(ideals)
        scores[k] = (r - e) / (1 - e)
    block = 1
    for k in BLOCK_CANDIDATES:
        if k not in scores:
            continue
        if scores[k] < BLOCK_THRESHOLD:
            break
        block = k
    return block, scores


def off_block_factor(times: Dict[int, float], block: int) -> float:
    """How much slower a width that is not a multiple of ``block`` runs than the next multiple:
    the median of T(w) / T(next multiple) over the scan (1.0: it costs what the multiple costs, the
    kernel pads; ONNX Runtime's blocked NCHWc kernels take only multiples and fall back to slower
    ones otherwise)."""
    if block <= 1:
        return 1.0
    ratios = [t / times[-(-w // block) * block] for w, t in times.items()
              if w % block and -(-w // block) * block in times]
    return max(1.0, statistics.median(ratios)) if ratios else 1.0


def ceil_to(v: float, block: int, limit: int) -> float:
    """``v`` rounded up to a multiple of ``block``, at most ``limit``."""
    if block <= 1:
        return v
    return min(float(limit), math.ceil(v / block - 1e-9) * block)
