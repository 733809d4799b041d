"""The dynamics score of generated Moving Fashion-MNIST clips (``visgen.metrics.dynamics``) beside its floor (real
test clips) and its ceiling (the same real clips shuffled in time):

    python eval/dynamics.py --input runs/moving-fmnist-far/final --ref data/moving-fmnist [--num-samples 1000]
    python eval/dynamics.py --input samples/.../samples.npz --ref data/moving-fmnist

``--input``: a video generator's checkpoint (clips sampled class-balanced here), an ``.npz`` of uint8 clips
(``arr_0``: N x T x H x W x C, what ``sample.py --npz`` writes) or video data, read as ``eval/fvd.py`` reads them.
Reports ``dynamics_error``, ``dynamics_error_real`` and ``dynamics_error_shuffled`` (pixels per frame squared).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from visgen.checkpoint import CheckpointError
from visgen.cli.fvd import data_clips, generated
from visgen.config import ConfigError
from visgen.data import DataError
from visgen.metrics.dynamics import dynamics_error, shuffled_in_time
from visgen.results import metrics_line, write_result


def main(argv: list[str] | None = None, prog: str = "eval/dynamics.py") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="a video generator checkpoint, an .npz of clips, or video data")
    p.add_argument("--input-split", default="test", help="the split of video data given as --input")
    p.add_argument("--ref", required=True, help="Moving Fashion-MNIST (a folder with test.npz, or video data)")
    p.add_argument("--ref-split", default="test")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--frames", type=int, default=0, help="clip length (a checkpoint: default the model's)")
    p.add_argument("--size", type=int, default=64, help="frame side of video data given as --input")
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--name", help="write results/NAME.json")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:  # what eval/fvd.py reads, the same way: uint8 clips (N, T, H, W, C), here averaged to grey
        clips = generated(args, args.device)[0].float().mean(-1)
        T, side = clips.shape[1], clips.shape[-1]
        real = data_clips(args.ref, args.ref_split, T, side, 1, args.num_samples).float()[..., 0]
    except (CheckpointError, ConfigError, DataError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metrics = {
        "dynamics_error": dynamics_error(clips), "dynamics_error_real": dynamics_error(real),
        "dynamics_error_shuffled": dynamics_error(shuffled_in_time(real, args.seed)), "clips": len(clips),
        "real_clips": len(real), "frames": T,
    }  # fmt: skip
    print(metrics_line(metrics))
    if args.name:
        write_result(Path(args.results_dir) / f"{args.name}.json", args.name, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
