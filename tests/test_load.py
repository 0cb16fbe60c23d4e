"""Load: repeated prune -> save -> load in one process does not grow memory, and concurrent
`tp-vgg prune` runs with different --out do not interfere. The 200-cycle measurement is
benchmarks/load_cycles.py (figures in BENCHMARKS.md); these are the small default-run versions."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

import tp_vgg
from tp_vgg.models.zoo import ModelSpec, build_model

USER_MODEL = str(Path(__file__).parent / "user_models" / "vgg_seq_linear.py") + ":make"




def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cycle(spec: ModelSpec, path: str, x: torch.Tensor) -> list:
    """One prune -> save -> load -> forward; weak references to every model and parameter made."""
    model = build_model(spec)
    result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))
    tp_vgg.save(path, model, spec, history=result.history)
    loaded = tp_vgg.load(path, trust_model_code=spec.is_user_factory)
    with torch.no_grad():
        loaded(x)
    return [weakref.ref(o) for m in (model, loaded) for o in (m, *m.modules(), *m.parameters())]


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
@pytest.mark.parametrize("name", ["cifar_vgg11_bn", USER_MODEL])
def test_repeated_prune_save_load_leaves_nothing_behind(tmp_path, name):
    """After warm-up, 10 more cycles leave no model, module or parameter alive and import no
    module again, and RSS stays within allocator noise. A leaked model per cycle (cifar_vgg11_bn
    at width 1/2: 9 MB) would add 90 MB; the allocator's own warm-up is up to ~100 MB in the
    first 20 cycles (benchmarks/load_cycles.py), hence the structural checks first."""
    spec = ModelSpec(name, width=0.5 if not name.endswith(":make") else None).resolved()
    path, x = str(tmp_path / "p.pt"), spec.example_input(batch=2)
    for _ in range(5):
        _cycle(spec, path, x)
    gc.collect()
    imported, rss = len(sys.modules), _rss_mb()
    refs = [r for _ in range(10) for r in _cycle(spec, path, x)]
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    assert not alive, f"{len(alive)} of {len(refs)} models/modules/parameters still alive"
    assert len(sys.modules) == imported  # a user file is imported once, not once per load
    assert _rss_mb() - rss < 60, f"RSS grew {_rss_mb() - rss:.1f} MB over 10 cycles"


def _env():
    root = os.path.dirname(os.path.dirname(os.path.abspath(tp_vgg.__file__)))
    return dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1")


def test_concurrent_runs_with_different_out_do_not_interfere(tmp_path, run_cli):
    """Three `tp-vgg prune` processes at once, in one parent folder: each leaves exactly its own
    two files, and each report equals what the same command gives alone."""
    runs = [(["--model", "cifar_vgg11_bn", "--width", "0.125"], "0.3"),
            (["--model", USER_MODEL], "0.5"),
            (["--model", "cifar_vgg11_bn", "--width", "0.125"], "0.7")]
    exe = [sys.executable, "-m", "tp_vgg", "prune"]
    procs = [subprocess.Popen(exe + model + ["--ratio", r, "--out", str(tmp_path / f"run{i}")],
                              env=_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i, (model, r) in enumerate(runs)]
    outs = [p.communicate(timeout=300) for p in procs]
    for i, ((model, r), p, (out, err)) in enumerate(zip(runs, procs, outs)):
        assert p.returncode == 0, err
        d = tmp_path / f"run{i}"
        assert sorted(f.name for f in d.iterdir()) == ["pruned.pt", "report.json"]
        report = json.loads((d / "report.json").read_text())
        assert report["config"]["ratio"] == float(r)
        alone = run_cli("prune", *model, "--ratio", r, "--out", tmp_path / f"alone{i}")
        assert alone.code == 0, alone.err
        want = json.loads((tmp_path / f"alone{i}" / "report.json").read_text())
        assert report["before"] == want["before"] and report["after"] == want["after"]
        assert report["layers"] == want["layers"]
        # the same architecture (the untrained weights are drawn per process)
        trust = model[1] == USER_MODEL  # a user model's checkpoint runs its file: consent
        loaded = tp_vgg.load(str(d / "pruned.pt"), trust_model_code=trust).state_dict()
        again = tp_vgg.load(str(tmp_path / f"alone{i}" / "pruned.pt"),
                            trust_model_code=trust).state_dict()
        assert {k: v.shape for k, v in loaded.items()} == {k: v.shape for k, v in again.items()}
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "alone0", "alone1", "alone2", "run0", "run1", "run2"]
