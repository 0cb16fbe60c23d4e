"""Image folders read from disk batch by batch (``--data-loader stream``): for sets that do not fit
in memory, such as ImageNet. Only the file list and labels are held; images are decoded by
``DataLoader`` workers, each rank reading only its shard (``DistributedSampler`` under torchrun).

Transforms are ImageNet-style, at the model's input size S (or H x W): training
``RandomResizedCrop(S)`` + horizontal flip, evaluation resize to cover S * 256/224 then a centre
crop of S (the transforms of torchvision's VGG weights). Images of any size are fine.

Determinism: the order of epoch ``e`` depends only on ``(seed, e)`` (as the in-memory path), and
each sample's crop and flip on ``(seed, e, index)`` -- whatever the number of workers or ranks,
so a resumed run (resumption is at epoch boundaries) sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tp_vgg.data.preprocessing import Preprocessing
from tp_vgg.errors import UserError

EVAL_RESIZE = 256 / 224      # resize to cover S * 256/224, then centre-crop S
RRC_SCALE = (0.08, 1.0)      # RandomResizedCrop's defaults
RRC_RATIO = (3 / 4, 4 / 3)
STATS_SAMPLE = 500           # training images the mean/std are estimated on
STATS_SIDE = 64              # ... at this shorter side


def default_workers(world_size: int = 1) -> int:
    """Loader processes per rank: the CPU cores a rank has, less one for the training loop."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, cores // max(1, world_size) - 1))


