"""The dynamics score of generated Moving Fashion-MNIST clips (``visgen.metrics.dynamics``) beside its floor (real
test clips) and its ceiling (the same real clips shuffled in time):

    python eval/dynamics.py --input runs/moving-fmnist-far/final --ref data/moving-fmnist [--num-samples 1000]
    python eval/dynamics.py --input samples/.../samples.npz --ref data/moving-fmnist

``--input``: a video generator's checkpoint (clips sampled class-balanced here) or an ``.npz`` of uint8 clips
(``arr_0``: N x T x H x W x C, what ``sample.py --npz`` writes). Reports ``dynamics_error``,
``dynamics_error_real`` and ``dynamics_error_shuffled`` (pixels per frame squared).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from visgen.checkpoint import CheckpointError, load_model
from visgen.config import ConfigError
from visgen.data import DataConfig, DataError, build_dataset
from visgen.metrics.dynamics import dynamics_error, shuffled_in_time
from visgen.results import write_result
from visgen.sampling import Sampler, SamplingConfig


def generated_clips(args) -> torch.Tensor:
    """(N, T, H, W) grey clips in [0, 255] from ``--input``."""
    path = Path(args.input)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            clips = torch.from_numpy(f["arr_0"])
        if clips.dim() != 5:
            raise ConfigError(f"{path}: expected clips N x T x H x W x C, got {tuple(clips.shape)}")
        return clips.float().mean(-1)
    gen = load_model(path, ema=(path / "ema.safetensors").is_file())
    if not getattr(gen, "config", None) or not getattr(gen.config, "frames", 0):
        raise ConfigError(f"{path} is not a video generator (model.frames > 0)")
    sampler = Sampler(gen, SamplingConfig(cfg_scale=args.cfg_scale, seed=args.seed, batch_size=args.batch_size))
    clips = sampler.sample_images(torch.arange(args.num_samples) % gen.config.num_classes, progress=True)
    return ((clips.clamp(-1, 1) + 1) * 127.5).mean(2).cpu()


def main(argv: list[str] | None = None, prog: str = "eval/dynamics.py") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True)
    p.add_argument("--ref", required=True, help="Moving Fashion-MNIST (a folder with test.npz, or video data)")
    p.add_argument("--ref-split", default="test")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--name", help="write results/NAME.json")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    try:
        clips = generated_clips(args)
        T, side = clips.shape[1], clips.shape[-1]
        ref = build_dataset(DataConfig(path=args.ref, split=args.ref_split, frames=T, image_size=side, channels=1,
                                       limit=args.num_samples))  # fmt: skip
        real = torch.stack([it["image"][:, 0] for it in (ref[i] for i in range(len(ref))) if it is not None])
        real = (real + 1) * 127.5
    except (CheckpointError, ConfigError, DataError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metrics = {
        "dynamics_error": dynamics_error(clips), "dynamics_error_real": dynamics_error(real),
        "dynamics_error_shuffled": dynamics_error(shuffled_in_time(real, args.seed)), "clips": len(clips),
        "real_clips": len(real), "frames": T,
    }  # fmt: skip
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    if args.name:
        write_result(Path(args.results_dir) / f"{args.name}.json", args.name, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
