"""The streaming data path (--data-loader stream): image folders read from disk as they train --
images of any size, ImageNet-style transforms, each rank its shard, batches that depend only on
(seed, epoch) whatever the workers; and how --data-loader auto chooses."""

from __future__ import annotations

import json
import os

import pytest
import torch
from methods_util import assert_one_line_error
from test_distributed import _torchrun2

from tp_vgg.checkpoint import store as checkpoint
from tp_vgg.data import datasets as data_mod
from tp_vgg.data.batches import BatchTransform
from tp_vgg.data.datasets import DataConfig, ImageData, load_data
from tp_vgg.data.stream import StreamData, cover_crop
from tp_vgg.models.zoo import ModelSpec, build_model
from tp_vgg.train.loop import TrainConfig, fit, seed_everything

SIZES = [(40, 90), (64, 48), (33, 33), (80, 57), (50, 120)]


def write_folder(root, n_train=30, n_test=9, sizes=SIZES, classes=3, channels=3, seed=0):
    from torchvision.io import encode_jpeg, write_file

    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            c = i % classes
            h, w = sizes[i % len(sizes)]
            folder = os.path.join(root, split, f"class{c}")
            os.makedirs(folder, exist_ok=True)
            base = torch.full((channels, h, w), 40.0 + 70 * c)
            img = (base + 30 * torch.rand(channels, h, w, generator=g)).to(torch.uint8)
            write_file(os.path.join(folder, f"{i:04d}.jpg"), encode_jpeg(img))
    return str(root)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("mixed"))


def _stream(folder, **kw) -> StreamData:
    d = load_data(DataConfig("imagefolder", data_dir=folder, loader="stream", **kw))
    assert isinstance(d, StreamData)
    return d


def _epoch(d, split="train", workers=0, rank=0, world_size=1, epoch=0, batch=4, hw=(32, 24),
           train=True):
    d.workers = workers
    c = d.in_channels
    b = d.batches(split, batch, BatchTransform([0.5] * c, [0.25] * c, list(hw)), "cpu",
                  train=train, seed=7, rank=rank, world_size=world_size)
    b.set_epoch(epoch)
    return [(x, y) for x, y in b]


def test_mixed_sizes_come_out_at_the_model_input_size(folder):
    d = _stream(folder)
    assert (d.num_classes, d.in_channels, len(d.train_labels), len(d.test_labels)) == (3, 3, 30, 9)
    for train in (True, False):
        batches = _epoch(d, "train" if train else "test", train=train)
        assert all(x.shape[1:] == (3, 32, 24) and x.dtype == torch.float32 for x, _ in batches)
        assert sum(len(y) for _, y in batches) == (30 if train else 9)


def test_an_epoch_is_the_same_whatever_the_workers(folder):
    d = _stream(folder)
    a, b = _epoch(d, workers=0), _epoch(d, workers=2)
    assert len(a) == len(b)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(torch.cat([x for x, _ in a]), torch.cat([x for x, _ in _epoch(d, epoch=1)]))


def test_ranks_read_disjoint_shards_that_cover_the_set(folder):
    d = _stream(folder)
    one = torch.cat([x for x, _ in _epoch(d)])
    shards = [torch.cat([x for x, _ in _epoch(d, rank=r, world_size=2)]) for r in (0, 1)]
    assert sum(len(s) for s in shards) == 30
    # the same samples, each with its own (seed, epoch, index) crop: equal as multisets
    key = lambda t: sorted(round(float(v), 3) for v in t.flatten(1).sum(1))  # noqa: E731
    assert key(torch.cat(shards)) == key(one)
    test = [torch.cat([x for x, _ in _epoch(d, "test", rank=r, world_size=2, train=False)])
            for r in (0, 1)]
    assert [len(t) for t in test] == [5, 4]


def test_eval_transform_is_resize_then_centre_crop():
    img = torch.arange(2 * 100 * 50, dtype=torch.float32).reshape(2, 100, 50).to(torch.uint8)
    out = cover_crop(img, (32, 32), 256 / 224)
    assert out.shape == (2, 32, 32)
    wide = cover_crop(torch.zeros(3, 60, 200, dtype=torch.uint8), (48, 32))
    assert wide.shape == (3, 48, 32)


def test_auto_streams_mixed_sizes_and_over_budget_sets(folder, tmp_path, monkeypatch):
    lines = []
    d = load_data(DataConfig("imagefolder", data_dir=folder), lines.append)
    assert isinstance(d, StreamData) and "images of different sizes" in lines[0]
    same = write_folder(tmp_path / "same", sizes=[(20, 20)])
    assert isinstance(load_data(DataConfig("imagefolder", data_dir=same)), ImageData)
    # image_size decodes mixed sizes into memory instead
    m = load_data(DataConfig("imagefolder", data_dir=folder, kwargs={"image_size": [32, 48]}))
    assert isinstance(m, ImageData) and m.train_images.shape[1:] == (3, 32, 48)
    monkeypatch.setattr(data_mod, "_memory_budget", lambda: 39 * 3 * 20 * 20 - 1)
    lines = []
    d = load_data(DataConfig("imagefolder", data_dir=same), lines.append)
    assert isinstance(d, StreamData) and "39 images would take" in lines[0]
    assert isinstance(load_data(DataConfig("imagefolder", data_dir=same, loader="memory")),
                      ImageData)


