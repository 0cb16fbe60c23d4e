"""Batching and augmentation on the device: a dataset's uint8 tensors become normalized float
batches at the model's input size. Every epoch draws a seeded permutation (``DistributedSampler``,
also with one process) and seeded per-sample crop and flip offsets, so the data order and
augmentation of epoch ``e`` depend only on ``(seed, e)`` -- a resumed run sees exactly the
batches an uninterrupted one would, and N processes see together exactly the batches one process
would. Random crop (zero padding) and horizontal flip run batch-wise in one gather; there are no
DataLoader workers."""

from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from tp_vgg.data.preprocessing import input_hw


class BatchTransform:
    """uint8 batch -> normalized float batch at the model's input size, on the batch's device.

    Training batches get a random crop (zero padding ``pad``) and, if ``flip``, a horizontal flip,
    both done by one gather with per-sample offsets drawn beforehand (see :class:`Batches`).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float],
                 input_size: Union[int, Sequence[int]], channels_last: bool = False):
        self.mean255 = torch.tensor([m * 255 for m in mean]).view(1, -1, 1, 1)
        self.inv_std255 = torch.tensor([1 / (s * 255) for s in std]).view(1, -1, 1, 1)
        self.input_hw = input_hw(input_size)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def to(self, device: torch.device) -> "BatchTransform":
        self.mean255 = self.mean255.to(device)
        self.inv_std255 = self.inv_std255.to(device)
        return self

    @staticmethod
    def crop_flip(x: torch.Tensor, pad: int, oy: torch.Tensor, ox: torch.Tensor,
                  flip: Optional[torch.Tensor]) -> torch.Tensor:
        """Per-sample crop at (oy, ox) of the zero-padded batch, mirrored where ``flip``."""
        b, _, h, w = x.shape
        xp = F.pad(x, (pad, pad, pad, pad)) if pad else x
        ar_h = torch.arange(h, device=x.device)
        ar_w = torch.arange(w, device=x.device)
        rows = oy[:, None] + ar_h                                      # B x H
        cols = ox[:, None] + ar_w                                      # B x W
        if flip is not None:
            cols = torch.where(flip[:, None], ox[:, None] + (w - 1 - ar_w), cols)
        bidx = torch.arange(b, device=x.device)[:, None, None]
        out = xp[bidx, :, rows[:, :, None], cols[:, None, :]]          # B x H x W x C
        return out.permute(0, 3, 1, 2)                                 # channels_last strides

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        h, w = self.input_hw
        if x.shape[-2] != h or x.shape[-1] != w:
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                              antialias=x.shape[-2] > h or x.shape[-1] > w)
        x = (x - self.mean255) * self.inv_std255
        return x.contiguous(memory_format=self.memory_format)


def _fits_on_device(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < 0.4 * free


class Batches:
    """Iterate one split of in-memory data in batches of normalized tensors on ``device``.

    ``train=True``: a shuffled epoch (``DistributedSampler`` with ``seed``, padded to a multiple of
    ``world_size``) and random crop/flip, all seeded by ``(seed, epoch)`` and per sample, so the
    union of the ranks' batches equals one process's batches. ``train=False``: samples in order,
    rank ``r`` taking ``r::world_size`` with no padding, so sums over ranks count each sample once.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 transform: BatchTransform, device: torch.device | str = "cpu", *,
                 train: bool = False, pad: int = 4, flip: bool = True, augment: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        self.device = torch.device(device)
        nbytes = images.numel() * images.element_size()
        self.on_device = _fits_on_device(nbytes, self.device)
        if self.on_device:
            self.images, self.labels = images.to(self.device), labels.to(self.device)
        else:  # copied per batch from pinned host memory
            self.images, self.labels = images.pin_memory(), labels.pin_memory()
        self.batch_size = int(batch_size)
        self.transform = transform.to(self.device)
        self.train, self.augment = train, augment and train
        self.pad, self.flip = pad, flip
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        n = len(labels)
        if train:
            self.sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank,
                                              shuffle=True, seed=seed, drop_last=False)
            self.num_samples = len(self.sampler)
        else:
            self.sampler = None
            self.num_samples = len(range(rank, n, world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def _indices(self) -> torch.Tensor:
        if self.sampler is None:
            return torch.arange(self.rank, len(self.labels), self.world_size)
        return torch.tensor(list(iter(self.sampler)), dtype=torch.long)

    def _offsets(self) -> Optional[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]:
        """Crop offsets and flips for every sample of this epoch (same on every rank)."""
        if not self.augment:
            return None
        n = len(self.labels)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch * 7919 + 12345) % (2**63))
        oy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
        ox = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5 if self.flip else None
        return oy, ox, flip

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        offsets = self._offsets()
        dev = self.device
        idx_dev = idx.to(dev) if self.on_device else idx
        for start in range(0, len(idx), self.batch_size):
            i = idx_dev[start:start + self.batch_size]
            x, y = self.images[i], self.labels[i]
            if not self.on_device:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if offsets is not None:
                ic = idx[start:start + self.batch_size]
                oy, ox, flip = (None if t is None else t[ic].to(dev, non_blocking=True)
                                for t in offsets)
                x = BatchTransform.crop_flip(x, self.pad, oy, ox, flip)
            yield self.transform(x), y
