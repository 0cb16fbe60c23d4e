"""Printed remedies of training, fine-tuning, evaluation, data and reports (``tp_vgg/train/``,
``tp_vgg/data/``, ``tp_vgg/report/``, ``tp-vgg train/finetune/eval/sweep``), applied to the
failing case (issue 19 item 5; the catalogue and its meta-test: ``tests/test_remedies.py``)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from methods_util import FAKE, QUIET, TINY, read_report
from remedies_util import Ctx, Remedy, run_remedy
from torchvision.io import encode_jpeg, encode_png

import tp_vgg
from tp_vgg.cli import main as cli_main
from tp_vgg.data.datasets import DataConfig, load_data
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.train.config import TrainConfig
from tp_vgg.train.loop import Teacher, fit, seed_everything

TRAIN = ["train", *TINY, *FAKE, *QUIET, "--epochs", "1"]
FAKE4 = ["--data", "fake", "--data-kwargs", '{"train_size": 96, "test_size": 48, "num_classes": 4}']


def _ok(*argv: object) -> None:
    """A setup step run through the CLI, which must succeed."""
    assert cli_main([str(a) for a in argv]) == 0


def _records(out: Path) -> list:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _epochs_done(ctx: Ctx, name: str = "cut") -> list:
    return [r["epoch"] for r in _records(ctx.path(name))]


def _image(path: Path, h: int, w: int, value: int, jpeg: bool = False) -> None:
    img = torch.full((3, h, w), value, dtype=torch.uint8)
    img[:, : h // 2] = 255 - value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes((encode_jpeg(img) if jpeg else encode_png(img)).tolist()))


def _folder(root: Path, classes=("cat", "dog"), n: int = 3, odd: bool = False,
            jpeg: bool = False, test: str = "test") -> Path:
    """``root/train/<class>/*`` and ``root/<test>/<class>/*``: 8x8 images; ``odd``: the last
    training image is 12x10 (one the loader's sample of 8 does not see)."""
    ext = "jpg" if jpeg else "png"
    for split in ("train", test):
        for i, c in enumerate(classes):
            for j in range(n):
                big = odd and split == "train" and i == len(classes) - 1 and j == n - 1
                _image(root / split / c / f"{j}.{ext}", 12 if big else 8, 10 if big else 8,
                       40 * i + 10 * j, jpeg)
    return root


class _Stop(Exception):
    pass


def _cut_run(ctx: Ctx, name: str = "cut") -> None:
    """A 2-epoch training run stopped after its first epoch: ``ctx.path(name)/last.pt``."""
    dc = DataConfig("fake", kwargs={"train_size": 96, "test_size": 48})
    spec = ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=10).resolved()
    seed_everything(0)

    def log(line: str) -> None:
        if line.startswith("epoch 1/"):  # printed once that epoch's last.pt is written
            raise _Stop

    with pytest.raises(_Stop):
        fit(build_model(spec), spec, load_data(dc), TrainConfig(epochs=2, batch_size=48,
                                                                progress="plain"),
            str(ctx.path(name)), data_cfg=dc, log=log)
    assert _epochs_done(ctx, name) == [1]


def _finished(ctx: Ctx, epochs: int = 2, name: str = "cut") -> None:
    assert _epochs_done(ctx, name) == list(range(1, epochs + 1))


def _resume(c: Ctx, *flags: object, command: str = "train") -> list:
    return [command, "--resume", c.path("cut") / "last.pt", "--progress", "none",
            "--threads", "1", *flags]


def _train_ck(ctx: Ctx, name: str = "ck", *flags: object) -> None:
    _ok(*TRAIN, *flags, "--out", ctx.path(name))


def _config(ctx: Ctx, name: str = "t") -> dict:
    return json.loads((ctx.path(name) / "config.json").read_text())


# A run that diverges at a peak LR of 40 without warm-up (SGD, 6 steps an epoch); each printed
# remedy alone gets it through its 4 epochs.
DIVERGING = ["train", *TINY, *FAKE, "--progress", "none", "--threads", "1", "--batch-size", "16",
             "--epochs", "4", "--seed", "0"]

REMEDIES = [
    # --- tp-vgg sweep
    Remedy("sweep-ratio",
           "is not a sweep option; give --ratios R1,R2,...",
           lambda c: ["sweep", *TINY, "--ratios", "0.5", "--ratio", "0.3", "--out", c.path("s")],
           lambda c: ["sweep", *TINY, "--ratios", "0.3,0.5", "--out", c.path("s")],
           check=lambda c, r: json.loads((c.path("s") / "sweep.json").read_text())["ratios"]
           == [0.3, 0.5]),

    # --- tp-vgg train / finetune --resume
    Remedy("resume-recipe-flag",
           "cannot be given with --resume: the run continues with the configuration saved in its "
           "last.pt (only --epochs may grow)",
           lambda c: _resume(c, "--lr", "0.1"),
           lambda c: _resume(c),
           setup=_cut_run, check=lambda c, r: _finished(c)),
    Remedy("resume-recipe-flag-epochs-grow",
           "(only --epochs may grow)",
           lambda c: _resume(c, "--lr", "0.1"),
           lambda c: _resume(c, "--epochs", "3"),
           setup=_cut_run, check=lambda c, r: _finished(c, 3)),
    Remedy("resume-data-flag",
           "cannot be given with --resume: the run continues with the model, weights and data "
           "saved in its last.pt",
           lambda c: _resume(c, *FAKE),
           lambda c: _resume(c),
           setup=_cut_run, check=lambda c, r: _finished(c)),
    Remedy("resume-finetune-checkpoint",
           "--checkpoint cannot be given with --resume: the run continues with the model saved in "
           "its last.pt",
           lambda c: _resume(c, "--checkpoint", c.path("cut") / "last.pt", command="finetune"),
           lambda c: _resume(c, command="finetune"),
           setup=_cut_run, check=lambda c, r: _finished(c)),
    Remedy("resume-fewer-epochs-leave-out",
           "with --resume must be more than the",
           lambda c: _resume(c, "--epochs", "1"),
           lambda c: _resume(c),
           setup=_cut_run, check=lambda c, r: _finished(c)),
    Remedy("resume-fewer-epochs-leave-out-as-planned",
           "(or leave --epochs out to finish it as planned)",
           lambda c: _resume(c, "--epochs", "1"),
           lambda c: _resume(c, "--epochs", "3"),
           setup=_cut_run, check=lambda c, r: _finished(c, 3)),
    Remedy("train-needs-model",
           "one of --model or --resume is required",
           lambda c: ["train", *FAKE, *QUIET, "--epochs", "1", "--out", c.path("t")],
           lambda c: ["train", *TINY, *FAKE, *QUIET, "--epochs", "1", "--out", c.path("t")],
           check=lambda c, r: (c.path("t") / "last.pt").is_file()),
    Remedy("train-needs-model-or-resume",
           "one of --model or --resume is required",
           lambda c: ["train", "--progress", "none", "--threads", "1"],
           lambda c: _resume(c),
           setup=_cut_run, check=lambda c, r: _finished(c)),
    Remedy("finetune-needs-checkpoint",
           "one of --checkpoint or --resume is required",
           lambda c: ["finetune", *FAKE, *QUIET, "--epochs", "1", "--out", c.path("f")],
           lambda c: ["finetune", "--checkpoint", c.path("ck") / "last.pt", *FAKE, *QUIET,
                      "--epochs", "1", "--out", c.path("f")],
           setup=_train_ck, check=lambda c, r: (c.path("f") / "last.pt").is_file()),
    Remedy("finetune-needs-checkpoint-or-resume",
           "one of --checkpoint or --resume is required",
           lambda c: ["finetune", "--progress", "none", "--threads", "1"],
           lambda c: _resume(c, command="finetune"),
           setup=_cut_run, check=lambda c, r: _finished(c)),

    # --- distillation flags
    Remedy("teacher-without-distill",
           "is given without --distill; add --distill to fine-tune against a teacher",
           lambda c: ["finetune", "--checkpoint", c.path("ck") / "last.pt", "--teacher",
                      c.path("ck") / "last.pt", *FAKE, *QUIET, "--epochs", "1",
                      "--out", c.path("f")],
           lambda c: ["finetune", "--checkpoint", c.path("ck") / "last.pt", "--teacher",
                      c.path("ck") / "last.pt", "--distill", *FAKE, *QUIET, "--epochs", "1",
                      "--out", c.path("f")],
           setup=_train_ck,
           check=lambda c, r: (c.path("f") / "teacher.pt").is_file()
           and all(rec["teacher_s"] > 0 for rec in _records(c.path("f")))),

    # --- tp-vgg prune --data without --finetune-epochs
    Remedy("prune-data-finetune",
           "--data is given without --finetune-epochs N; add it to fine-tune after pruning",
           lambda c: ["prune", *TINY, "--ratio", "0.5", *FAKE, *QUIET, "--out", c.path("p")],
           lambda c: ["prune", *TINY, "--ratio", "0.5", *FAKE, *QUIET, "--finetune-epochs", "1",
                      "--out", c.path("p")],
           check=lambda c, r: "finetuned" in read_report(c.path("p"))["accuracy"]),
    Remedy("prune-data-bn-recalibrate",
           "(or --bn-recalibrate N to only re-estimate BatchNorm statistics)",
           lambda c: ["prune", *TINY, "--ratio", "0.5", *FAKE, *QUIET, "--out", c.path("p")],
           lambda c: ["prune", *TINY, "--ratio", "0.5", *FAKE, *QUIET, "--bn-recalibrate", "1",
                      "--out", c.path("p")],
           check=lambda c, r: set(read_report(c.path("p"))["accuracy"])
           >= {"pruned", "recalibrated"}
           and "finetuned" not in read_report(c.path("p"))["accuracy"]),

    # --- tp_vgg/train/config.py
    Remedy("amp-needs-cuda",
           "use --amp off",
           lambda c: [*TRAIN, "--device", "cpu", "--amp", "bf16", "--out", c.path("t")],
           lambda c: [*TRAIN, "--device", "cpu", "--amp", "off", "--out", c.path("t")],
           check=lambda c, r: _config(c)["train"]["amp"] == "off"),
    Remedy("nesterov-no-nesterov",
           "--nesterov needs --momentum > 0; pass --no-nesterov or a momentum",
           lambda c: [*TRAIN, "--momentum", "0", "--out", c.path("t")],
           lambda c: [*TRAIN, "--momentum", "0", "--no-nesterov", "--out", c.path("t")],
           check=lambda c, r: not _config(c)["train"]["nesterov"]),
    Remedy("nesterov-a-momentum",
           "--nesterov needs --momentum > 0; pass --no-nesterov or a momentum",
           lambda c: [*TRAIN, "--momentum", "0", "--out", c.path("t")],
           lambda c: [*TRAIN, "--momentum", "0.5", "--out", c.path("t")],
           check=lambda c, r: _config(c)["train"]["nesterov"]
           and _config(c)["train"]["momentum"] == 0.5),

    # --- tp_vgg/train/steps.py: a diverging loss
    Remedy("nan-lower-lr",
           "try a lower --lr or --grad-clip",
           lambda c: [*DIVERGING, "--lr", "4000", "--warmup-epochs", "0", "--out", c.path("t")],
           lambda c: [*DIVERGING, "--lr", "0.5", "--warmup-epochs", "0", "--out", c.path("t")],
           check=lambda c, r: len(_records(c.path("t"))) == 4),
    Remedy("nan-grad-clip",
           "try a lower --lr or --grad-clip",
           lambda c: [*DIVERGING, "--lr", "4000", "--warmup-epochs", "0", "--out", c.path("t")],
           lambda c: [*DIVERGING, "--lr", "4000", "--warmup-epochs", "0", "--grad-clip", "1",
                      "--out", c.path("t")],
           check=lambda c, r: len(_records(c.path("t"))) == 4),

    # --- tp_vgg/train/evaluation.py: the model does not fit the data
    Remedy("num-classes-train",
           "(train) or use a checkpoint trained on these classes",
           lambda c: [*TRAIN, "--num-classes", "4", "--out", c.path("t")],
           lambda c: [*TRAIN, "--num-classes", "10", "--out", c.path("t")],
           check=lambda c, r: (c.path("t") / "last.pt").is_file()),
    Remedy("num-classes-checkpoint",
           "(train) or use a checkpoint trained on these classes",
           lambda c: ["eval", "--checkpoint", c.path("ck") / "last.pt", *FAKE4, "--threads", "1"],
           lambda c: ["eval", "--checkpoint", c.path("ck4") / "last.pt", *FAKE4, "--threads", "1"],
           setup=lambda c: (_train_ck(c), _ok("train", *TINY, *FAKE4, *QUIET, "--epochs", "1",
                                              "--out", c.path("ck4"))),
           check=lambda c, r: "fake test: top-1" in r.out),
    Remedy("channels-grey-model",
           "; read the folder as ",
           lambda c: ["train", *TINY, "--in-channels", "1", "--data", "imagefolder", "--data-dir",
                      c.path("d"), *QUIET, "--epochs", "1", "--out", c.path("t")],
           lambda c: ["train", *TINY, "--in-channels", "1", "--data", "imagefolder", "--data-dir",
                      c.path("d"), "--data-kwargs", '{"channels": 1}', *QUIET, "--epochs", "1",
                      "--out", c.path("t")],
           setup=lambda c: _folder(c.path("d")),
           check=lambda c, r: (c.path("t") / "last.pt").is_file()),
    Remedy("channels-stored-preprocessing",
           "; read the folder as ",
           lambda c: ["eval", "--checkpoint", c.path("ck") / "last.pt", "--data", "imagefolder",
                      "--data-dir", c.path("d"), "--threads", "1"],
           lambda c: ["eval", "--checkpoint", c.path("ck") / "last.pt", "--data", "imagefolder",
                      "--data-dir", c.path("d"), "--data-kwargs", '{"channels": 1}',
                      "--threads", "1"],
           setup=lambda c: (_folder(c.path("d")), _ok(
               "train", *TINY, "--in-channels", "1", "--data", "imagefolder", "--data-dir",
               c.path("d"), "--data-kwargs", '{"channels": 1}', *QUIET, "--epochs", "1",
               "--out", c.path("ck"))),
           check=lambda c, r: "imagefolder test: top-1" in r.out and "(6 images)" in r.out),

    # --- tp_vgg/data/declared.py: class names unlike the checkpoint's
    Remedy("class-names-the-trained-data",
           "use the data the model was trained on",
           lambda c: ["eval", "--checkpoint", c.path("ck") / "last.pt", "--data", "imagefolder",
                      "--data-dir", c.path("other"), "--threads", "1"],
           lambda c: ["eval", "--checkpoint", c.path("ck") / "last.pt", "--data", "imagefolder",
                      "--data-dir", c.path("d"), "--threads", "1"],
           setup=lambda c: (_folder(c.path("d")), _folder(c.path("other"), ("fox", "owl")), _ok(
               "train", *TINY, "--data", "imagefolder", "--data-dir", c.path("d"), *QUIET,
               "--epochs", "1", "--out", c.path("ck"))),
           check=lambda c, r: "imagefolder test: top-1" in r.out and "note:" not in r.out),
    Remedy("class-names-allow-mismatch",
           "or pass --allow-class-mismatch if these are the same classes under other names",
           lambda c: ["eval", "--checkpoint", c.path("ck") / "last.pt", "--data", "imagefolder",
                      "--data-dir", c.path("other"), "--threads", "1"],
           lambda c: ["eval", "--checkpoint", c.path("ck") / "last.pt", "--data", "imagefolder",
                      "--data-dir", c.path("other"), "--threads", "1", "--allow-class-mismatch"],
           setup=lambda c: (_folder(c.path("d")), _folder(c.path("other"), ("fox", "owl")), _ok(
               "train", *TINY, "--data", "imagefolder", "--data-dir", c.path("d"), *QUIET,
               "--epochs", "1", "--out", c.path("ck"))),
           check=lambda c, r: "imagefolder test: top-1" in r.out
           and "going on as told (--allow-class-mismatch)" in r.out),

    # --- tp_vgg/data/datasets.py: images of different sizes, a missing CIFAR
    Remedy("image-sizes-image-size",
           "to resize every image (to cover S x S, then centre crop), or --data-loader stream",
           lambda c: ["train", *TINY, "--data", "imagefolder", "--data-dir", c.path("d"), *QUIET,
                      "--epochs", "1", "--out", c.path("t")],
           lambda c: ["train", *TINY, "--data", "imagefolder", "--data-dir", c.path("d"),
                      "--data-kwargs", '{"image_size": 32}', *QUIET, "--epochs", "1",
                      "--out", c.path("t")],
           setup=lambda c: _folder(c.path("d"), n=5, odd=True),
           check=lambda c, r: (c.path("t") / "last.pt").is_file()),
    Remedy("image-sizes-image-size-h-w",
           "pass --data-kwargs '{\"image_size\": S}' (or [H, W]) to resize",
           lambda c: ["train", *TINY, "--data", "imagefolder", "--data-dir", c.path("d"), *QUIET,
                      "--epochs", "1", "--out", c.path("t")],
           lambda c: ["train", *TINY, "--data", "imagefolder", "--data-dir", c.path("d"),
                      "--data-kwargs", '{"image_size": [32, 32]}', *QUIET, "--epochs", "1",
                      "--out", c.path("t")],
           setup=lambda c: _folder(c.path("d"), n=5, odd=True),
           check=lambda c, r: (c.path("t") / "last.pt").is_file()),
    Remedy("image-sizes-stream",
           "to resize every image (to cover S x S, then centre crop), or --data-loader stream",
           lambda c: ["train", *TINY, "--data", "imagefolder", "--data-dir", c.path("d"), *QUIET,
                      "--epochs", "1", "--out", c.path("t")],
           lambda c: ["train", *TINY, "--data", "imagefolder", "--data-dir", c.path("d"),
                      "--data-loader", "stream", "--workers", "0", *QUIET, "--epochs", "1",
                      "--out", c.path("t")],
           setup=lambda c: _folder(c.path("d"), n=5, odd=True),
           check=lambda c, r: "from disk batch by batch (--data-loader stream)" in r.out),
    Remedy("cifar-missing-imagefolder",
           "a JPEG copy in train/ and test/ class folders works with --data imagefolder",
           lambda c: ["train", *TINY, "--data", "cifar10", "--data-dir", c.path("data"), *QUIET,
                      "--epochs", "1", "--out", c.path("t")],
           lambda c: ["train", *TINY, "--data", "imagefolder", "--data-dir", c.path("data"), *QUIET,
                      "--epochs", "1", "--out", c.path("t")],
           setup=lambda c: _folder(c.path("data"), ("airplane", "automobile"), jpeg=True),
           check=lambda c, r: (c.path("t") / "last.pt").is_file()),
]

# Remedies applied in other test files (or below, where a test needs more than a Remedy):
# message fragment -> "tests/file.py::test_name".
ELSEWHERE = {
    "pass --download to fetch it (needs a network)":
        "tests/test_remedies_train.py::test_cifar_missing_download",
    "(needs a network), or extract":
        "tests/test_remedies_train.py::test_cifar_missing_extract",
    "No accuracy recorded: run the sweep with `--data NAME --finetune-epochs N`":
        "tests/test_remedies_train.py::test_sweep_without_data_reports_how_to_record_accuracy",
}

# Literals the scan matches that suggest nothing: fragment -> why.
NOT_SUGGESTIONS = {
    "declared with --mean/--std":
        "names where a normalization came from (printed after 'normalization: ...')",
    "(decoded once into memory, or read from disk batch by batch: --data-loader)":
        "the imagefolder entry of the dataset list (--data help): what it reads, not a remedy",
}


@pytest.mark.parametrize("remedy", [pytest.param(r, id=r.id, marks=r.marks) for r in REMEDIES])
def test_remedy(remedy, run_cli, tmp_path):
    run_remedy(remedy, run_cli, tmp_path)


# --------------------------------------------------------------------------------------------
# A missing CIFAR-10, fetched (no network here: the download writes the archive's folder) or
# extracted by hand. The md5 sums are those of the real files, so integrity is "the file is
# there" for these tiny stand-ins.

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


def _extracted_cifar10(root: Path) -> None:
    """``root/cifar-10-batches-py`` as cifar-10-python.tar.gz holds it, 10 images a batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
                         "labels": list(range(10))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES}, f)


@pytest.fixture
def offline_cifar(monkeypatch):
    """torchvision's CIFAR-10 with the network replaced by :func:`_extracted_cifar10`."""
    fetched = []

    def download(url, download_root, filename=None, md5=None, **kw):
        fetched.append(url)
        _extracted_cifar10(Path(download_root))

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", download)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda fpath, md5=None: os.path.isfile(fpath))
    return fetched


def _cifar_train(c: Ctx, *flags: object) -> list:
    return ["train", *TINY, "--data", "cifar10", "--data-dir", c.path("data"), *QUIET,
            "--epochs", "1", "--out", c.path("t"), *flags]


def test_cifar_missing_download(run_cli, tmp_path, offline_cifar):
    remedy = Remedy("cifar-missing-download", "pass --download to fetch it (needs a network)",
                    _cifar_train, lambda c: _cifar_train(c, "--download"),
                    check=lambda c, r: (c.path("t") / "last.pt").is_file())
    run_remedy(remedy, run_cli, tmp_path)
    assert len(offline_cifar) == 1 and "cifar-10-python.tar.gz" in offline_cifar[0]


def test_cifar_missing_extract(run_cli, tmp_path, offline_cifar):
    c = Ctx(tmp_path)
    r = run_cli(*_cifar_train(c))
    assert r.code == 2 and "Traceback" not in r.err
    message = r.err.strip().splitlines()[-1]
    looked, url = message.split("looked for ")[1].split(")")[0], \
        message.split("or extract ")[1].split(" there")[0]
    assert url.endswith("cifar-10-python.tar.gz") and looked == str(c.path("data") /
                                                                        "cifar-10-batches-py")
    _extracted_cifar10(c.path("data"))  # the archive extracted into --data-dir, as told
    r = run_cli(*_cifar_train(c))
    assert r.code == 0, r.err
    assert not offline_cifar  # nothing was fetched
    assert (c.path("t") / "last.pt").is_file()


# --------------------------------------------------------------------------------------------
# The sweep report's hint (report.md, not stderr).

def test_sweep_without_data_reports_how_to_record_accuracy(run_cli, tmp_path):
    hint = "No accuracy recorded: run the sweep with `--data NAME --finetune-epochs N`"
    base = ["sweep", *TINY, "--ratios", "0.5", "--threads", "1"]
    r = run_cli(*base, "--out", tmp_path / "s")
    assert r.code == 0, r.err
    assert hint in (tmp_path / "s" / "report.md").read_text()
    r = run_cli(*base, *FAKE, "--batch-size", "48", "--progress", "none", "--finetune-epochs", "1",
                "--out", tmp_path / "f")
    assert r.code == 0, r.err
    md = (tmp_path / "f" / "report.md").read_text()
    assert hint not in md
    rep = read_report(tmp_path / "f" / "ratio_0.50")
    assert f"{100 * rep['accuracy']['finetuned']:.2f}%" in md


# --------------------------------------------------------------------------------------------
# The library's distillation without a teacher (tp_vgg/train/loop.py): the remedy it names.

def test_fit_distill_without_a_teacher_names_the_teacher_argument(tmp_path):
    dc = DataConfig("fake", kwargs={"train_size": 96, "test_size": 48})
    data = load_data(dc)
    spec = ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=10).resolved()
    cfg = TrainConfig(epochs=1, batch_size=48, distill=True, progress="none", device="cpu")
    with pytest.raises(tp_vgg.UserError, match=r"pass fit\(\.\.\., teacher=Teacher\(model, spec\)"):
        fit(build_model(spec), spec, data, cfg, str(tmp_path / "a"))
    fit(build_model(spec), spec, data, TrainConfig(epochs=1, batch_size=48, progress="none"),
        str(tmp_path / "t"), data_cfg=dc)
    res = fit(build_model(spec), spec, data, cfg, str(tmp_path / "a"),
              teacher=Teacher.read(str(tmp_path / "t" / "last.pt")))
    assert res.epochs == 1 and (tmp_path / "a" / "teacher.pt").is_file()
