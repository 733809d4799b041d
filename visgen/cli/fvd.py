"""Video quality of a video generator's checkpoint, an ``.npz`` of clips or video data, against real clips.

    python eval/fvd.py --input runs/moving-fmnist-far/final --ref data/moving-fmnist [--num-samples 1000]
    python eval/fvd.py --input samples/.../samples.npz --ref data/moving-fmnist --video-extractor i3d \
        --i3d-weights ~/i3d_torchscript.pt --dynamics --report fvd.json

Reports, against ``--ref``'s ``--ref-split`` (the training clips, by default):
- ``fd_<frame extractor>_frames``: every frame of every clip scored as an image in the features of an image
  classifier trained here (``fmnistcls`` by default; ``cifar10cls`` or ``inception-v3-compat`` as for images);
- ``fvd_<name>`` on the clip features of a video classifier trained here (``mfmnistvid``, offline), or ``fvd`` on
  the standard I3D (``--video-extractor i3d``: the local TorchScript file, or a clear message offline);
- the memorisation check on whole clips, when ``--holdout-split`` exists: each sample's nearest training clip in
  the video features and in pixels, against the held-out clips' floor (``copy_rate`` and the rest, as for images);
- with ``--dynamics``: the motion scores of ``visgen.metrics.dynamics`` (``dynamics_error``, ``speed_distance``) of
  the samples beside the held-out clips' (``_real``, the floor) and those clips shuffled in time and frozen
  (``_shuffled``, ``_frozen``: baselines that must fail), and for a checkpoint the same held-out clips through its
  tokenizer and back (``_recon``: what motion the model's frames can carry at best); Moving Fashion-MNIST only.

A checkpoint is sampled here: class-balanced labels, sample i seeded by (seed, i); ``--frames`` longer than
training slides the window (``Sampler.sample_video``). Reference statistics are cached (``--cache-dir``), keyed by
everything that changes them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from visgen.checkpoint import CheckpointError, load_model
from visgen.cli.sample import add_head_arguments
from visgen.config import ConfigError
from visgen.data import DataConfig, DataError, build_dataset
from visgen.metrics.dynamics import motion_scores
from visgen.metrics.fidelity import Extractor, frechet_distance, reference_features, statistics
from visgen.metrics.memorisation import memorisation_report
from visgen.metrics.recon import to_uint8
from visgen.metrics.video import VideoExtractor
from visgen.results import check_writable, hardware, metrics_line, write_result
from visgen.sampling import Sampler, SamplingConfig


def add_temperature_argument(p):
    """--temperature for eval/fvd.py and eval/dynamics.py (a flow head's: the start of its path scaled)."""
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (a flow head's: how wide "
                   "the start of its path is drawn; on the video recipe's model it moves the drawn speeds)")  # fmt: skip


def sampling_config(args) -> SamplingConfig:
    """How eval/fvd.py and eval/dynamics.py sample a checkpoint: their guidance, temperature, seed, batch and head
    flags."""
    return SamplingConfig(cfg_scale=args.cfg_scale, temperature=args.temperature, seed=args.seed,
                          batch_size=args.batch_size, head_steps=args.head_steps, head_solver=args.head_solver)  # fmt: skip


def sampled_clips(path: Path, args, device: str) -> tuple[torch.Tensor, dict]:
    """uint8 clips (N, T, H, W, C) drawn from a video generator's checkpoint, and the sampling settings."""
    gen = load_model(path, ema=(path / "ema.safetensors").is_file())
    if not getattr(getattr(gen, "config", None), "frames", 0):
        raise ConfigError(f"{path} is not a video generator (model.frames > 0)")
    sampler = Sampler(gen, sampling_config(args), device=device)
    labels, ids = torch.arange(args.num_samples) % max(gen.config.num_classes, 1), torch.arange(args.num_samples)
    t0 = time.perf_counter()
    if args.frames and args.frames != gen.config.frames:
        clips = sampler.sample_video(labels, args.frames, ids, progress=True)
    else:
        clips = sampler.sample_images(labels, ids, progress=True)
    rate = args.num_samples / (time.perf_counter() - t0)
    info = {"cfg_scale": args.cfg_scale, "temperature": args.temperature, "seed": args.seed,
            "batch_size": args.batch_size, "clips_per_s": rate,
            "head_steps": args.head_steps or getattr(gen.head, "steps", 0),
            "head_solver": args.head_solver or getattr(gen.head, "solver", "")}  # fmt: skip
    return to_uint8(clips).permute(0, 1, 3, 4, 2).cpu(), info


def round_trip(path: Path, clips: torch.Tensor, device: str, batch_size: int) -> torch.Tensor:
    """uint8 clips (N, T, H, W, C) through the tokenizer of the video generator at ``path`` and back."""
    gen = load_model(path, ema=(path / "ema.safetensors").is_file()).to(device).eval()  # as sampled_clips loads it
    out = []
    with torch.no_grad():
        for x in clips.split(batch_size):  # (B, T, H, W, C) uint8 -> (B, T, C, H, W) in [-1, 1]
            x = x.to(device).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
            out.append(to_uint8(gen.decode_tokens(gen.encode(x))).permute(0, 1, 3, 4, 2).cpu())
    return torch.cat(out)


def data_clips(path: str, split: str, frames: int, size: int | None, channels: int, limit: int | None) -> torch.Tensor:
    """uint8 clips (N, T, H, W, C) of video data; unreadable clips are skipped (the data set counts them)."""
    ds = build_dataset(DataConfig(path=path, split=split, frames=frames, image_size=size, channels=channels,
                                  limit=limit))  # fmt: skip
    clips = [it["image"] for it in (ds[i] for i in range(len(ds))) if it is not None]
    if not clips:
        raise DataError(f"{path} ({split}): no readable clip of {frames} frames")
    return to_uint8(torch.stack(clips)).permute(0, 1, 3, 4, 2)


def generated(args, device: str) -> tuple[torch.Tensor, dict]:
    path = Path(args.input)
    if path.suffix == ".npz" and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                clips = torch.from_numpy(f["arr_0"]) if "arr_0" in f.files else None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: not an .npz of clips (arr_0: uint8 N x T x H x W x C): {e}") from e
        if clips is None:  # not sample.py's: video data (Moving Fashion-MNIST's ``clips``, or a frame array)
            clips = data_clips(str(path), args.input_split, args.frames or 16, args.size, 1, args.num_samples)
            return clips, {"source": "data"}
        if clips.dtype != torch.uint8 or clips.dim() != 5:
            raise ConfigError(f"{path}: arr_0 must be uint8 N x T x H x W x C, got {clips.dtype} {tuple(clips.shape)}")
        return clips[: args.num_samples], {"source": "npz"}
    if (path / "config.json").is_file():
        return sampled_clips(path, args, device)
    if not path.exists():
        raise ConfigError(f"--input {path} does not exist (a checkpoint folder, an .npz of clips or video data)")
    clips = data_clips(str(path), args.input_split, args.frames or 16, args.size, 1, args.num_samples)
    return clips, {"source": "data"}


def tall(clips: torch.Tensor) -> torch.Tensor:
    """Clips (N, T, H, W, C) as images (N, T x H, W, C), frames stacked, for the pixel nearest-neighbour search."""
    N, T, H, W, C = clips.shape
    return clips.reshape(N, T * H, W, C)


def main(argv: list[str] | None = None, prog: str = "eval/fvd.py") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="a video generator checkpoint, an .npz of clips, or video data")
    p.add_argument("--input-split", default="test", help="the split of video data given as --input")
    p.add_argument("--ref", required=True, help="real clips: video data (Moving Fashion-MNIST: a folder with "
                   "train.npz and test.npz)")  # fmt: skip
    p.add_argument("--ref-split", default="train")
    p.add_argument("--holdout-split", default="test", help="held-out real clips (memorisation floor, dynamics "
                   "floor); 'none' to skip")  # fmt: skip
    p.add_argument("--ref-clips", type=int, default=10000, help="at most this many reference clips")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--frames", type=int, default=0, help="clip length (a checkpoint: longer than training slides "
                   "the window; default the model's)")  # fmt: skip
    p.add_argument("--size", type=int, default=64, help="frame side of video data given as --input")
    p.add_argument("--frame-extractor", default="fmnistcls", help="image features per frame; 'none' to skip")
    p.add_argument("--frame-extractor-weights")
    p.add_argument("--video-extractor", default="mfmnistvid", help="mfmnistvid (offline) or i3d (FVD); 'none' to "
                   "skip")  # fmt: skip
    p.add_argument("--video-extractor-weights", help="a video classifier folder instead of the bundled one")
    p.add_argument("--i3d-weights", help="the TorchScript I3D file (i3d_torchscript.pt)")
    p.add_argument("--dynamics", action="store_true", help="the Moving Fashion-MNIST dynamics score")
    p.add_argument("--cfg-scale", type=float, default=2.0)
    add_temperature_argument(p)
    add_head_arguments(p)  # a checkpoint's
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "visgen" / "fvd-stats"))
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--name", help="also write results/NAME.json")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = args.device
    try:
        if args.holdout_split == args.ref_split:
            raise ConfigError(f"--holdout-split {args.holdout_split} is the reference's own split: held-out clips must "
                              "be other clips (the memorisation floor and the dynamics floor would be the reference's; "
                              "--holdout-split none skips them)")  # fmt: skip
        if args.report:
            check_writable(Path(args.report).parent, "--report")
        if args.name:
            check_writable(args.results_dir, "--results-dir")
        frame_ext = None if args.frame_extractor == "none" else Extractor(args.frame_extractor,
                                                                         args.frame_extractor_weights)  # fmt: skip
        video_ext = None
        if args.video_extractor != "none":
            weights = args.i3d_weights if args.video_extractor == "i3d" else args.video_extractor_weights
            video_ext = VideoExtractor(args.video_extractor, weights)
            video_ext.resolved_weights()  # a missing file fails now, before anything is sampled
        if frame_ext is not None:
            frame_ext.resolved_weights()
        clips, info = generated(args, device)
        N, T, H, W, C = clips.shape
        ref = data_clips(args.ref, args.ref_split, T, H, C, args.ref_clips)
        holdout = None
        if args.holdout_split != "none":
            try:
                holdout = data_clips(args.ref, args.holdout_split, T, H, C, args.ref_clips)
            except DataError as e:
                print(f"no held-out clips ({e}): the memorisation check and the dynamics floor are skipped")
    except (CheckpointError, ConfigError, DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ref_id = {"path": str(Path(args.ref).resolve()), "split": args.ref_split, "frames": T, "size": H, "channels": C,
              "limit": args.ref_clips, "clips": len(ref)}  # fmt: skip
    metrics: dict = {"clips": N, "frames": T, "ref_clips": len(ref)}
    if frame_ext is not None:
        frames = clips.flatten(0, 1)
        stats, _, hit = reference_features(lambda: ref.flatten(0, 1), {**ref_id, "per": "frame"}, frame_ext, device,
                                           args.cache_dir)  # fmt: skip
        s = statistics(frame_ext.features(frames, device)["fd"])
        metrics[f"fd_{frame_ext.name}_frames"] = frechet_distance(s["mu"], s["sigma"], stats["mu"], stats["sigma"])
    if video_ext is not None:
        stats, ref_feats, hit = reference_features(lambda: ref, ref_id, video_ext, device, args.cache_dir)
        feats = video_ext.features(clips, device)["fd"]
        s = statistics(feats)
        metrics[video_ext.metric_name] = frechet_distance(s["mu"], s["sigma"], stats["mu"], stats["sigma"])
        if holdout is not None:
            hold_feats = video_ext.features(holdout, device)["fd"]
            copies, _ = memorisation_report(feats, tall(clips), ref_feats, tall(ref), hold_feats, tall(holdout),
                                            device)  # fmt: skip
            metrics.update(copies)
    if args.dynamics:  # baselines and speeds from as many real clips as there are samples
        real = holdout[:N].float().mean(-1) if holdout is not None else None
        metrics.update(motion_scores(clips.float().mean(-1), real, ref[:N].float().mean(-1), args.seed))
        if real is not None and (Path(args.input) / "config.json").is_file():  # a checkpoint: through its tokenizer
            recon = round_trip(Path(args.input), holdout[:N], device, args.batch_size).float().mean(-1)
            recon_scores = motion_scores(recon, None, ref[:N].float().mean(-1))
            metrics.update({f"{k}_recon": v for k, v in recon_scores.items()})
    if "clips_per_s" in info:
        metrics["clips_per_s"] = info["clips_per_s"]
    print(metrics_line(metrics))
    report = {"input": args.input, "ref": ref_id, "sampling": info, "frame_extractor": args.frame_extractor,
              "video_extractor": args.video_extractor, "hardware": hardware(), "metrics": metrics}  # fmt: skip
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
    if args.name:
        write_result(Path(args.results_dir) / f"{args.name}.json", args.name, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
