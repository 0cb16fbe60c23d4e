"""The prune job as a library: tp_vgg.PruneJob / tp_vgg.run / tp_vgg.sweep, and the README's
example, run as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import tp_vgg
from tp_vgg.models.zoo import ModelSpec

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- readme-example: prune-job -->\n```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its prune-job example"
    return m.group(1)


def test_readme_example_prunes_to_3x_and_fine_tunes(tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert "tp_vgg.PruneJob" in code and "tp_vgg.run" in code
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    result = scope["result"]
    assert result.report["macs_reduction"] >= 3.0                    # the target is reached
    assert result.report["target"]["target"]["speedup"] == 3
    assert result.report["target"]["reached_speedup"] >= 3.0
    acc = result.accuracy
    assert set(acc) == {"before", "pruned", "recalibrated", "finetuned"}
    assert all(0.0 <= v <= 1.0 for v in acc.values())
    out = tmp_path / "runs" / "job"
    assert sorted(p.name for p in out.iterdir()) == ["finetune", "pruned.pt", "report.json"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["after"]["macs"] == result.after.macs
    assert rep["accuracy"]["finetuned"] == acc["finetuned"]
    # the saved model is the returned one: same outputs
    loaded, spec = scope["model"].eval(), result.spec
    x = spec.example_input()
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model.eval()(x))
    assert "fewer MACs" in capsys.readouterr().out


def test_run_without_out_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    logged = []
    job = tp_vgg.PruneJob(tp_vgg.ModelSource(spec=ModelSpec("cifar_vgg11", width=0.125)),
                          tp_vgg.PruneConfig(ratio=0.5))
    result = tp_vgg.run(job, log=logged.append)
    assert list(tmp_path.iterdir()) == []
    assert result.before.macs > 3.5 * result.after.macs and result.out_dir is None
    assert result.history and result.accuracy == {}
    assert any("total" in line for line in logged)
    assert not any(line.startswith("wrote") for line in logged)


def test_job_checks_its_parts_and_names_the_field():
    job = tp_vgg.PruneJob(tp_vgg.ModelSource(spec=ModelSpec("cifar_vgg11", width=0.125)),
                          tp_vgg.PruneConfig(importance="taylor"))
    with pytest.raises(tp_vgg.UserError, match="PruneJob.finetune.data"):
        tp_vgg.run(job)
    with pytest.raises(tp_vgg.UserError, match="ModelSource"):
        tp_vgg.run(tp_vgg.PruneJob(tp_vgg.ModelSource()))


def test_sweep_runs_the_job_at_each_ratio(tmp_path):
    job = tp_vgg.PruneJob(tp_vgg.ModelSource(spec=ModelSpec("cifar_vgg11", width=0.125)))
    record = tp_vgg.sweep(job, [0.5, 0.25], tmp_path, log=lambda m: None)
    assert [r["ratio"] for r in record["runs"]] == [0.25, 0.5]
    macs = [json.loads((tmp_path / r["dir"] / "report.json").read_text())["after"]["macs"]
            for r in record["runs"]]
    assert macs[0] > macs[1]
    assert json.loads((tmp_path / "sweep.json").read_text())["ratios"] == [0.25, 0.5]
    assert (tmp_path / "report.md").is_file()


def test_readme_stages_example_runs(tmp_path, monkeypatch):
    """README's "stages by hand" example runs as written, with the module paths it names."""
    m = re.search(r"<!-- readme-example: stages -->\n```python\n(.*?)```", README.read_text(
        encoding="utf-8"), re.S)
    assert m, "README.md lost its stages example"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(m.group(1), "README.md", "exec"), scope)
    assert scope["after"].macs < scope["before"].macs / 3   # half the channels: ~4x fewer MACs
    assert (tmp_path / "pruned.pt").is_file()
