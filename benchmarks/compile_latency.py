"""(b) Does torch.compile make the deployment form faster? Eager against compiled
``cifar_vgg16_bn`` (BN folded, channels-last), interleaved medians, batch 1 and 64.

    python benchmarks/compile_latency.py --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch

from tp_vgg.latency.timing import LatencyConfig, measure, prepare
from tp_vgg.models.zoo import ModelSpec, build_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--tiny", default="0")
    p.add_argument("--threads", type=int)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    spec = ModelSpec("cifar_vgg16_bn", width=0.25 if a.tiny == "1" else None).resolved()
    cfg = LatencyConfig(batch_sizes=(1, 64), device=a.device, channels_last=True, fuse_bn=True,
                        repeats=30)
    eager = prepare(build_model(spec), cfg)
    t0 = time.perf_counter()
    compiled = torch.compile(prepare(build_model(spec), cfg))
    with torch.inference_mode():
        for b in cfg.batch_sizes:
            compiled(torch.randn(b, 3, 32, 32, device=a.device).contiguous(
                memory_format=torch.channels_last))
    print(f"compile (both batch sizes) {time.perf_counter() - t0:.1f} s on {a.device}")
    for b, t in measure({"eager": eager, "compiled": compiled}, spec, cfg, prepared=True).items():
        print(f"batch {b}: eager {t['eager'].median_ms:.3f} ms, torch.compile "
              f"{t['compiled'].median_ms:.3f} ms, eager / compiled {t['eager'].median_ms / t['compiled'].median_ms:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
