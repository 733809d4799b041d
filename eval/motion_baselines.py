"""What the motion scores say about clips whose motion is known: real Moving Fashion-MNIST clips (the floor), the same
shuffled in time, frozen, and clips whose items move at half the data's speed; and the prediction error of a frozen
or shuffled continuation. A check of the measure, not of a model (``visgen.metrics.dynamics``).

    python eval/motion_baselines.py --fmnist data/fashion-mnist --clips 32 --name motion-scores-cpu
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from visgen.data import DataConfig, DataError, build_dataset
from visgen.data.video import moving_fashion_mnist
from visgen.metrics.dynamics import motion_scores, prediction_scores, speed_distance, speeds
from visgen.results import metrics_line, write_result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fmnist", required=True, help="Fashion-MNIST (IDX files): the items that move")
    p.add_argument("--items", type=int, default=60, help="training items to draw from")
    p.add_argument("--clips", type=int, default=32, help="clips in each set")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--context", type=int, default=8, help="frames given before a predicted continuation")
    p.add_argument("--name", help="write results/NAME.json")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    try:
        ds = build_dataset(DataConfig(path=args.fmnist, split="train", image_size=28, channels=1, limit=args.items))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    items = [ds[i] for i in range(len(ds))]
    u8 = np.stack([((it["image"][0].numpy() + 1) * 127.5).round().astype(np.uint8) for it in items])
    labels = np.array([it["label"] for it in items])
    make = lambda seed, **kw: torch.from_numpy(  # noqa: E731
        moving_fashion_mnist(u8, labels, args.clips, frames=args.frames, size=64, seed=seed, **kw)["clips"])
    ref, real, other = make(1), make(2), make(3)  # reference speeds; floor and baselines; the clips scored
    metrics = motion_scores(other, real, ref)
    metrics["speed_distance_half_speed"] = speed_distance(make(4, speed=(1.0, 2.0)), speeds(ref))
    metrics.update(prediction_scores(other, other, context=args.context))
    metrics.update(clips=args.clips, frames=args.frames, context=args.context)
    print(metrics_line(metrics))
    if args.name:
        write_result(Path(args.results_dir) / f"{args.name}.json", args.name, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
