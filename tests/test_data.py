"""Datasets decoded into memory, batch-wise augmentation, seeded epochs, rank sharding."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torchvision.io import encode_png, write_jpeg

from tp_vgg.data.batches import Batches, BatchTransform
from tp_vgg.data.datasets import DataConfig, load_data
from tp_vgg.errors import UserError

IDENTITY = BatchTransform([0.0, 0.0, 0.0], [1 / 255] * 3, 8)  # x -> float(x), size 8


def test_digits_is_offline_32x32_rgb_with_a_fixed_split():
    a = load_data(DataConfig("digits"))
    b = load_data(DataConfig("digits"))
    assert a.train_images.shape == (1438, 3, 32, 32) and a.test_images.shape == (359, 3, 32, 32)
    assert a.train_images.dtype == torch.uint8 and a.num_classes == 10
    assert torch.equal(a.train_labels, b.train_labels) and torch.equal(a.test_images, b.test_images)
    assert torch.equal(a.train_images[:, 0], a.train_images[:, 2])  # grey replicated to 3 channels
    assert not a.flip  # a mirrored digit is another digit
    mean, std = a.stats()
    x = a.train_images.double() / 255
    assert mean[0] == pytest.approx(x[:, 0].mean().item(), abs=1e-5)
    assert std[0] == pytest.approx(x[:, 0].std(unbiased=False).item(), abs=1e-5)


def test_fake_honours_its_options_and_names_a_bad_one():
    d = load_data(DataConfig("fake", kwargs={"train_size": 40, "test_size": 12, "num_classes": 4,
                                             "image_size": 16, "channels": 1}))
    assert d.train_images.shape == (40, 1, 16, 16) and d.test_images.shape == (12, 1, 16, 16)
    assert d.num_classes == 4 and int(d.train_labels.max()) < 4
    with pytest.raises(UserError, match="'size'.*accepted: train_size"):
        load_data(DataConfig("fake", kwargs={"size": 3}))


def test_unknown_dataset_lists_the_accepted_names():
    with pytest.raises(UserError, match="unknown dataset 'mnist'; accepted: digits, fake, cifar10"):
        load_data(DataConfig("mnist"))


def test_missing_cifar10_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="--download"):
        load_data(DataConfig("cifar10", data_dir=str(tmp_path)))


def _image(value: int, size: int = 8) -> torch.Tensor:
    return torch.full((3, size, size), value, dtype=torch.uint8)


def _folder(root, split: str, classes, size: int = 8, n: int = 2):
    for ci, c in enumerate(classes):
        os.makedirs(root / split / c, exist_ok=True)
        for i in range(n):
            (root / split / c / f"{i}.png").write_bytes(encode_png(_image(40 * ci + i, size)).numpy().tobytes())


def test_imagefolder_reads_train_and_val_class_folders(tmp_path):
    _folder(tmp_path, "train", ["cat", "ant"], n=3)
    _folder(tmp_path, "val", ["cat", "ant"], n=1)
    _folder(tmp_path, "test", ["cat"], n=5)  # val/ wins over test/
    d = load_data(DataConfig("imagefolder", data_dir=str(tmp_path)))
    assert d.class_names == ["ant", "cat"] and d.test_split == "val"
    assert d.train_images.shape == (6, 3, 8, 8) and d.test_images.shape == (2, 3, 8, 8)
    assert d.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.train_images[3, 0, 0, 0].item() == 0  # cat/0.png: 40 * 0 + 0 (PNG is lossless)
    assert d.train_images[0, 0, 0, 0].item() == 40  # ant/0.png: 40 * 1 + 0


def test_imagefolder_mistakes_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="needs --data-dir"):
        load_data(DataConfig("imagefolder"))
    with pytest.raises(UserError, match="does not exist"):
        load_data(DataConfig("imagefolder", data_dir=str(tmp_path / "nope")))
    _folder(tmp_path, "train", ["a", "b"])
    with pytest.raises(UserError, match="no val/ or test/"):
        load_data(DataConfig("imagefolder", data_dir=str(tmp_path)))
    _folder(tmp_path, "test", ["a", "b"])
    bad = tmp_path / "train" / "b" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="cannot decode image .*broken.jpg"):
        load_data(DataConfig("imagefolder", data_dir=str(tmp_path)))
    bad.unlink()
    write_jpeg(_image(9, size=12), str(tmp_path / "train" / "b" / "big.jpg"))
    with pytest.raises(UserError, match="big.jpg. is 12x12 \\(HxW\\), not 8x8.*image_size.*--data-loader stream"):
        load_data(DataConfig("imagefolder", data_dir=str(tmp_path), loader="memory"))
    # auto reads a folder of mixed sizes from disk instead (tests/test_stream.py)
    assert load_data(DataConfig("imagefolder", data_dir=str(tmp_path))).streaming
    d = load_data(DataConfig("imagefolder", data_dir=str(tmp_path), kwargs={"image_size": 8}))
    assert d.train_images.shape == (5, 3, 8, 8)


def test_crop_flip_matches_a_per_sample_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 3, 6, 7), dtype=torch.uint8, generator=g)
    oy = torch.tensor([0, 4, 8, 2, 4])
    ox = torch.tensor([0, 4, 8, 5, 1])
    flip = torch.tensor([False, False, True, True, False])
    out = BatchTransform.crop_flip(x, 4, oy, ox, flip)
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(5):
        ref = padded[i, :, oy[i]:oy[i] + 6, ox[i]:ox[i] + 7]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    assert torch.equal(out[1], x[1])  # centred, unflipped crop is the image


def test_transform_normalizes_and_resizes_to_the_model_input():
    t = BatchTransform([0.5, 0.5, 0.5], [0.25, 0.25, 0.25], 16, channels_last=True)
    x = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    y = t(x)
    assert y.shape == (2, 3, 16, 16) and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, torch.full_like(y, 2.0))  # (1 - 0.5) / 0.25


def _ids(n: int):
    """Images whose pixels encode their index, labels = index: batches reveal which samples."""
    images = (torch.arange(n, dtype=torch.uint8)[:, None, None, None] * 2).expand(n, 3, 8, 8).contiguous()
    return images, torch.arange(n)


def test_a_training_epoch_is_a_seeded_permutation():
    images, labels = _ids(50)

    def epoch(seed, e):
        b = Batches(images, labels, 16, IDENTITY, train=True, augment=False, seed=seed)
        b.set_epoch(e)
        return torch.cat([y for _, y in b])

    e0 = epoch(0, 0)
    assert sorted(e0.tolist()) == list(range(50))
    assert torch.equal(e0, epoch(0, 0))           # same (seed, epoch): same order
    assert not torch.equal(e0, epoch(0, 1))       # a new epoch reshuffles
    assert not torch.equal(e0, epoch(1, 0))


def test_two_ranks_together_see_the_one_process_batches_and_augmentation():
    images, labels = _ids(64)
    kw = dict(train=True, augment=True, pad=4, flip=True, seed=3)
    one = Batches(images, labels, 16, IDENTITY, **kw)
    ranks = [Batches(images, labels, 8, IDENTITY, rank=r, world_size=2, **kw) for r in range(2)]
    for b in [one, *ranks]:
        b.set_epoch(2)
    for (x1, y1), (xa, ya), (xb, yb) in zip(one, *ranks):
        assert sorted(y1.tolist()) == sorted(ya.tolist() + yb.tolist())
        by_id = {int(i): img for i, img in zip(torch.cat([ya, yb]), torch.cat([xa, xb]))}
        for i, img in zip(y1.tolist(), x1):
            assert torch.equal(by_id[i], img)  # same crop and flip for the same sample


def test_evaluation_shards_cover_every_sample_once():
    images, labels = _ids(11)
    seen = []
    for r in range(3):
        seen += torch.cat([y for _, y in Batches(images, labels, 4, IDENTITY, rank=r, world_size=3)]).tolist()
    assert sorted(seen) == list(range(11))
