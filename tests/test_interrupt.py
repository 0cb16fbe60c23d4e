"""SIGINT and SIGTERM at every moment: during the imports (one line, 130/143, no traceback), in
the middle of fine-tuning (stops at the next step: a resumable last.pt, never a pruned.pt), and
the printed resume command, run as printed, finishing the job (pruned.pt and report.json)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tp_vgg
from resume_util import assert_same_weights
from tp_vgg.checkpoint import store as checkpoint
from tp_vgg.data.datasets import DataConfig, load_data
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.train import interrupt
from tp_vgg.train import loop as train_loop
from tp_vgg.train.loop import ResumePoint, TrainConfig, fit, resume, seed_everything

USER_MODEL = Path(__file__).parent / "user_models" / "vgg_no_bn.py"
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _env():
    """The child runs the tp_vgg this test imports, on one thread."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(tp_vgg.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _tp_vgg() -> list:
    """The console script next to this Python (what a user runs), else ``python -m tp_vgg``."""
    script = Path(sys.executable).parent / "tp-vgg"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tp_vgg"]


def _files(out: Path) -> list:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_imports_is_one_line(tmp_path, signum):
    proc = subprocess.Popen(_tp_vgg() + ["prune", "--model", "cifar_vgg11_bn", "--ratio", "0.5",
                                         "--out", str(tmp_path / "p")],
                            env=_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == CODES[signum], (proc.returncode, err)
    assert err == "tp-vgg: interrupted\n", err
    assert out == "" and not (tmp_path / "p").exists()


PRUNE = ["prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--ratio", "0.5",
         "--data", "digits", "--finetune-epochs", "2", "--batch-size", "16",
         "--progress", "plain", "--threads", "1", "--device", "cpu"]


# ~20 s each on a loaded 2-core machine (two process starts, about one epoch of digits): SIGINT
# runs by default; SIGTERM takes the same path (its 143 is also checked in-process below)
@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM,
                                                                marks=pytest.mark.slow)])
def test_a_signal_mid_finetuning_then_the_printed_resume_finishes_the_job(tmp_path, signum):
    out = tmp_path / "p"
    proc = subprocess.Popen(_tp_vgg() + PRUNE + ["--out", str(out)], env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("epoch 1/2"):  # printed once epoch 1's last.pt is written
                time.sleep(0.3)               # inside epoch 2 (~90 steps of 16 images)
                sent = time.monotonic()
                proc.send_signal(signum)
                break
        rest, err = proc.communicate(timeout=120)
        stopped_in = time.monotonic() - sent
    finally:
        proc.kill()
    if "wrote" in rest and (out / "pruned.pt").exists():
        pytest.skip("the signal arrived after fine-tuning; the machine is too loaded")
    assert proc.returncode == CODES[signum], (proc.returncode, err, rest)
    assert stopped_in < 10, stopped_in
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"tp-vgg: interrupted; {out / 'finetune' / 'last.pt'} (stopped at ")
    assert lines[0].endswith(f"continue with tp-vgg prune --resume {out}"), lines[0]
    assert not (out / "pruned.pt").exists() and not (out / "report.json").exists()
    assert not [f for f in _files(out) if f.endswith(".tmp")]
    state = checkpoint.load_checkpoint(str(out / "finetune" / "last.pt")).train_state
    assert state["epoch"] == 1 and 0 < state["step"] < state["steps_per_epoch"], state["epoch"]

    printed = shlex.split(lines[0].split("continue with ", 1)[1])
    assert printed[0] == "tp-vgg"
    res = subprocess.run(_tp_vgg() + printed[1:], env=_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"wrote {out / 'pruned.pt'} and report.json" in res.stdout
    report = json.loads((out / "report.json").read_text())
    assert set(report["accuracy"]) == {"before", "pruned", "recalibrated", "finetuned"}
    assert report["after"]["macs"] < report["before"]["macs"]
    ck = checkpoint.load_checkpoint(str(out / "pruned.pt"))
    assert ck.history and ck.meta["accuracy"] == report["accuracy"]
    assert checkpoint.load_checkpoint(str(out / "finetune" / "last.pt")).train_state["epoch"] == 2
    assert not (out / "resume.json").exists()


# --- in-process: the exact continuation, and a user model's resume command ------------------

SPEC = ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=10).resolved()
DATA = DataConfig("fake", kwargs={"train_size": 96, "test_size": 32})