def decode(path: str, channels: int = 3) -> torch.Tensor:
    """uint8 C x H x W (RGB, or grey with ``channels`` 1)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        return decode_image(read_file(path),
                            mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
    except (RuntimeError, ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot decode image {path!r}: {msg}") from e


def _resize(img: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF
    return TF.resize(img, list(hw), antialias=True)


def cover_crop(img: torch.Tensor, hw: Tuple[int, int], enlarge: float = 1.0) -> torch.Tensor:
    """Scale ``img`` (keeping its aspect) to cover ``hw`` x ``enlarge``, then crop ``hw`` from
    the centre."""
    h, w = img.shape[-2:]
    th, tw = hw
    scale = max(th * enlarge / h, tw * enlarge / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    img = _resize(img, (nh, nw))
    top, left = (nh - th) // 2, (nw - tw) // 2
    return img[..., top:top + th, left:left + tw]


def random_resized_crop(img: torch.Tensor, hw: Tuple[int, int], rng: random.Random) -> torch.Tensor:
    """torchvision's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3, ten tries, then the centre),
    drawing from ``rng`` instead of the global generator."""
    h, w = img.shape[-2:]
    area = h * w
    log_ratio = (math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*RRC_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
            return _resize(img[..., top:top + ch, left:left + cw], hw)
    return cover_crop(img, hw)


class FolderDataset(Dataset):
    """Decode and transform one image per item: ``(uint8 C x H x W at hw, label)``."""

    def __init__(self, files: Sequence[str], labels: Sequence[int], hw: Tuple[int, int],
                 channels: int, train: bool, flip: bool, seed: int):
        self.files, self.labels = list(files), list(labels)
        self.hw, self.channels = hw, channels
        self.train, self.flip, self.seed = train, flip, int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        img = decode(self.files[i], self.channels)
        if self.train:
            rng = random.Random(f"{self.seed}/{self.epoch}/{i}")  # the sample's own draws
            img = random_resized_crop(img, self.hw, rng)
            if self.flip and rng.random() < 0.5:
                img = img.flip(-1)
        else:
            img = cover_crop(img, self.hw, EVAL_RESIZE)
        return img.contiguous(), self.labels[i]


class StreamBatches:
    """One split of a :class:`StreamData` in batches of normalized tensors on ``device``; the
    same interface as :class:`tp_vgg.data.batches.Batches` (``set_epoch``, ``len``, ``device``).

    ``train=True``: a ``DistributedSampler`` permutation seeded by (seed, epoch), per-sample
    random crops and flips; ``train=False``: samples in order, rank ``r`` taking
    ``r::world_size``."""

    def __init__(self, data: "StreamData", split: str, batch_size: int, transform: Any,
                 device: torch.device | str = "cpu", *, train: bool = False, augment: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 workers: Optional[int] = None):
        files, labels = data.files(split)
        self.device = torch.device(device)
        self.transform = transform.to(self.device)
        self.batch_size = int(batch_size)
        self.train = train
        self.dataset = FolderDataset(files, labels, transform.input_hw, data.channels,
                                     train=train and augment, flip=data.flip, seed=seed)
        if train:
            self.sampler: Any = DistributedSampler(range(len(files)), num_replicas=world_size,
                                                   rank=rank, shuffle=True, seed=seed,
                                                   drop_last=False)
            self.num_samples = len(self.sampler)
        else:
            self.sampler = list(range(rank, len(files), world_size))
            self.num_samples = len(self.sampler)
        self.workers = default_workers(world_size) if workers is None else int(workers)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = int(epoch)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(int(epoch))

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda",
                            prefetch_factor=4 if self.workers else None)
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            yield self.transform(x), y


@dataclass
class StreamData:
    """An image folder as file lists and labels; decoded as it is read (:class:`StreamBatches`).
    Has the properties of :class:`tp_vgg.data.datasets.ImageData` that do not need the pixels."""

    name: str
    train_paths: List[str]
    train_labels: torch.Tensor
    test_paths: List[str]
    test_labels: torch.Tensor
    class_names: List[str]
    channels: int = 3
    flip: bool = True
    test_split: str = "test"
    workers: Optional[int] = None
    reason: str = ""                     # why the stream path was chosen (said on the terminal)
    _stats: Optional[Tuple[List[float], List[float]]] = field(default=None, repr=False)
    declared: Any = field(default=None, repr=False, compare=False)  # load_data's Declared
    # the split sizes before the --train-images/--test-images sample of the file lists
    full_sizes: Dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    streaming = True
    pad = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def image_size(self) -> None:
        return None  # images of any size; resized to the model's input size as they are read

    def files(self, split: str) -> Tuple[List[str], List[int]]:
        if split == "train":
            return self.train_paths, self.train_labels.tolist()
        if split in ("test", "val"):
            return self.test_paths, self.test_labels.tolist()
        raise UserError(f"unknown split {split!r}; accepted: train, test")

    def batches(self, split: str, batch_size: int, transform: Any, device: Any = "cpu", *,
                train: bool = False, augment: bool = True, seed: int = 0, rank: int = 0,
                world_size: int = 1) -> StreamBatches:
        return StreamBatches(self, split, batch_size, transform, device, train=train,
                             augment=augment, seed=seed, rank=rank, world_size=world_size,
                             workers=self.workers)

    def subset(self, split: str, idx: torch.Tensor) -> "StreamData":
        """The same data with only the samples ``idx`` of ``split`` (e.g. a test sample)."""
        import dataclasses
        paths, labels = (self.train_paths, self.train_labels) if split == "train" else \
            (self.test_paths, self.test_labels)
        picked = ([paths[i] for i in idx.tolist()], labels[idx])
        if split == "train":
            return dataclasses.replace(self, train_paths=picked[0], train_labels=picked[1])
        return dataclasses.replace(self, test_paths=picked[0], test_labels=picked[1])

    def holdout(self, idx: torch.Tensor) -> "StreamData":
        """The training split divided: its samples ``idx`` become the test split (a held-out
        slice), the others stay the training split."""
        import dataclasses
        keep = torch.ones(len(self.train_labels), dtype=torch.bool)
        keep[idx] = False
        rest = keep.nonzero().flatten().tolist()
        return dataclasses.replace(
            self, train_paths=[self.train_paths[i] for i in rest],
            train_labels=self.train_labels[keep],
            test_paths=[self.train_paths[i] for i in idx.tolist()],
            test_labels=self.train_labels[idx], test_split="train (held out)")

    def stats(self) -> Tuple[List[float], List[float]]:
        """Per-channel mean and std, estimated on a seeded sample of ``STATS_SAMPLE`` training
        images at ``STATS_SIDE`` px (the whole set is not read)."""
        if self._stats is None:
            n = len(self.train_paths)
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE]
            total = torch.zeros(self.channels, dtype=torch.float64)
            sq = torch.zeros(self.channels, dtype=torch.float64)
            count = 0
            for i in idx.tolist():
                x = cover_crop(decode(self.train_paths[i], self.channels),
                               (STATS_SIDE, STATS_SIDE)).to(torch.float64).div_(255)
                total += x.sum(dim=(1, 2))
                sq += x.pow(2).sum(dim=(1, 2))
                count += x.shape[1] * x.shape[2]
            mean = total / count
            std = (sq / count - mean.pow(2)).clamp_min(1e-12).sqrt()
            self._stats = ([round(float(v), 6) for v in mean], [round(float(v), 6) for v in std])
        return self._stats

    def preprocessing(self) -> Preprocessing:
        mean, std = self.stats()
        return Preprocessing(None, self.channels, mean, std, list(self.class_names),
                             {"dataset": self.name, "loader": "stream",
                              "augment": {"random_resized_crop": list(RRC_SCALE),
                                          "horizontal_flip": self.flip},
                              "eval_resize": round(EVAL_RESIZE, 6)})
