"""Frame-level AR speed: sampling clips/s (16 frames of 64 x 64, the frame tokenizer's decode included) with the KV
cache across frames against recomputing the frames so far for every frame, and training tokens/s.

The model is the Moving Fashion-MNIST recipe's (generators/moving-fmnist-far.yaml over tokenizers/moving-fmnist-kl.yaml:
16 frames of 8 x 8 x 4 latents, the ``cifar`` backbone with 3-axis RoPE, the flow head over a whole frame with 25
steps), random weights, class-conditional, guidance 2, bf16.

- ``cached``: the sampler as ``sample.py`` runs it, each frame one pass over its 64 tokens reading the cache (the
  whole loop in one CUDA graph on a GPU; ``eager`` without the graph, to separate the two gains);
- ``recompute``: no cache kept between frames: frame t is drawn by a fresh pass over frames 0 .. t - 1 (given) and
  t (``Sampler.sample_prefix``, eager), T (T + 1) / 2 frame passes a clip against T; the clips are the cached
  sampler's;
- ``window``: clips of twice the training length (``Sampler.sample_video``): the first T frames cached, then every
  further frame after a prefill of the T - 1 frames before it (the backbone alone reads them; eager), as
  ``eval/fvd.py --frames 2T`` draws them (``sample_window_b{batch}_frames{2T}_clips_per_s``).

    python bench/video.py [--name bench-video] [--sample-batches 8 64] [--train-batches 64]   # a GPU
    python bench/video.py --modes --train-modes eager compiled graph --profile $OUT           # training alone
    python bench/video.py --tiny                                                               # a CPU check
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from common import bench_training, parser, setup, sync

from visgen.generator import Generator, GeneratorConfig
from visgen.sampling import Sampler, SamplingConfig
from visgen.tokenizers import KLConfig, KLTokenizer


def build(tiny: bool) -> Generator:
    if tiny:
        tok = KLTokenizer(KLConfig(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=4))
        cfg = GeneratorConfig(tokenizer="-", image_size=16, num_classes=10, schedule="next_frame", frames=4,
                              head="flow", head_options={"width": 16, "depth": 1, "heads": 2, "steps": 3},
                              backbone={"preset": "tiny", "rope_axes": 3})  # fmt: skip
        return Generator(cfg, tokenizer=tok.eval())
    tok = KLTokenizer(KLConfig(in_channels=1, channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                               latent_channels=4))  # fmt: skip
    cfg = GeneratorConfig(tokenizer="-", image_size=64, num_classes=10, schedule="next_frame", frames=16, head="flow",
                          head_options={"width": 256, "depth": 2, "heads": 4, "steps": 25}, context_noise=0.1,
                          backbone={"preset": "cifar", "rope_axes": 3})  # fmt: skip
    return Generator(cfg, tokenizer=tok.eval())


def timed(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, seconds per later call)."""
    sync()
    t0 = time.perf_counter()
    fn(0)
    sync()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for r in range(repeats):
        fn(r + 1)
    sync()
    return first, (time.perf_counter() - t0) / repeats


def recompute(sampler: Sampler, labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Clips drawn frame by frame with no cache kept between frames: frame t through a fresh cache after frames
    0 .. t - 1 given (``Sampler.sample_prefix``); the same clips as the cached sampler's."""
    m = sampler.model
    units: list[torch.Tensor] = []
    for t in range(m.config.frames):
        units = sampler.sample_prefix(labels, t + 1, ids, given=units or None)
    return m.decode_tokens(m.schedule.from_sequence(torch.cat(units, 1)), sampler.decoder)


def clip_batches(sampler: Sampler, labels: torch.Tensor, mode: str):
    """Batch r of clips (sample ids r x batch onwards) in ``mode``."""
    b = len(labels)
    if mode == "recompute":
        return lambda r: recompute(sampler, labels, torch.arange(b) + r * b)
    if mode == "window":
        frames = 2 * sampler.model.config.frames
        return lambda r: sampler.sample_video(labels, frames, sample_ids=torch.arange(b) + r * b)
    return lambda r: sampler.sample_images(labels, sample_ids=torch.arange(b) + r * b)


def main():
    p = parser(__doc__)
    p.set_defaults(sample_batches=[8, 64], train_batches=[64])
    p.add_argument("--modes", nargs="*", default=["cached", "eager", "recompute", "window"],
                   choices=["cached", "eager", "recompute", "window"], help="none: no sampling figures")  # fmt: skip
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--train-modes", nargs="+", default=["eager"], choices=["eager", "compiled", "graph"],
                   help="training as bench_training runs it: eager, the blocks compiled (train.compile=true) or the "
                   "whole loss replayed as CUDA graphs (train.compile=graph)")  # fmt: skip
    p.add_argument("--profile", type=Path, help="a folder for the profiler's tables of ten training steps per row")
    args = p.parse_args()
    gen, rec = setup(args, build)
    rec.add("frames", gen.config.frames, "d")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for b in args.sample_batches:
        labels = torch.arange(b) % gen.config.num_classes
        for mode in args.modes:
            cfg = SamplingConfig(cfg_scale=2.0, batch_size=b, cuda_graph=mode == "cached")
            first, per = timed(clip_batches(Sampler(gen, cfg), labels, mode), args.repeats)
            name = f"sample_window_b{b}_frames{2 * gen.config.frames}" if mode == "window" else f"sample_{mode}_b{b}"
            rec.add(f"{name}_clips_per_s", b / per, ".2f")
            rec.add(f"{name}_first_batch_s", first, ".1f", "s")
        if "cached" in args.modes and "recompute" in args.modes:
            rec.add(f"cache_speedup_b{b}", rec.metrics[f"sample_cached_b{b}_clips_per_s"]
                    / rec.metrics[f"sample_recompute_b{b}_clips_per_s"], ".2f", "x")  # fmt: skip
    for b in args.train_batches:
        s = gen.config.image_size // gen.tokenizer.downsample
        latents = torch.randn(b, gen.config.frames, gen.tokenizer.config.latent_channels, s, s, device=device)
        for mode in args.train_modes:
            name = f"train_b{b}" if mode == "eager" else f"train_{mode}_b{b}"  # eager: the name it always had
            table = args.profile / f"profile-{name}.txt" if args.profile else None
            r = bench_training(gen, latents, args.train_steps, compile=mode == "compiled", graph=mode == "graph",
                               profile=table, title=f"{name}: one training step")  # fmt: skip
            if r.get("oom"):
                rec.add(name, "out of memory")
                continue
            rec.add(f"{name}_tokens_per_s", r["tokens_per_s"], ",.0f")
            rec.add(f"{name}_model_tflops", r["model_tflops"], ".1f")
            rec.add(f"{name}_peak_gib", r["peak_gib"], ".1f")
            for key in ("kernels_per_step", "device_ms_per_step", "wall_ms_per_step"):
                if key in r:
                    rec.add(f"{name}_{key}", r[key], ".1f")


if __name__ == "__main__":
    main()