def test_grey_images(tmp_path):
    root = write_folder(tmp_path / "g", channels=1, sizes=[(30, 30), (40, 20)])
    d = _stream(root, kwargs={"channels": 1})
    assert d.in_channels == 1 and len(d.stats()[0]) == 1
    assert _epoch(d, hw=(16, 16))[0][0].shape[1] == 1


@pytest.mark.parametrize("args,message", [
    (["--data-loader", "disk"], "argument --data-loader: invalid choice: 'disk'"),
    (["--workers", "-1"], "'-1' is negative"),
])
def test_cli_mistakes_exit_2(run_cli, folder, tmp_path, args, message):
    r = run_cli("eval", "--model", "cifar_vgg11_bn", "--width", "0.125", "--data", "imagefolder",
                "--data-dir", folder, *args)
    assert_one_line_error(r, message, tmp_path / "none")


def test_stream_needs_an_image_folder(run_cli, tmp_path):
    r = run_cli("eval", "--model", "cifar_vgg11_bn", "--data", "digits", "--data-loader", "stream")
    assert_one_line_error(r, "--data-loader stream reads image folders", tmp_path / "none")


def test_train_and_eval_on_the_stream(run_cli, folder, tmp_path):
    base = ["--data", "imagefolder", "--data-dir", folder, "--data-loader", "stream", "--workers",
            "1", "--progress", "plain"]
    model = ["--model", "cifar_vgg11_bn", "--width", "0.125", "--input-size", "32x48"]
    r = run_cli("train", *model, *base, "--epochs", "2", "--batch-size", "8", "--out",
                tmp_path / "full")
    assert r.code == 0, r.err
    assert "reading" in r.out and "epoch 2/2" in r.out
    # resume is exact at epoch boundaries: cut after epoch 1, continue, same weights
    r = run_cli("train", *model, *base, "--epochs", "2", "--batch-size", "8", "--out",
                tmp_path / "cut")
    assert r.code == 0
    ck = checkpoint.load_checkpoint(str(tmp_path / "cut" / "last.pt"))
    assert ck.train_state["data"]["loader"] == "stream"
    r = run_cli("eval", "--checkpoint", tmp_path / "full" / "last.pt", *base[:4], "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out[r.out.index("{"):])
    assert res["images"] == 9


def test_resume_on_the_stream_gives_the_same_weights(folder, tmp_path):
    from resume_util import assert_same_weights, cut_and_resume

    cfg_d = DataConfig("imagefolder", data_dir=folder, loader="stream", workers=0)
    data = load_data(cfg_d)
    spec = ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=3, input_size=[32, 48]).resolved()
    cfg = TrainConfig(epochs=3, batch_size=8, progress="plain")

    def run(out, log=print):
        seed_everything(0)
        fit(build_model(spec), spec, data, cfg, str(out), data_cfg=cfg_d, log=log)
    w = cut_and_resume(run, tmp_path, data)
    assert_same_weights(w["full"], w["cut"])


def test_torchrun_two_processes_on_the_stream_match_one(folder, tmp_path):
    spec = ModelSpec("cifar_vgg11", width=0.125, num_classes=3, input_size=[32, 48]).resolved()
    cfg_d = DataConfig("imagefolder", data_dir=folder, loader="stream", workers=0)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.02, warmup_epochs=0.5, progress="none",
                      device="cpu")
    seed_everything(cfg.seed)
    one = fit(build_model(spec), spec, load_data(cfg_d), cfg, str(tmp_path / "one"),
              data_cfg=cfg_d)
    _torchrun2(tmp_path, [
        "train", "--model", "cifar_vgg11", "--width", "0.125", "--input-size", "32x48",
        "--num-classes", "3", "--data", "imagefolder", "--data-dir", folder, "--data-loader",
        "stream", "--workers", "0", "--epochs", "2", "--batch-size", "4", "--lr", "0.02",
        "--warmup-epochs", "0.5", "--device", "cpu", "--progress", "plain",
        "--out", str(tmp_path / "two")])
    two = checkpoint.load_checkpoint(str(tmp_path / "two" / "last.pt"))
    for k, v in one.model.state_dict().items():
        assert torch.allclose(v, two.state_dict[k], rtol=1e-4, atol=1e-5), k


def test_image_size_is_not_used_by_the_stream_and_says_so(folder):
    lines = []
    d = load_data(DataConfig("imagefolder", data_dir=folder, loader="stream",
                             kwargs={"image_size": 32}), lines.append)
    assert isinstance(d, StreamData) and "image_size is not used" in lines[0]
