"""Image data sets in the formats users have: image folders, CIFAR-10 (python batches), MNIST-style IDX.

Every data set yields ``{"image": float CHW in [-1, 1], "label": int}`` or ``None`` for an image that would not
decode; ``collate`` drops the ``None``s and counts them in the batch, so a corrupt file never stops a run.
"""

from __future__ import annotations

import gzip
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from visgen.data.config import IMAGE_EXTENSIONS, DataConfig, DataError, to_tensor
from visgen.data.video import VideoDataset


class ImageDataset(torch.utils.data.Dataset):
    """Base: subclasses give ``__len__``, ``load(i) -> PIL image`` and ``label(i)``."""

    classes: list[str] = []

    def __init__(self, cfg: DataConfig, seed: int = 0):
        self.cfg, self.seed, self.epoch = cfg, seed, 0
        self.index = list(range(self.num_items()))
        if cfg.limit is not None and cfg.limit < len(self.index):
            random.Random(seed).shuffle(self.index)
            self.index = sorted(self.index[: cfg.limit])

    def num_items(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict | None:
        j = self.index[i]
        try:
            img = self.load(j)
            img.load()
            x = to_tensor(img, self.cfg)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            return None  # corrupt or truncated: counted by collate, reported by the trainer
        if self.cfg.random_flip and random.Random(hash((self.seed, self.epoch, j))).random() < 0.5:
            x = x.flip(-1)
        return {"image": x, "label": self.label(j)}

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class FolderDataset(ImageDataset):
    """An ImageFolder layout (``root/<class>/*.jpg``, labels from sorted class names) or a flat folder."""

    def __init__(self, cfg: DataConfig, seed: int = 0):
        root = Path(cfg.path)
        subdirs = sorted(d for d in root.iterdir() if d.is_dir())
        self.files, self.labels = [], []
        if subdirs:
            self.classes = [d.name for d in subdirs]
            for c, d in enumerate(subdirs):
                files = sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
                self.files += files
                self.labels += [c] * len(files)
        else:
            self.classes = []
            self.files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
            self.labels = [-1] * len(self.files)
        if not self.files:
            raise DataError(
                f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}; expected class subfolders "
                "(ImageFolder layout) or a flat folder of images"
            )
        super().__init__(cfg, seed)

    def num_items(self) -> int:
        return len(self.files)

    def load(self, j: int) -> Image.Image:
        return Image.open(self.files[j])

    def label(self, j: int) -> int:
        return self.labels[j]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    # CIFAR-10's python batches are pickles; admit only what they hold (numpy arrays, lists, dicts)
    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch file")


class Cifar10Dataset(ImageDataset):
    """CIFAR-10 in torchvision's on-disk format: ``cifar-10-batches-py/{data_batch_1..5,test_batch}``."""

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def __init__(self, cfg: DataConfig, seed: int = 0):
        root = Path(cfg.path)
        if (root / "cifar-10-batches-py").is_dir():
            root = root / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] if cfg.split == "train" else ["test_batch"]
        present = [root / n for n in names if (root / n).is_file()]
        if not present:
            raise DataError(f"no CIFAR-10 batches {names} in {root} (expected torchvision's cifar-10-batches-py)")
        images, labels = [], []
        for f in present:
            with open(f, "rb") as fh:
                d = _NumpyOnlyUnpickler(fh, encoding="bytes").load()
            images.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels += list(d[b"labels"])
        self.images, self.labels = np.concatenate(images), labels
        super().__init__(cfg, seed)

    def num_items(self) -> int:
        return len(self.images)

    def load(self, j: int) -> Image.Image:
        return Image.fromarray(self.images[j])

    def label(self, j: int) -> int:
        return int(self.labels[j])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {arr.size} values")
    return arr.reshape(shape)


def _find_idx(root: Path, prefix: str, kind: str) -> Path | None:
    for f in sorted(root.iterdir()):
        if f.name.startswith(prefix) and f"{kind}-idx" in f.name:
            return f
    return None


class IdxDataset(ImageDataset):
    """MNIST / Fashion-MNIST IDX files (``train-images-idx3-ubyte[.gz]``, ``t10k-...``), torchvision's raw format."""

    FASHION = [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]

    def __init__(self, cfg: DataConfig, seed: int = 0):
        root = Path(cfg.path)
        if (root / "raw").is_dir():
            root = root / "raw"
        prefix = "train" if cfg.split == "train" else "t10k"
        img_f, lab_f = _find_idx(root, prefix, "images"), _find_idx(root, prefix, "labels")
        if img_f is None:
            raise DataError(f"no {prefix}-images-idx3-ubyte[.gz] in {root} (MNIST / Fashion-MNIST IDX layout)")
        self.images = _read_idx(img_f)
        self.labels = _read_idx(lab_f) if lab_f else np.full(len(self.images), -1)
        self.classes = self.FASHION if "fashion" in str(root).lower() else [str(i) for i in range(10)]
        super().__init__(cfg, seed)

    def num_items(self) -> int:
        return len(self.images)

    def load(self, j: int) -> Image.Image:
        return Image.fromarray(self.images[j], mode="L")

    def label(self, j: int) -> int:
        return int(self.labels[j])


FORMATS = {"folder": FolderDataset, "cifar10": Cifar10Dataset, "idx": IdxDataset}


def detect_format(path: Path) -> str:
    if (path / "cifar-10-batches-py").is_dir() or (path / "data_batch_1").is_file() or (path / "test_batch").is_file():
        return "cifar10"
    root = path / "raw" if (path / "raw").is_dir() else path
    if any("-idx" in f.name and "ubyte" in f.name for f in root.iterdir()):
        return "idx"
    return "folder"


def build_dataset(cfg: DataConfig, seed: int = 0) -> ImageDataset:
    """Open the data set that ``cfg`` describes, with a clear error for a wrong path or format."""
    if not cfg.path:
        raise DataError("no data path given: set data.path=... (an image folder, CIFAR-10 batches or IDX files)")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    if cfg.frames:
        if cfg.channels not in (1, 3):
            raise DataError(f"data.channels must be 1 or 3, got {cfg.channels}")
        return VideoDataset(cfg, seed)
    if path.is_file():
        raise DataError(
            f"data path {path} is a file; give a folder (unpack archives first, e.g. tar -xzf cifar10-jpeg.tar.gz)"
        )
    fmt = detect_format(path) if cfg.format == "auto" else cfg.format
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {cfg.format!r}; known: auto, {', '.join(FORMATS)}")
    if cfg.channels not in (1, 3):
        raise DataError(f"data.channels must be 1 or 3, got {cfg.channels}")
    return FORMATS[fmt](cfg, seed)


def collate(items: list[dict | None]) -> dict:
    """Stack a batch, dropping items that failed to decode and counting them in ``batch['skipped']``."""
    good = [it for it in items if it is not None]
    if not good:
        return {"image": torch.empty(0), "label": torch.empty(0, dtype=torch.long), "skipped": len(items)}
    batch = {k: torch.stack([torch.as_tensor(it[k]) for it in good]) for k in good[0]}
    batch["skipped"] = len(items) - len(good)
    return batch


def batch_size_of(batch: dict) -> int:
    return len(next(v for v in batch.values() if torch.is_tensor(v)))
