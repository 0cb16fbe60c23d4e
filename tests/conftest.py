"""Shared fixtures: zoo parametrization, model randomization, an in-process CLI runner."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List

import pytest
import torch
import torch.nn as nn

import tp_vgg
from tp_vgg.cli import main as cli_main
from tp_vgg.models.zoo import CIFAR_VGGS, TORCHVISION_VGGS, ModelSpec, build_model

# One intra-op thread per test process: the models under test are tiny, where two OpenMP threads
# mostly wait on each other (measured ~10x slower on a loaded 2-core machine); `make test` runs
# two pytest workers (pytest-xdist) to use both cores instead.
torch.set_num_threads(1)

# Per-model overrides keep the suite fast: torchvision VGGs at 32x32 (the adaptive pool still
# feeds the full 25088-wide classifier), a forgotten default shows through num_classes=50.
ZOO = TORCHVISION_VGGS + CIFAR_VGGS
SPEC_OVERRIDES = {name: dict(input_size=32, num_classes=50) for name in TORCHVISION_VGGS}
SPEC_OVERRIDES.update({name: dict(num_classes=50, width=0.5) for name in CIFAR_VGGS})


def zoo_spec(name: str) -> ModelSpec:
    return ModelSpec(name, **SPEC_OVERRIDES.get(name, {})).resolved()


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms (of every normalization layer that has them),
    and non-zero biases everywhere, so that a lost bias or BN term changes the output."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _NORMS):  # BN, InstanceNorm, GroupNorm; with or without affine / stats
            n = m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.weight is not None:
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
    return model


@dataclass
class PrunedCase:
    name: str
    spec: ModelSpec
    original: nn.Module
    pruned: nn.Module
    result: tp_vgg.PruneResult
    ratio: float


@pytest.fixture(scope="module", params=ZOO)
def pruned_case(request) -> PrunedCase:
    """Every zoo model, randomized, pruned once at ratio 0.5 (L1, uniform); shared by a module."""
    spec = zoo_spec(request.param)
    torch.manual_seed(0)
    original = randomize(build_model(spec)).eval()
    pruned = copy.deepcopy(original)
    result = tp_vgg.prune(pruned, spec, tp_vgg.PruneConfig(ratio=0.5))
    return PrunedCase(request.param, spec, original, pruned, result, 0.5)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture(scope="session", autouse=True)
def latency_cache(tmp_path_factory):
    """Latency tables (``--round-to auto``, ``--target-latency``) go to one folder per test
    session, never the user's ~/.cache: shared by the tests, so a shape is timed once."""
    folder = tmp_path_factory.mktemp("tp-vgg-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TP_VGG_CACHE", str(folder))
        yield folder


@pytest.fixture
def run_cli(capsys):
    def run(*args: str) -> CliResult:
        code = cli_main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)
    return run


def conv_and_linear(model: nn.Module) -> List[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
