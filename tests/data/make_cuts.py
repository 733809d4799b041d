"""Rebuild the small data cuts the tests use from ../shared/data (run from the repository root)."""

import gzip
import struct
import tarfile
from pathlib import Path

import numpy as np

SHARED = Path("../shared/data")
OUT = Path("tests/data")


def cifar10(per_class=(("train", 24), ("test", 8))):
    per_class = dict(per_class)
    with tarfile.open(SHARED / "cifar10-jpeg.tar.gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
        taken = {}
        for m in members:
            split, cls, _ = m.name.split("/")
            if taken.get((split, cls), 0) >= per_class[split]:
                continue
            taken[(split, cls)] = taken.get((split, cls), 0) + 1
            dest = OUT / "cifar10" / split / cls / Path(m.name).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(m).read())


def _read(path):
    with gzip.open(path) as fh:
        data = fh.read()
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _write(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.tobytes())


def fashion_mnist(counts=(("train", 200), ("t10k", 50))):
    (OUT / "fashion-mnist").mkdir(parents=True, exist_ok=True)
    for prefix, n in counts:
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            arr = _read(SHARED / "fashion-mnist" / f"{prefix}-{kind}.gz")[:n]
            _write(OUT / "fashion-mnist" / f"{prefix}-{kind}.gz", arr)


if __name__ == "__main__":
    cifar10()
    fashion_mnist()
