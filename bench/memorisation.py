"""The memorisation report's searches: seconds for N samples against a reference of M images (CIFAR-10 sized,
32 x 32 x 3 uint8, mirrored references included) in pixels, and against M feature vectors (cosine), on the GPU where
there is one.

    python bench/memorisation.py --name bench-memorisation            # 10k samples against 50k, as CIFAR-10
    python bench/memorisation.py --samples 1000                       # a tenth of it (a 2-core CPU: seconds)
"""

from __future__ import annotations

import argparse
import time

import torch
from common import Record, sync

from visgen.metrics.memorisation import nearest_feature, nearest_pixel


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--reference", type=int, default=50000)
    p.add_argument("--feature-dim", type=int, default=256)
    p.add_argument("--name", help="write results/NAME.json")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rec = Record(args.name)
    g = torch.Generator().manual_seed(0)
    ref = torch.randint(0, 256, (args.reference, 32, 32, 3), dtype=torch.uint8, generator=g)
    query = torch.randint(0, 256, (args.samples, 32, 32, 3), dtype=torch.uint8, generator=g)
    sync()
    t0 = time.perf_counter()
    nearest_pixel(query, ref, device)
    sync()
    rec.add(f"pixel_{args.samples}x{args.reference}_s", time.perf_counter() - t0, ".2f", "s")
    fr, fq = torch.randn(args.reference, args.feature_dim, generator=g), torch.randn(args.samples, args.feature_dim)
    t0 = time.perf_counter()
    nearest_feature(fq, fr, device)
    sync()
    rec.add(f"feature_{args.samples}x{args.reference}_s", time.perf_counter() - t0, ".2f", "s")


if __name__ == "__main__":
    main()
