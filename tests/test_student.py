"""What a student met using the tool: a subset of any image dataset (--train-images /
--test-images), progress lines within an epoch (--progress plain), and one-line hints for the
mistakes of the report (an unknown flag, a ratio given in percent, an archive as --data-dir, a
checkpoint as --weights)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import tarfile
import zipfile

import pytest
import torch
from torchvision.io import encode_png

import tp_vgg
from methods_util import assert_one_line_error
from tp_vgg.cli.common import suggest_option
from tp_vgg.data.datasets import DataConfig, load_data
from tp_vgg.data.stream import decode
from tp_vgg.errors import UserError
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.train.loop import ResumePoint

TINY = ["--model", "cifar_vgg11_bn", "--width", "0.25"]


def _png(value: int, size: int = 8) -> bytes:
    img = torch.full((3, size, size), value % 256, dtype=torch.uint8)
    img[0, 0, 0] = value // 256  # every image of the folder differs
    return encode_png(img).numpy().tobytes()


def _folder(root, train: int = 6, test: int = 3, classes=("ant", "cat")):
    """root/train/<class>/*.png and root/test/<class>/*.png, each image different."""
    k = 0
    for split, n in (("train", train), ("test", test)):
        for c in classes:
            os.makedirs(root / split / c, exist_ok=True)
            for i in range(n):
                (root / split / c / f"{i}.png").write_bytes(_png(k))
                k += 1
    return root


def _rows(xs: torch.Tensor, ys: torch.Tensor, xf: torch.Tensor, yf: torch.Tensor):
    """For each (image, label) of a sample, its index in the full split (each must be there)."""
    full = torch.cat([xf.flatten(1).long(), yf[:, None]], dim=1)
    out = []
    for row in torch.cat([xs.flatten(1).long(), ys[:, None]], dim=1):
        hits = (full == row).all(dim=1).nonzero().flatten().tolist()
        assert hits, "an image of the sample (with its label) is not in the full split"
        out.append(hits[0])
    return out


# --------------------------------------------------------------------------------------------
# --train-images / --test-images

def test_a_seeded_sample_without_replacement_of_each_split():
    full = load_data(DataConfig("digits"))
    a = load_data(DataConfig("digits", train_images=100, test_images=40))
    b = load_data(DataConfig("digits", train_images=100, test_images=40))
    other = load_data(DataConfig("digits", train_images=100, test_images=40, subset_seed=1))
    assert a.train_images.shape[0] == 100 and a.test_images.shape[0] == 40
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train_images, other.train_images)
    # drawn from the split (labels kept with their images) without replacement (digits holds
    # a few identical images, which map to the first of them)
    for split, n in (("train", 100), ("test", 40)):
        rows = _rows(*a.split(split), *full.split(split))
        assert len(set(rows)) >= 0.9 * n
    assert a.stats() != full.stats()  # the statistics are the sample's


def test_more_than_the_split_holds_uses_all_and_says_so():
    said = []
    d = load_data(DataConfig("digits", train_images=5000, test_images=10), said.append)
    assert d.train_images.shape[0] == 1438 and d.test_images.shape[0] == 10
    assert any("--train-images 5,000" in s and "only 1,438" in s and "all of them" in s
               for s in said), said
    assert any("--test-images 10: using 10 of the 359" in s for s in said), said


@pytest.mark.parametrize("bad", [0, -3, 2.5, "5", True])
def test_a_bad_count_is_a_user_error(bad):
    with pytest.raises(UserError, match=r"--train-images .* accepted: a whole number >= 1"):
        load_data(DataConfig("digits", train_images=bad))


def test_memory_and_stream_read_the_same_sample_of_an_image_folder(tmp_path):
    _folder(tmp_path / "d", train=6, test=3)
    kw = dict(data_dir=str(tmp_path / "d"), train_images=5, test_images=2, subset_seed=3)
    mem = load_data(DataConfig("imagefolder", loader="memory", **kw))
    stream = load_data(DataConfig("imagefolder", loader="stream", workers=0, **kw))
    assert mem.train_images.shape[0] == 5 and len(stream.train_paths) == 5
    assert mem.test_images.shape[0] == 2 and len(stream.test_paths) == 2
    assert torch.equal(torch.stack([decode(p) for p in stream.train_paths]), mem.train_images)
    assert torch.equal(stream.train_labels, mem.train_labels)
    assert torch.equal(torch.stack([decode(p) for p in stream.test_paths]), mem.test_images)
    full = load_data(DataConfig("imagefolder", data_dir=str(tmp_path / "d"), loader="memory"))
    rows = _rows(mem.train_images, mem.train_labels, full.train_images, full.train_labels)
    assert len(set(rows)) == 5  # every image differs: without replacement


def test_old_configs_load_and_new_ones_round_trip():
    cfg = DataConfig("digits", train_images=64, test_images=32, subset_seed=7)
    assert DataConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    assert DataConfig(**dataclasses.asdict(cfg)) == cfg  # the resume files' way
    old = {k: v for k, v in dataclasses.asdict(cfg).items()
           if k not in ("train_images", "test_images", "subset_seed")}
    assert DataConfig.from_dict(old) == DataConfig("digits")


def test_every_data_command_takes_the_flags(run_cli):
    from tp_vgg.cli import build_parser

    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and
               isinstance(a.choices, dict) and "train" in a.choices).choices
    for name in ("train", "prune", "finetune", "eval", "sweep", "sensitivity"):
        flags = sub[name]._option_string_actions
        assert "--train-images" in flags and "--test-images" in flags, name
    r = run_cli("eval", *TINY, "--data", "digits", "--test-images", "0")
    assert r.code == 2 and "--test-images: '0' is below 1" in r.err


def test_size_keys_of_data_kwargs_point_to_the_flags(run_cli, tmp_path):
    _folder(tmp_path / "d")
    for key in ("train_size", "n_train", "subset", "test_size"):
        r = run_cli("eval", *TINY, "--data", "imagefolder", "--data-dir", tmp_path / "d",
                    "--data-kwargs", json.dumps({key: 5}))
        assert_one_line_error(r, f"--data-kwargs '{key}' is not an option of dataset "
                              "'imagefolder'; accepted: image_size, channels, mean, std", tmp_path / "x")
        assert "--train-images N and/or --test-images N" in r.err
    r = run_cli("eval", *TINY, "--data", "imagefolder", "--data-dir", tmp_path / "d",
                "--data-kwargs", '{"colour": 1}')
    assert r.code == 2 and "--train-images" not in r.err


# --------------------------------------------------------------------------------------------
# --progress plain: lines within an epoch

def test_plain_progress_prints_steps_within_the_epoch_and_the_sample_is_kept(run_cli, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", *TINY, "--data", "digits", "--train-images", "256", "--test-images",
                "64", "--epochs", "1", "--batch-size", "8", "--progress", "plain",
                "--log-every", "0", "--threads", "1", "--device", "cpu", "--out", out)
    assert r.code == 0, r.err
    steps = [re.fullmatch(r"  step (\d+)/32 of epoch 1/1  loss (\d+\.\d+)  top-1 [\d.]+%  "
                          r"(\d+) img/s  \(\d+s\)", line) for line in r.out.splitlines()
             if line.startswith("  step ")]
    assert len(steps) >= 3 and all(steps), r.out  # at steps 10, 20, 30 (each check_every)
    assert [int(m.group(1)) for m in steps] == [10, 20, 30]
    assert all(int(m.group(3)) > 0 and float(m.group(2)) > 0 for m in steps)
    epoch_lines = [line for line in r.out.splitlines() if line.startswith("epoch 1/1")]
    assert len(epoch_lines) == 1  # the epoch line is still there, once
    assert "using 256 of the 1,438 digits training images" in r.out
    # the sample is recorded where --resume reads it, and in config.json
    point = ResumePoint.read(str(out / "last.pt"))
    assert (point.data.train_images, point.data.test_images, point.data.subset_seed) == (256, 64, 0)
    assert json.loads((out / "config.json").read_text())["data"]["train_images"] == 256
    assert json.loads((out / "config.json").read_text())["train"]["log_every_s"] == 0


def test_the_default_interval_prints_no_step_line_for_a_quick_epoch():
    from tp_vgg.train.progress import PlainProgress

    said = []
    p = PlainProgress(said.append, every_s=30)
    p.start(0, 2, 100)
    p.update(10, loss="1.0", acc="10.0%", img_s="100")
    assert said == []
    p = PlainProgress(said.append, every_s=0, world_size=2)
    p.start(1, 2, 100)
    p.update(5)  # a resumed epoch's skipped steps: no line
    p.update(10, loss="1.0000", acc="10.0%", img_s="100")
    p.update(85, loss="0.5000", acc="50.0%", img_s="100")  # the last step: the epoch line follows
    assert len(said) == 1 and said[0].startswith("  step 15/100 of epoch 2/2  loss 1.0000  "
                                                 "top-1 10.0%  200 img/s")
    with pytest.raises(UserError, match="--log-every -1"):
        tp_vgg.TrainConfig(log_every_s=-1).validate()


# --------------------------------------------------------------------------------------------
# Hints for the student's mistakes

def test_an_unknown_flag_gets_did_you_mean(run_cli, tmp_path):
    r = run_cli("prune", *TINY, "--prune-ratio", "0.5", "--out", tmp_path / "o")
    assert_one_line_error(r, "tp-vgg prune: error: unrecognized arguments: --prune-ratio 0.5; "
                          "did you mean --ratio?", tmp_path / "o")
    r = run_cli("train", *TINY, "--data", "digits", "--num-epochs", "3", "--out", tmp_path / "t")
    assert_one_line_error(r, "did you mean --epochs?", tmp_path / "t")
    r = run_cli("prune", *TINY, "--zzzzzz", "--out", tmp_path / "o")
    assert_one_line_error(r, "tp-vgg prune: error: unrecognized argument: --zzzzzz (see --help)", tmp_path / "o")


def test_suggest_option():
    opts = ["--ratio", "--max-layer-ratio", "--epochs", "--out", "-h", "--help"]
    assert suggest_option("--prune-ratio", opts, "prune") == "--ratio"
    assert suggest_option("--prune_ratio", opts, "prune") == "--ratio"
    assert suggest_option("--rato", opts) == "--ratio"
    assert suggest_option("--max_layer_ratio=0.3", opts) == "--max-layer-ratio"
    assert suggest_option("--n-epochs", opts) == "--epochs"
    assert suggest_option("--zzzzzz", opts) is None


def test_a_ratio_in_percent_gets_the_fraction(run_cli, tmp_path):
    r = run_cli("prune", *TINY, "--ratio", "50", "--out", tmp_path / "o")
    assert_one_line_error(r, "argument --ratio: '50' is outside [0, 1)", tmp_path / "o")
    assert "fraction of each layer's channels" in r.err and "did you mean 0.5 (50 %)?" in r.err
    r = run_cli("prune", *TINY, "--ratio", "1.5", "--out", tmp_path / "o")
    assert "did you mean 0.015 (1.5 %)?" in r.err
    r = run_cli("prune", *TINY, "--ratio", "1", "--out", tmp_path / "o")
    assert r.code == 2 and "did you mean" not in r.err  # 1 is not a percentage
    with pytest.raises(UserError, match=r"--ratio must be a number in \[0, 1\), got 30 .*"
                                        r"fraction of each layer's channels.*0\.3 \(30 %\)\?"):
        tp_vgg.PruneConfig(ratio=30).validate()


@pytest.mark.parametrize("kind", ["tar.gz", "tgz", "zip"])
def test_an_archive_as_data_dir_says_how_to_extract_it(run_cli, tmp_path, monkeypatch, kind):
    src = _folder(tmp_path / "src" / "mydata")
    archive = tmp_path / f"mydata.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for base, _, files in sorted(os.walk(src)):  # mydata/ first
                rel = os.path.relpath(base, src.parent)
                z.write(base, rel + "/")
                for f in sorted(files):
                    z.write(os.path.join(base, f), os.path.join(rel, f))
    else:
        with tarfile.open(archive, "w:gz") as t:
            t.add(src, "mydata")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    r = run_cli("eval", *TINY, "--data", "imagefolder", "--data-dir", archive)
    assert_one_line_error(r, f"--data-dir '{archive}' is an archive, not a folder; extract it "
                          "first: mkdir -p data && ", work / "data")
    assert "then pass --data-dir data/mydata" in r.err
    command = re.search(r"extract it first: (.*?), then pass", r.err).group(1)
    assert ("tar xzf" if kind != "zip" else "unzip") in command
    if kind == "zip" and subprocess.run(["which", "unzip"], capture_output=True).returncode:
        return  # no unzip here to follow the advice with
    subprocess.run(command, shell=True, check=True, cwd=work)  # the advice, followed
    d = load_data(DataConfig("imagefolder", data_dir="data/mydata"))
    assert d.class_names == ["ant", "cat"] and d.train_images.shape[0] == 12


def test_a_file_that_is_no_archive_is_not_a_folder(run_cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    r = run_cli("eval", *TINY, "--data", "imagefolder", "--data-dir", tmp_path / "notes.txt")
    assert_one_line_error(r, "is a file, not a folder", tmp_path / "x")


def test_a_checkpoint_as_weights_is_told_to_use_checkpoint(run_cli, tmp_path):
    spec = ModelSpec("cifar_vgg11_bn", width=0.25).resolved()
    tp_vgg.save(str(tmp_path / "last.pt"), build_model(spec), spec)  # unpruned: it would fit
    assert run_cli("prune", *TINY, "--ratio", "0.5", "--out", tmp_path / "p").code == 0
    for ck in (tmp_path / "p" / "pruned.pt", tmp_path / "last.pt"):
        r = run_cli("prune", *TINY, "--weights", ck, "--ratio", "0.3", "--out", tmp_path / "o")
        assert_one_line_error(r, f"--weights {ck} is a tp-vgg checkpoint (it records its model "
                              f"and pruning); pass it as --checkpoint {ck}", tmp_path / "o")
    ck = tmp_path / "p" / "pruned.pt"
    r = run_cli("train", *TINY, "--weights", ck, "--data", "digits", "--out", tmp_path / "t")
    assert_one_line_error(r, f"--weights {ck} is a tp-vgg checkpoint", tmp_path / "t")
    assert f"tp-vgg finetune --checkpoint {ck}" in r.err and "train --resume" in r.err
    # a plain state_dict still loads
    torch.save(build_model(spec).state_dict(), tmp_path / "w.pt")
    r = run_cli("profile", *TINY, "--weights", tmp_path / "w.pt", "--json")
    assert r.code == 0, r.err
