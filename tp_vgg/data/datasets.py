"""Datasets held in memory as uint8 tensors: each is decoded once into ``uint8`` tensors
(N x C x H x W) and labels. :mod:`tp_vgg.data.batches` batches and augments them on the device.
An image folder too large for memory is read from disk instead (:mod:`tp_vgg.data.stream`).

Datasets are entries of the ``DATASETS`` registry: ``loader(DataConfig) -> ImageData`` (or a
:class:`tp_vgg.data.stream.StreamData`). Both give batches through ``data.batches(...)``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from tp_vgg.data.declared import Declared, check_channels, declared_normalization
from tp_vgg.data.preprocessing import Preprocessing, input_hw, size_value
from tp_vgg.errors import UserError
from tp_vgg.registry import Registry

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp")


@dataclass
class DataConfig:
    """Which dataset and where. ``kwargs`` are dataset options (``--data-kwargs``), e.g. for
    ``fake``: ``train_size``, ``test_size``, ``num_classes``, ``image_size``, ``channels``; for
    every dataset ``mean`` and ``std`` (as the ``mean``/``std`` fields).

    ``mean``/``std`` (``--mean``/``--std``): the normalization the model was trained with, one
    value per channel, used instead of the checkpoint's or the data's statistics.
    ``allow_class_mismatch`` (``--allow-class-mismatch``): go on (with a notice) when the data's
    class names differ from those the model records.

    ``train_images``/``test_images`` (``--train-images``/``--test-images``): use only N images
    of that split, drawn at random without replacement, seeded by ``subset_seed`` (the command's
    ``--seed``): the same N images for the same seed, whichever loader reads them. ``None``: all.
    More than the split holds: all of them (said on the log)."""

    name: str = "digits"
    data_dir: Optional[str] = None
    download: bool = False
    kwargs: Dict[str, Any] = field(default_factory=dict)
    loader: str = "auto"            # imagefolder: memory | stream | auto (see LOADERS)
    workers: Optional[int] = None   # stream: loader processes per rank (None: the cores less one)
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    allow_class_mismatch: bool = False
    train_images: Optional[int] = None  # use N training images (seeded sample); None: all
    test_images: Optional[int] = None   # use N test images (seeded sample); None: all
    subset_seed: int = 0                # seeds the train_images/test_images samples

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "DataConfig":
        """A config written by ``dataclasses.asdict`` (a checkpoint's ``train_state["data"]``, a
        resume file); fields it lacks (an older file) take their defaults, unknown ones are
        left out."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})

    def normalization(self) -> Tuple[Optional[List[float]], Optional[List[float]]]:
        """The declared mean/std (from the fields and/or ``kwargs``), checked."""
        return declared_normalization(self.mean, self.std, self.kwargs or {})

    def validate(self) -> None:
        if self.loader not in LOADERS:
            raise UserError(f"--data-loader {self.loader!r} is not a data loader; accepted: "
                            f"{', '.join(LOADERS)}")
        if self.workers is not None and (isinstance(self.workers, bool)
                                         or not isinstance(self.workers, int) or self.workers < 0):
            raise UserError(f"--workers must be an integer >= 0, got {self.workers!r}")
        for split in SPLITS:
            n = getattr(self, f"{split}_images")
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise UserError(f"--{split}-images {n!r} is not accepted; accepted: a whole "
                                f"number >= 1 (the {split} images to use), or leave it out for "
                                "all of them")
        if isinstance(self.subset_seed, bool) or not isinstance(self.subset_seed, int):
            raise UserError(f"DataConfig.subset_seed {self.subset_seed!r} is not accepted; "
                            "accepted: an integer (the --seed of the command)")
        self.normalization()


LOADERS = ("auto", "memory", "stream")
SPLITS = ("train", "test")  # the splits --train-images / --test-images take a sample of
# auto streams an image folder whose decoded images would take more than this share of the
# machine's memory (per process on the machine: each torchrun rank would hold a copy)
MEMORY_SHARE = 0.25


