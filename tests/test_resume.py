"""--resume continues exactly: the same final weights as an uninterrupted run, also after a
SIGKILL in the middle of an epoch."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import tp_vgg
from tp_vgg.checkpoint import store as checkpoint
from tp_vgg.data.datasets import DataConfig, load_data
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.train.loop import ResumePoint, TrainConfig, fit, resume, seed_everything

SPEC = ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=10).resolved()
DATA = DataConfig("fake", kwargs={"train_size": 96, "test_size": 32})




class Stop(Exception):
    pass


def _weights(path):
    return checkpoint.load_checkpoint(str(path)).state_dict


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_resume_after_an_interruption_gives_the_same_weights(tmp_path):
    data = load_data(DATA)
    cfg = TrainConfig(epochs=3, batch_size=32, optimizer="adamw", schedule="cosine",
                      warmup_epochs=1, label_smoothing=0.1, progress="plain")

    def run(out, log=lambda s: None):
        seed_everything(cfg.seed)
        return fit(build_model(SPEC), SPEC, data, cfg, str(out), data_cfg=DATA, log=log)

    run(tmp_path / "full")

    def stop_after_epoch_2(line):
        if line.startswith("epoch 2/"):
            raise Stop
    with pytest.raises(Stop):
        run(tmp_path / "cut", stop_after_epoch_2)
    assert checkpoint.load_checkpoint(str(tmp_path / "cut" / "last.pt")).train_state["epoch"] == 2
    resume(ResumePoint.read(str(tmp_path / "cut" / "last.pt")), data)
    _assert_same(_weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "cut" / "last.pt"))
    full = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    cut = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert len(cut) == 3 and [l.split('"lr"')[1][:20] for l in full] == [l.split('"lr"')[1][:20] for l in cut]


def _cli_env():
    """The child runs the tp_vgg this test imports, installed or not."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(tp_vgg.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    return env


TRAIN = ["train", "--model", "cifar_vgg11_bn", "--width", "0.125", "--data", "fake",
         "--data-kwargs", '{"train_size": 768, "test_size": 32}', "--epochs", "3",
         "--batch-size", "32", "--progress", "plain", "--threads", "1", "--device", "cpu"]


def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(tmp_path):
    cmd = [sys.executable, "-m", "tp_vgg"]
    env = _cli_env()
    ref = subprocess.run(cmd + TRAIN + ["--out", str(tmp_path / "ref")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd + TRAIN + ["--out", str(out)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("epoch 1/3"):  # printed after last.pt of epoch 1 is written
                epoch_s = float(re.search(r"([\d.]+)s$", line.strip()).group(1))
                time.sleep(epoch_s * 0.4)    # well inside epoch 2
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    kept = checkpoint.load_checkpoint(str(out / "last.pt"))
    assert kept.train_state["epoch"] == 1, "the kill did not land in epoch 2; the machine is too loaded"
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # nothing half-written is left

    res = subprocess.run(cmd + ["train", "--resume", str(out / "last.pt"), "--threads", "1"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    epochs = re.findall(r"^epoch (\d)/3", res.stdout, flags=re.M)
    assert "resuming" in res.stdout and epochs == ["2", "3"]
    _assert_same(_weights(tmp_path / "ref" / "last.pt"), _weights(out / "last.pt"))
