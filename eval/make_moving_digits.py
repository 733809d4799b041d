"""Write Moving Fashion-MNIST to disk once: ``train.npz`` and ``test.npz`` (``clips`` (N, T, 64, 64) uint8,
``labels``, ``positions``, ``counts``, ``classes``), train clips from Fashion-MNIST's train items and test clips from its
test items, seeded.

    python eval/make_moving_digits.py --fmnist data/fashion-mnist --out data/moving-fmnist [--train 10000 --test 1000]

Train on it with ``data.path=data/moving-fmnist data.frames=16 data.channels=1`` (``data.split`` picks the file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from visgen.data import DataConfig, DataError, build_dataset
from visgen.data.video import moving_fashion_mnist


def items_of(path: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    ds = build_dataset(DataConfig(path=path, split=split, image_size=28, channels=1))
    good = [ds[i] for i in range(len(ds))]
    good = [g for g in good if g is not None]
    items = np.stack([((g["image"][0].numpy() + 1) * 127.5).round().astype(np.uint8) for g in good])
    return items, np.array([g["label"] for g in good]), list(ds.classes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fmnist", required=True, help="a Fashion-MNIST folder (IDX files)")
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for split, n, seed in (("train", args.train, args.seed), ("test", args.test, args.seed + 1)):
            items, labels, classes = items_of(args.fmnist, split)
            clips = moving_fashion_mnist(items, labels, n, args.frames, args.size, seed=seed)
            np.savez(out / f"{split}.npz", **clips, classes=np.array(classes))
            print(f"{split}: {n} clips of {args.frames} frames -> {out / f'{split}.npz'}")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