def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights(tmp_path):
    data = load_data(DATA)
    cfg = TrainConfig(epochs=2, batch_size=16, optimizer="adamw", schedule="cosine",
                      warmup_epochs=1, progress="none")

    def run(out, after_step=None):
        seed_everything(cfg.seed)
        return fit(build_model(SPEC), SPEC, data, cfg, str(out), data_cfg=DATA,
                   after_step=after_step, log=lambda s: None)

    run(tmp_path / "full")
    steps = []

    def signal_at_step_8():  # as if Ctrl-C came during step 8 (epoch 2, step 2)
        steps.append(1)
        if len(steps) == 8:
            interrupt._state.requested = signal.SIGINT
    with pytest.raises(interrupt.Interrupted) as stop:
        run(tmp_path / "cut", signal_at_step_8)
    last = tmp_path / "cut" / "last.pt"
    assert stop.value.kept == str(last) and stop.value.where == "epoch 2/2, step 2/6"
    assert stop.value.resume.command == "train" and interrupt.requested() is None
    state = checkpoint.load_checkpoint(str(last)).train_state
    assert (state["epoch"], state["step"], state["steps_per_epoch"]) == (1, 2, 6)
    res = resume(ResumePoint.read(str(last)), data, log=lambda s: None)
    assert res.epochs == 2 and len(res.records) == 2
    assert_same_weights(checkpoint.load_checkpoint(str(tmp_path / "full" / "last.pt")).state_dict,
                        checkpoint.load_checkpoint(str(last)).state_dict)
    full = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[-1])
    cut = json.loads((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()[-1])
    assert cut["train_loss"] == full["train_loss"] and cut["test_top1"] == full["test_top1"]


def test_a_user_models_prune_resumes_as_printed_to_the_same_outputs(run_cli, tmp_path,
                                                                    monkeypatch):
    args = ["prune", "--model", f"{USER_MODEL}:make", "--ratio", "0.5", "--data", "fake",
            "--data-kwargs", '{"train_size": 64, "test_size": 16}', "--finetune-epochs", "2",
            "--batch-size", "16", "--progress", "none", "--threads", "1", "--device", "cpu"]
    full = run_cli(*args, "--out", tmp_path / "full")
    assert full.code == 0, full.err

    original = train_loop.train_one_epoch

    def signal_in_epoch_2(engine, batches, epoch, *a, **kw):  # Ctrl-C in epoch 2's first step
        if epoch == 1 and not kw.get("skip"):
            interrupt._state.requested = signal.SIGINT
        return original(engine, batches, epoch, *a, **kw)
    monkeypatch.setattr(train_loop, "train_one_epoch", signal_in_epoch_2)
    out = tmp_path / "cut"
    cut = run_cli(*args, "--out", out)
    assert cut.code == 130
    assert cut.err == (f"tp-vgg: interrupted; {out / 'finetune' / 'last.pt'} (stopped at epoch "
                       f"2/2, step 1/4) is kept: continue with tp-vgg prune --resume {out} "
                       "--trust-model-code\n")
    assert not (out / "pruned.pt").exists() and (out / "resume.json").exists()
    monkeypatch.setattr(train_loop, "train_one_epoch", original)

    printed = shlex.split(cut.err.split("continue with ", 1)[1])
    without = run_cli(*[a for a in printed[1:] if a != "--trust-model-code"])
    assert without.code == 2 and "--trust-model-code" in without.err  # why the flag is printed
    done = run_cli(*printed[1:], "--log-every", "5")  # how it reports may change, as for train
    assert done.code == 0, done.err
    report = lambda d: json.loads((d / "report.json").read_text())  # noqa: E731
    assert report(out) == report(tmp_path / "full")
    assert_same_weights(
        checkpoint.load_checkpoint(str(tmp_path / "full" / "pruned.pt"), trust_model_code=True).state_dict,
        checkpoint.load_checkpoint(str(out / "pruned.pt"), trust_model_code=True).state_dict)
    again = run_cli("prune", "--resume", out)
    assert again.code == 2 and "has finished" in again.err


def test_prune_resume_refuses_a_folder_without_a_job_and_other_settings(run_cli, tmp_path):
    r = run_cli("prune", "--resume", tmp_path)
    assert r.code == 2 and "holds no interrupted prune job" in r.err
    assert len(r.err.strip().splitlines()) == 1
    r = run_cli("prune", "--resume", tmp_path, "--ratio", "0.3")
    assert r.code == 2 and r.err.startswith("tp-vgg: error: --ratio cannot be given with --resume")


def test_a_user_models_training_stopped_mid_epoch_resumes_as_printed(run_cli, tmp_path,
                                                                     monkeypatch):
    original = train_loop.train_one_epoch

    def signal_in_epoch_1(engine, batches, epoch, *a, **kw):
        if epoch == 0:
            interrupt._state.requested = signal.SIGTERM
        return original(engine, batches, epoch, *a, **kw)
    monkeypatch.setattr(train_loop, "train_one_epoch", signal_in_epoch_1)
    out = tmp_path / "t"
    r = run_cli("train", "--model", f"{USER_MODEL}:make", "--data", "fake", "--data-kwargs",
                '{"train_size": 64, "test_size": 16}', "--epochs", "2", "--batch-size", "16",
                "--progress", "none", "--threads", "1", "--device", "cpu", "--out", out)
    assert r.code == 143
    last = out / "last.pt"
    assert r.err == (f"tp-vgg: interrupted; {last} (stopped at epoch 1/2, step 1/4) is kept: "
                     f"continue with tp-vgg train --resume {last} --trust-model-code\n")
    monkeypatch.setattr(train_loop, "train_one_epoch", original)
    done = run_cli(*shlex.split(r.err.split("continue with ", 1)[1])[1:])
    assert done.code == 0, done.err
    assert f"resuming {last} after epoch 0/2 and step 1 of epoch 1" in done.out
    state = checkpoint.load_checkpoint(str(last), trust_model_code=True).train_state
    assert state["epoch"] == 2 and not state.get("step")
