"""The motion scores of generated Moving Fashion-MNIST clips (``visgen.metrics.dynamics``) beside their floor (real
clips) and the baselines that must fail (the same real clips shuffled in time, and frozen at their first frame):

    python eval/dynamics.py --input runs/moving-fmnist-far/final --ref data/moving-fmnist [--num-samples 1000]
    python eval/dynamics.py --input samples/.../samples.npz --ref data/moving-fmnist
    python eval/dynamics.py --input runs/moving-fmnist-far/final --ref data/moving-fmnist --context-frames 8

``--input``: a video generator's checkpoint (clips sampled class-balanced here), an ``.npz`` of uint8 clips
(``arr_0``: N x T x H x W x C, what ``sample.py --npz`` writes) or video data, read as ``eval/fvd.py`` reads them.
The real clips of ``--ref`` are split in two halves: the first gives the reference speeds, the second the floor and
the baselines. Reports ``dynamics_error`` (pixels / frame^2) and ``speed_distance`` (pixels / frame), each also as
``_real``, ``_shuffled`` and ``_frozen``; with ``--context-frames K`` (a checkpoint), the model also predicts the
second half's clips from their first K frames and ``prediction_error_px`` (with ``_real``, ``_shuffled``,
``_frozen``) says how far its tracked item strays from the true one over the next ``--horizon`` frames, and
``prediction_dynamics_error`` / ``prediction_speed_distance`` (with ``_real``: the true continuations) score the
motion of the predicted frames alone (from the last given frame on): with ``--context-frames 1`` they tell the motion
a model makes from a real first frame apart from the first frames it draws itself.
``--gif FILE``: the clips side by side, a row each: real held-out clips and the ``--input`` clips, or with
``--context-frames`` the real clips, the model's predictions of them and its own clips.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from visgen.checkpoint import CheckpointError
from visgen.cli.fvd import add_temperature_argument, data_clips, generated, sampling_config
from visgen.cli.sample import add_head_arguments
from visgen.config import ConfigError
from visgen.data import DataError
from visgen.metrics.dynamics import motion_scores, prediction_motion, prediction_scores
from visgen.metrics.recon import to_uint8
from visgen.results import metrics_line, write_result


def predicted(args, frames: int) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """The checkpoint's predictions of the second half of ``--ref``'s clips from their first ``--context-frames``
    frames, scored against the true continuations: (the scores, the true clips, the predicted ones), clips in grey
    (N, T, H, W) 0..255."""
    from visgen.checkpoint import load_model
    from visgen.data import DataConfig, build_dataset
    from visgen.sampling import Sampler

    path = Path(args.input)
    if not (path / "config.json").is_file():
        raise ConfigError("--context-frames needs a video generator checkpoint as --input")
    gen = load_model(path, ema=(path / "ema.safetensors").is_file())
    k = args.context_frames
    if not 1 <= k <= frames - args.horizon:
        raise ConfigError(f"--context-frames must be between 1 and {frames - args.horizon} (frames {frames}, "
                          f"--horizon {args.horizon}), got {k}")  # fmt: skip
    ds = build_dataset(DataConfig(path=args.ref, split=args.ref_split, frames=gen.config.frames,
                                  image_size=gen.config.image_size, channels=gen.tokenizer.image_channels,
                                  limit=2 * args.num_samples))  # fmt: skip
    items = [it for it in (ds[i] for i in range(len(ds))) if it is not None]
    items = items[len(items) // 2 :]  # the half the floor comes from
    true = torch.stack([it["image"] for it in items])
    labels = torch.tensor([max(int(it["label"]), 0) for it in items]) % max(gen.config.num_classes, 1)
    sampler = Sampler(gen, sampling_config(args), device=args.device)
    pred = sampler.sample_images(labels, context=true[:, :k], context_units=k)
    grey = lambda x: to_uint8(x).float().mean(2)  # (N, T, C, H, W) in [-1, 1] -> grey 0..255
    true, pred = grey(true).cpu(), grey(pred).cpu()
    scores = prediction_scores(pred, true, k, args.horizon, args.seed)
    scores.update(prediction_context_frames=k, prediction_horizon=args.horizon, prediction_clips=len(true))
    return scores, true, pred


def write_gif(path: Path, columns: list[torch.Tensor], rows: int = 8, fps: int = 8):
    """An animated GIF of clips side by side: each of ``columns`` (grey clips (N, T, H, W), 0..255) is a column of its
    first ``rows`` clips, a 2-pixel white gap between columns, as many frames as the shortest clips have."""
    from PIL import Image

    n, t = min(rows, *(len(c) for c in columns)), min(c.shape[1] for c in columns)
    cols = []
    for c in columns:
        cols += [c[:n, :t].permute(1, 0, 2, 3).flatten(1, 2), torch.full((t, n * c.shape[2], 2), 255.0)]
    video = torch.cat(cols[:-1], -1).round().clamp(0, 255).to(torch.uint8).numpy()  # (T, n * H, W')
    frames = [Image.fromarray(f) for f in video]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=1000 // fps, loop=0)


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
    add_temperature_argument(p)
    add_head_arguments(p)  # a checkpoint's
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--name", help="write results/NAME.json")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--context-frames", type=int, default=0, help="a checkpoint: also predict real clips from their "
                   "first K frames (prediction_error_px)")  # fmt: skip
    p.add_argument("--horizon", type=int, default=4, help="predicted frames the prediction error averages over")
    p.add_argument("--gif", help="write an animated GIF here: real held-out clips, the clips given as --input beside "
                   "them, and with --context-frames the model's predictions of the real ones")  # fmt: skip
    args = p.parse_args(argv)
    try:  # what eval/fvd.py reads, the same way: uint8 clips (N, T, H, W, C), here averaged to grey
        clips, info = generated(args, args.device)
        clips = clips.float().mean(-1)
        T, side = clips.shape[1], clips.shape[-1]
        real = data_clips(args.ref, args.ref_split, T, side, 1, 2 * args.num_samples).float()[..., 0]
        if len(real) < 2:
            raise DataError(f"{args.ref} ({args.ref_split}): at least 2 clips are needed, found {len(real)}")
        ref, real = real[: len(real) // 2], real[len(real) // 2 :]
        metrics = {**motion_scores(clips, real, ref, args.seed), "clips": len(clips), "real_clips": len(real),
                   "frames": T}  # fmt: skip
        metrics.update({k: info[k] for k in ("head_steps", "head_solver", "temperature", "clips_per_s") if k in info})
        columns = [real, clips]
        if args.context_frames:
            scores, true, pred = predicted(args, T)
            metrics.update(scores, **prediction_motion(pred, true, args.context_frames, ref))
            columns = [true, pred, clips]
        print(metrics_line(metrics))
        if args.name:  # the figures first: a GIF that fails to write loses none of them
            write_result(Path(args.results_dir) / f"{args.name}.json", args.name, metrics)
        if args.gif:
            write_gif(Path(args.gif), columns)
    except (CheckpointError, ConfigError, DataError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