@dataclass
class ImageData:
    """A dataset in memory: uint8 images (N x C x H x W) and int64 labels per split."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: List[str]
    flip: bool = True          # horizontal flip is a valid augmentation (not for digits)
    pad: int = 4               # random-crop padding
    test_split: str = "test"   # the folder or split the test images came from
    declared: Optional[Declared] = field(default=None, repr=False, compare=False)  # load_data's
    # the split sizes before a --train-images/--test-images sample the loader took (imagefolder)
    full_sizes: Dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    # stats(), computed once per object (a subset or held-out split is a new object)
    _stats: Optional[Tuple[List[float], List[float]]] = field(default=None, init=False,
                                                              repr=False, compare=False)

    streaming = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    def batches(self, split: str, batch_size: int, transform: Any, device: Any = "cpu", *,
                train: bool = False, augment: bool = True, seed: int = 0, rank: int = 0,
                world_size: int = 1) -> Any:
        """``split`` in batches on ``device`` (:class:`tp_vgg.data.batches.Batches`)."""
        from tp_vgg.data.batches import Batches

        images, labels = self.split(split)
        return Batches(images, labels, batch_size, transform, device, train=train, pad=self.pad,
                       flip=self.flip, augment=augment, seed=seed, rank=rank,
                       world_size=world_size)

    def subset(self, split: str, idx: torch.Tensor) -> "ImageData":
        """The same data with only the samples ``idx`` of ``split``."""
        import dataclasses
        if split == "train":
            return dataclasses.replace(self, train_images=self.train_images[idx],
                                       train_labels=self.train_labels[idx])
        return dataclasses.replace(self, test_images=self.test_images[idx],
                                   test_labels=self.test_labels[idx])

    def holdout(self, idx: torch.Tensor) -> "ImageData":
        """The training split divided: its samples ``idx`` become the test split (a held-out
        slice scored in place of the test images), the others stay the training split."""
        import dataclasses
        keep = torch.ones(len(self.train_labels), dtype=torch.bool)
        keep[idx] = False
        return dataclasses.replace(self, train_images=self.train_images[keep],
                                   train_labels=self.train_labels[keep],
                                   test_images=self.train_images[idx],
                                   test_labels=self.train_labels[idx],
                                   test_split="train (held out)")

    @property
    def image_size(self) -> Any:
        """S, or [H, W] for non-square images."""
        return size_value(tuple(self.train_images.shape[-2:]))

    def split(self, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
        if name == "train":
            return self.train_images, self.train_labels
        if name in ("test", "val"):
            return self.test_images, self.test_labels
        raise UserError(f"unknown split {name!r}; accepted: train, test")

    def stats(self) -> Tuple[List[float], List[float]]:
        """Per-channel mean and std of the training images, in [0, 1] units (computed once)."""
        if self._stats is None:
            self._stats = self._compute_stats()
        return self._stats

    def _compute_stats(self) -> Tuple[List[float], List[float]]:
        x = self.train_images
        total = torch.zeros(x.shape[1], dtype=torch.float64)
        sq = torch.zeros(x.shape[1], dtype=torch.float64)
        for i in range(0, len(x), 4096):
            chunk = x[i:i + 4096].to(torch.float64).div_(255)
            total += chunk.sum(dim=(0, 2, 3))
            sq += chunk.pow(2).sum(dim=(0, 2, 3))
        n = x.shape[0] * x.shape[2] * x.shape[3]
        mean = total / n
        std = (sq / n - mean.pow(2)).clamp_min(1e-12).sqrt()
        return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]

    def preprocessing(self) -> Preprocessing:
        """The preprocessing of a model trained on these data (their statistics)."""
        mean, std = self.stats()
        return Preprocessing(self.image_size, self.in_channels, mean, std, list(self.class_names),
                             {"dataset": self.name,
                              "augment": {"crop_padding": self.pad, "horizontal_flip": self.flip}})


DATASETS: Registry[Callable[[DataConfig], ImageData]] = Registry("dataset")


def load_data(cfg: DataConfig, log: Optional[Callable[[str], None]] = None) -> Any:
    """Load (decode once) the dataset ``cfg`` names -- or, for an image folder read from disk
    (``cfg.loader``), list it; ``log`` is told which and why."""
    cfg.validate()
    if cfg.loader == "stream" and cfg.name != "imagefolder":
        raise UserError(f"--data-loader stream reads image folders (--data imagefolder); "
                        f"{cfg.name!r} is held in memory")
    mean, std = cfg.normalization()
    loader = DATASETS.get(cfg.name)
    options = {k: v for k, v in (cfg.kwargs or {}).items() if k not in ("mean", "std")}
    data = loader(cfg if options == (cfg.kwargs or {}) else
                  dataclasses.replace(cfg, kwargs=options))
    data = _take_samples(cfg, data, log)
    declared = Declared(mean, std, bool(cfg.allow_class_mismatch), log)
    check_channels(declared, data.name, data.in_channels)
    data.declared = declared
    if log is not None and getattr(data, "reason", ""):
        log(data.reason)
    return data


def sample_indices(total: int, n: Optional[int], seed: int, split: str) -> Optional[torch.Tensor]:
    """The seeded sample (``--train-images``/``--test-images``): ``n`` of the ``total`` samples
    of ``split``, drawn without replacement, as sorted indices; None when ``n`` is None or
    covers them all. A function of (total, n, seed, split) only."""
    if n is None or n >= total:
        return None
    offset = SPLITS.index(split) if split in SPLITS else 0
    g = torch.Generator().manual_seed((int(seed) * len(SPLITS) + offset) % 2**63)
    return torch.randperm(total, generator=g)[:n].sort().values


def _split_len(data: Any, split: str) -> int:
    return len(data.train_labels if split == "train" else data.test_labels)


def _take_samples(cfg: DataConfig, data: Any, log: Optional[Callable[[str], None]]) -> Any:
    """``data`` with only ``cfg.train_images``/``cfg.test_images`` samples of each split (a loader
    may have taken them already, from its file list: ``data.full_sizes``); ``log`` is told."""
    for split in SPLITS:
        n = getattr(cfg, f"{split}_images")
        if n is None:
            continue
        have = _split_len(data, split)
        total = (getattr(data, "full_sizes", None) or {}).get(split, have)
        idx = sample_indices(have, n, cfg.subset_seed, split)
        if idx is not None:
            data = data.subset(split, idx)
        if log is None:
            continue
        what = "training" if split == "train" else f"{getattr(data, 'test_split', 'test')}"
        if n > total:
            log(f"--{split}-images {n:,}: the {data.name} {what} split holds only {total:,} "
                "images; using all of them")
        elif n < total:
            log(f"--{split}-images {n:,}: using {n:,} of the {total:,} {data.name} {what} images "
                f"(a random sample, the same for the same --seed; seed {cfg.subset_seed})")
    return data


# --data-kwargs keys that ask for fewer images (--train-images/--test-images do that)
_COUNT_WORDS = ("train", "test", "val", "subset", "sample", "limit", "count", "images", "num",
                "n_", "max", "fraction", "size")
_NOT_COUNTS = ("image_size", "img_size", "input_size", "resolution", "channels", "mean", "std")


def _asks_for_fewer_images(key: str) -> bool:
    k = str(key).lower()
    return k not in _NOT_COUNTS and any(w in k for w in _COUNT_WORDS)


def _options(cfg: DataConfig, accepted: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(cfg.kwargs) - set(accepted))
    if unknown:
        hint = ""
        if _asks_for_fewer_images(unknown[0]):
            hint = ("; to use fewer images of any dataset pass --train-images N and/or "
                    "--test-images N (a seeded random sample)")
        raise UserError(f"--data-kwargs {unknown[0]!r} is not an option of dataset {cfg.name!r}; "
                        f"accepted: {', '.join(list(accepted) + ['mean', 'std'])}" + hint)
    return {**accepted, **cfg.kwargs}


# --------------------------------------------------------------------------------------------
# digits: scikit-learn's bundled 8x8 handwritten digits, offline.

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def _digits(cfg: DataConfig) -> ImageData:
    opts = _options(cfg, {"image_size": 32})
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).to(torch.float32).unsqueeze(1) / 16.0     # N x 1 x 8 x 8
    size = int(opts["image_size"])
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(d.target).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_test = int(round(len(y) * DIGITS_TEST_FRACTION))
    test, train = perm[:n_test], perm[n_test:]
    return ImageData("digits", x[train], y[train], x[test], y[test],
                     [str(i) for i in range(10)], flip=False)


DATASETS.register("digits", _digits, "scikit-learn's 1,797 8x8 digits, 32x32 RGB, seeded 80/20 split")


# --------------------------------------------------------------------------------------------
# fake: synthetic class prototypes plus noise; learnable, for smoke tests.

def _fake(cfg: DataConfig) -> ImageData:
    opts = _options(cfg, {"train_size": 512, "test_size": 128, "num_classes": 10,
                          "image_size": 32, "channels": 3, "seed": 0, "noise": 0.5})
    for key in ("train_size", "test_size", "num_classes", "channels"):
        if not isinstance(opts[key], int) or opts[key] < 1:
            raise UserError(f"--data-kwargs {key} must be a positive integer, got {opts[key]!r}")
    g = torch.Generator().manual_seed(int(opts["seed"]))
    k, c, hw = opts["num_classes"], opts["channels"], _size_option(opts["image_size"])
    protos = F.interpolate(torch.rand(k, c, 4, 4, generator=g), size=hw, mode="bilinear",
                           align_corners=False)

    def make(n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, k, (n,), generator=g)
        noise = torch.rand(n, c, *hw, generator=g)
        x = (1 - opts["noise"]) * protos[y] + opts["noise"] * noise
        return (x * 255).round().clamp(0, 255).to(torch.uint8), y

    xtr, ytr = make(opts["train_size"])
    xte, yte = make(opts["test_size"])
    return ImageData("fake", xtr, ytr, xte, yte, [f"class{i}" for i in range(k)])


DATASETS.register("fake", _fake, "synthetic prototypes + noise (--data-kwargs sets sizes)")


# --------------------------------------------------------------------------------------------
# cifar10 / cifar100 through torchvision.

_CIFAR = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("CIFAR100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


def _cifar(name: str) -> Callable[[DataConfig], ImageData]:
    cls_name, folder, url = _CIFAR[name]

    def load(cfg: DataConfig) -> ImageData:
        _options(cfg, {})
        import torchvision

        root = cfg.data_dir or "data"
        cls = getattr(torchvision.datasets, cls_name)
        splits = []
        for train in (True, False):
            try:
                ds = cls(root=root, train=train, download=cfg.download)
            except RuntimeError as e:
                raise UserError(
                    f"{name} is not in --data-dir {root!r} (looked for {os.path.join(root, folder)}); "
                    f"pass --download to fetch it (needs a network), or extract {url} there; "
                    "a JPEG copy in train/ and test/ class folders works with --data imagefolder") from e
            except OSError as e:  # no network, disk full, permission denied
                raise UserError(f"could not get {name} into {root!r}: {e}") from e
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            splits.append((images, torch.as_tensor(ds.targets, dtype=torch.long)))
            classes = list(ds.classes)
        (xtr, ytr), (xte, yte) = splits
        return ImageData(name, xtr, ytr, xte, yte, classes)

    return load


DATASETS.register("cifar10", _cifar("cifar10"), "CIFAR-10 via torchvision (--data-dir, --download)")
DATASETS.register("cifar100", _cifar("cifar100"), "CIFAR-100 via torchvision (--data-dir, --download)")


# --------------------------------------------------------------------------------------------
# imagefolder: DIR/train/<class>/*.jpg and DIR/val/ or DIR/test/.

def _list_images(folder: str, classes: Optional[List[str]]) -> Tuple[List[str], List[int], List[str]]:
    found = sorted(d.name for d in os.scandir(folder) if d.is_dir())
    if classes is None:
        classes = found
        if not classes:
            raise UserError(f"{folder!r} holds no class folders; expected {folder}/<class>/<image>")
    else:
        extra = [c for c in found if c not in classes]
        if extra:
            raise UserError(f"class folder {os.path.join(folder, extra[0])!r} is not a class of the "
                            f"training set ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})")
    files, labels = [], []
    for idx, c in enumerate(classes):
        d = os.path.join(folder, c)
        if not os.path.isdir(d):
            continue
        names = sorted(n for n in os.listdir(d) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            # every folder of train/ is a class: an empty one would be a class the model must
            # output but can never learn (and would count towards --num-classes)
            raise UserError(f"class folder {d!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            "add its images, or remove the folder if it is not a class")
        files += [os.path.join(d, n) for n in names]
        labels += [idx] * len(names)
    if not files:
        raise UserError(f"{folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return files, labels, classes


def _decode_all(files: Sequence[str], size: Optional[Tuple[int, int]],
                channels: int = 3) -> torch.Tensor:
    from tp_vgg.data.stream import decode

    out: Optional[torch.Tensor] = None
    for i, path in enumerate(files):
        img = decode(path, channels)
        if size is not None and tuple(img.shape[1:]) != size:
            img = _resize_center_crop(img, size)
        if out is None:
            h, w = img.shape[1:]
            out = torch.empty(len(files), channels, h, w, dtype=torch.uint8)
        if img.shape != out.shape[1:]:
            raise UserError(
                f"image {path!r} is {img.shape[1]}x{img.shape[2]} (HxW), not "
                f"{out.shape[2]}x{out.shape[3]} "
                f"like {files[0]!r}; pass --data-kwargs '{{\"image_size\": S}}' (or [H, W]) to resize "
                "every image (to cover S x S, then centre crop), or --data-loader stream")
        out[i] = img
    assert out is not None
    return out


def _resize_center_crop(img: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Scale ``img`` to cover ``size`` (H, W), keeping its aspect, then crop the centre."""
    h, w = img.shape[1:]
    th, tw = size
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    x = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", align_corners=False,
                      antialias=scale < 1)[0]
    top, left = (nh - th) // 2, (nw - tw) // 2
    return x[:, top:top + th, left:left + tw].round().clamp(0, 255).to(torch.uint8)


def _size_option(v: Any) -> Tuple[int, int]:
    """``--data-kwargs image_size``: S or [H, W], positive integers."""
    ok = lambda d: isinstance(d, int) and not isinstance(d, bool) and d >= 1  # noqa: E731
    if ok(v) or (isinstance(v, list) and len(v) == 2 and all(ok(d) for d in v)):
        return input_hw(v)
    raise UserError(f"--data-kwargs image_size must be a positive integer S or [H, W], got {v!r}")


def _memory_budget() -> int:
    """Bytes the decoded images may take in memory: a share of the machine's RAM, divided among
    the processes torchrun starts on it."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 * 2**30
    return int(ram * MEMORY_SHARE / max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))


def _choose_loader(cfg: DataConfig, files: Sequence[str], test_files: Sequence[str],
                   size: Optional[Tuple[int, int]], channels: int) -> Tuple[str, str]:
    """(``memory`` or ``stream``, why) for an image folder: ``auto`` streams when the decoded set
    would exceed the memory budget or when its images differ in size (and no image_size is
    given); the first 8 spread-out images stand for the rest."""
    if cfg.loader != "auto":
        return cfg.loader, (f"reading {cfg.data_dir!r} from disk batch by batch "
                            "(--data-loader stream)" if cfg.loader == "stream" else "")
    from tp_vgg.data.stream import decode

    sample = [files[i] for i in range(0, len(files), max(1, len(files) // 8))][:8]
    shapes = {tuple(decode(f, channels).shape[-2:]) for f in sample}
    n = len(files) + len(test_files)
    if size is None and len(shapes) > 1:
        return "stream", (f"{cfg.data_dir!r}: images of different sizes "
                          f"({', '.join(f'{h}x{w}' for h, w in sorted(shapes)[:3])} HxW, ...): reading "
                          "them from disk, resized as they are read (--data-loader stream; "
                          "--data-kwargs image_size S decodes them into memory instead)")
    h, w = size or next(iter(shapes))
    need, budget = n * channels * h * w, _memory_budget()
    if need > budget:
        return "stream", (f"{cfg.data_dir!r}: {n:,} images would take {need / 2**30:.1f} GiB "
                          f"decoded, over the {budget / 2**30:.1f} GiB budget "
                          f"({MEMORY_SHARE:.0%} of this machine's memory per process): reading "
                          "them from disk batch by batch (--data-loader stream; --data-loader "
                          "memory to decode them anyway)")
    return "memory", ""


def _imagefolder(cfg: DataConfig) -> ImageData:
    opts = _options(cfg, {"image_size": None, "channels": 3})
    channels = opts["channels"]
    if channels not in (1, 3) or isinstance(channels, bool):
        raise UserError(f"--data-kwargs channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    root = cfg.data_dir
    if not root:
        raise UserError("--data imagefolder needs --data-dir DIR holding train/ and val/ or test/ "
                        "class folders")
    if not os.path.isdir(root):
        archive = archive_hint(root)
        if archive:
            raise UserError(archive)
        if os.path.isfile(root):
            raise UserError(f"--data-dir {root!r} is a file, not a folder; accepted: a folder "
                            "holding train/ and val/ or test/ class folders")
        raise UserError(f"--data-dir {root!r} does not exist or is not a folder")
    train_dir = os.path.join(root, "train")
    test_name = next((n for n in ("val", "test") if os.path.isdir(os.path.join(root, n))), None)
    if not os.path.isdir(train_dir) or test_name is None:
        missing = "train/" if not os.path.isdir(train_dir) else "val/ or test/"
        raise UserError(f"--data-dir {root!r} has no {missing} folder; expected {root}/train/<class>/ "
                        f"and {root}/val/<class>/ (or test/)")
    size = _size_option(opts["image_size"]) if opts["image_size"] is not None else None
    files, labels, classes = _list_images(train_dir, None)
    tfiles, tlabels, _ = _list_images(os.path.join(root, test_name), classes)
    full_sizes = {"train": len(files), "test": len(tfiles)}
    # --train-images/--test-images: sample the file lists, so that only those images are decoded
    files, labels = _sample_files(files, labels, cfg.train_images, cfg.subset_seed, "train")
    tfiles, tlabels = _sample_files(tfiles, tlabels, cfg.test_images, cfg.subset_seed, "test")
    how, why = _choose_loader(cfg, files, tfiles, size, channels)
    if how == "stream":
        from tp_vgg.data.stream import StreamData

        if size is not None:
            why += ("; --data-kwargs image_size is not used: streamed images are resized to the "
                    "model's input size as they are read")
        return StreamData("imagefolder", files, torch.tensor(labels), tfiles, torch.tensor(tlabels),
                          classes, channels=channels, test_split=test_name, workers=cfg.workers,
                          reason=why, full_sizes=full_sizes)
    xtr = _decode_all(files, size, channels)
    xte = _decode_all(tfiles, size or tuple(xtr.shape[-2:]), channels)
    return ImageData("imagefolder", xtr, torch.tensor(labels), xte, torch.tensor(tlabels),
                     classes, test_split=test_name, full_sizes=full_sizes)


def _sample_files(files: List[str], labels: List[int], n: Optional[int], seed: int,
                  split: str) -> Tuple[List[str], List[int]]:
    """The files (and labels) of the seeded sample of ``n`` (:func:`sample_indices`)."""
    idx = sample_indices(len(files), n, seed, split)
    if idx is None:
        return files, labels
    keep = idx.tolist()
    return [files[i] for i in keep], [labels[i] for i in keep]


ARCHIVES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")


def archive_hint(path: str) -> str:
    """For a ``--data-dir`` that names an archive (.tar.gz, .tgz, .tar, .zip, ...): one line
    saying so, with the command that extracts it and the --data-dir to give then; "" otherwise.
    Only the archive's first entry is read (its top folder)."""
    import shlex
    import tarfile
    import zipfile

    if not os.path.isfile(path):
        return ""
    low = path.lower()
    suffix = next((s for s in ARCHIVES if low.endswith(s)), None)
    top = None
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                first = next(iter(z.namelist()), None)  # a folder's name ends with "/"
            kind = "zip"
        elif tarfile.is_tarfile(path):
            with tarfile.open(path) as t:
                member = t.next()
                first = None if member is None else member.name + ("/" if member.isdir() else "")
            kind = "tar"
        elif suffix is not None:
            return (f"--data-dir {path!r} is an archive ({suffix}) but cannot be read as one "
                    "(truncated or corrupt?); extract it into a folder and pass that folder")
        else:
            return ""
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        return (f"--data-dir {path!r} is an archive but cannot be read ({type(e).__name__}: "
                f"{str(e)[:80]}); extract it into a folder and pass that folder")
    if first:
        parts = [p for p in first.replace("\\", "/").split("/") if p not in ("", ".")]
        top = parts[0] if parts and (len(parts) > 1 or first.endswith("/")) else None
    if top in (None, "train", "val", "test"):
        folder = "data"
    else:
        folder = f"data/{top}"
    q = shlex.quote(path)
    if kind == "zip":
        extract = f"mkdir -p data && unzip -q {q} -d data"
    else:
        flags = {".tar.gz": "xzf", ".tgz": "xzf", ".tar.bz2": "xjf", ".tar.xz": "xJf"}.get(
            suffix or "", "xf")
        extract = f"mkdir -p data && tar {flags} {q} -C data"
    return (f"--data-dir {path!r} is an archive, not a folder; extract it first: {extract}, "
            f"then pass --data-dir {shlex.quote(folder)} (the folder holding train/ and val/ or "
            "test/)")


DATASETS.register("imagefolder", _imagefolder,
                  "--data-dir with train/ and val/ or test/ class folders (decoded once into "
                  "memory, or read from disk batch by batch: --data-loader)")
