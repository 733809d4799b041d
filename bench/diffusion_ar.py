"""Continuous-token AR speed at MAR-B size: sampling images/s (tokenizer decode included) and training tokens/s.

The model: a 12 x 768 causal backbone (``gpt-b``) over 256 tokens of 16 channels (a KL tokenizer of downsample 16,
as MAR's KL-16 latents for 256 px), MAR-B's diffusion head (6 x 1024, 100 DDPM steps when sampling), random
weights. Sampling with guidance 3 (both halves in one batch), bf16, the loop over units with every denoising step of
the head in one CUDA graph; units of 1 and of 4 tokens; eager, and with ``--modes compiled`` the blocks and the
head's denoising step compiled (``SamplingConfig(compile=True)``; its figures carry ``compiled_`` after
``sample_``), with ``autotuned`` compiled under ``compile_mode="max-autotune-no-cudagraphs"`` (``autotuned_``; ``autotuned_unit``
with ``cuda_graph="unit"``),
and ``default``: the sampler's defaults as the CLIs run them for a 10k-image job (``compile="auto"``;
``..._compiled`` says what it chose; ``default_``), ``default_loop`` / ``default_unit`` the same with the whole loop in one CUDA graph
(``cuda_graph="loop"``) / one unit replayed per unit (``cuda_graph="unit"``). ``--cold MODE``: that mode's first batch also timed in fresh
processes, cold and warm compile caches (as bench/token_ar.py does). ``--head-steps 0 50 25``: each mode also with
fewer denoising steps (``SamplingConfig.head_steps``; ``hs{N}_`` after the mode).
Training: bf16 autocast, fused AdamW, the diffusion batch multiplier 4. ``--profile-batches 8 256``:
where a denoising step's time goes, from one batch of the same model at 64 px (16 tokens, so the profiler holds
every kernel) in each ``--modes`` mode: kernels launched and their summed device time per denoising step
(``profile_{mode}_unit{k}_b{batch}_kernels_per_step``, ``..._device_us_per_step``) beside the wall time per step of
that batch (``..._wall_us_per_step``); the gap is launch latency. Top operators go to ``--profile-table``.

    python bench/diffusion_ar.py [--name bench-diffusion-ar] [--modes eager compiled]   # a GPU; --tiny: a CPU check
"""

from __future__ import annotations

import argparse

import torch
from common import (
    bench_sampling,
    bench_training,
    bytecode_cache,
    parser,
    probe_first_batch,
    profile_sampling,
    record_cold,
    setup,
    times_cold,
)

from visgen.generator import Generator, GeneratorConfig
from visgen.sampling import SamplingConfig
from visgen.tokenizers import KLConfig, KLTokenizer

# --modes: how sampling runs; a mode's figures carry its name after ``sample_`` / ``profile_`` (eager's none)
MODES = {
    "default": {},  # the sampler's defaults as sample.py / eval/fid.py run them for a job of JOB_IMAGES
    "default_loop": dict(cuda_graph="loop"),  # the same, the whole loop in one CUDA graph
    "default_unit": dict(cuda_graph="unit"),  # the same, unit 0 and a later unit captured, the later one replayed
    "eager": dict(compile=False),
    "compiled": dict(compile=True),
    "autotuned": dict(compile=True, compile_mode="max-autotune-no-cudagraphs"),
    "autotuned_unit": dict(compile=True, compile_mode="max-autotune-no-cudagraphs", cuda_graph="unit"),
}
JOB_IMAGES = 10_000


def sampling_config(mode: str, batch: int, head_steps: int = 0) -> tuple[SamplingConfig, int]:
    """The sampling settings of ``mode`` and the job size the sampler is told (``compile="auto"`` decides by it)."""
    cfg = SamplingConfig(cfg_scale=3.0, batch_size=batch, head_steps=head_steps, **MODES[mode])
    return cfg, JOB_IMAGES if mode.startswith("default") else 0


def probe_args(mode: str, batch: int, unit: int, tiny: bool, head_steps: int = 0) -> list[str]:
    return [mode, str(batch), str(unit), str(head_steps)] + (["--tiny"] if tiny else [])


def build(tiny: bool, unit_size: int = 1, image_size: int = 256) -> Generator:
    if tiny:
        tok = KLTokenizer(KLConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=4))
        cfg = GeneratorConfig(tokenizer="-", image_size=16, num_classes=10, head="diffusion", unit_size=unit_size,
                              head_options={"width": 32, "depth": 1, "steps": 4}, backbone="tiny")  # fmt: skip
        return Generator(cfg, tokenizer=tok)
    tok = KLTokenizer(KLConfig(channels=64, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=1, latent_channels=16))
    cfg = GeneratorConfig(tokenizer="-", image_size=image_size, num_classes=1000, head="diffusion", unit_size=unit_size,
                          head_options={"width": 1024, "depth": 6, "steps": 100}, backbone="gpt-b")  # fmt: skip
    return Generator(cfg, tokenizer=tok)


def main():
    p = parser(__doc__)
    p.add_argument("--unit-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--modes", nargs="+", default=["eager"], choices=list(MODES))
    p.add_argument("--profile-batches", type=int, nargs="*", default=[], help="batch sizes to profile (see above)")
    p.add_argument("--profile-table", default=None, help="a file for the profiler's top operators ('-': print)")
    p.add_argument("--cold", nargs="*", default=[], choices=list(MODES),
                   help="also time these modes' first batch in fresh processes, cold and warm")  # fmt: skip
    p.add_argument(
        "--head-steps",
        type=int,
        nargs="+",
        default=[0],
        help="denoising steps of the head when sampling (0: its 100); figures of others carry hs{N}_",
    )
    p.add_argument("--probe", nargs=4, metavar=("MODE", "BATCH", "UNIT", "HEAD_STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        mode, (batch, unit, head_steps) = args.probe[0], map(int, args.probe[1:])
        return probe_first_batch(build(args.tiny, unit), *sampling_config(mode, batch, head_steps), decode=True)
    pycache = bytecode_cache(__file__, [probe_args(m, 2, 1, True) for m in args.cold]) if args.cold else None
    gen, rec = setup(args, build)
    rec.add("head_params", sum(p.numel() for p in gen.head.parameters()), ",d")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for k in args.unit_sizes:
        model = gen if k == 1 else build(args.tiny, k)
        if k != 1:
            model.load_state_dict(gen.state_dict(), strict=False)  # all but unit 0's position embeddings (unit 1: none)
        for mode, hs in ((mode, hs) for mode in args.modes for hs in args.head_steps):
            tag = ("" if mode == "eager" else f"{mode}_") + (f"hs{hs}_" if hs else "")
            for bs in args.sample_batches:
                cfg, images = sampling_config(mode, bs, hs)
                r = bench_sampling(model, cfg, repeats=2, decode=True, images=images)
                rec.add(f"sample_{tag}unit{k}_b{bs}_images_per_s", r["images_per_s"], ".2f", "images/s")
                rec.add(f"sample_{tag}unit{k}_b{bs}_first_batch_s", r["first_batch_s"], ".1f", "s")
                if mode.startswith("default"):
                    rec.add(f"sample_{tag}unit{k}_b{bs}_compiled", r["compiled"], "d")  # what compile="auto" chose
                if times_cold(args, mode, bs):
                    key = f"sample_{tag}unit{k}_b{bs}"
                    record_cold(rec, key, __file__, probe_args(mode, bs, k, args.tiny, hs), pycache)
        del model
    for k in args.unit_sizes if args.profile_batches else []:
        small = build(args.tiny, k, image_size=16 if args.tiny else 64)
        small.load_state_dict(gen.state_dict(), strict=False)  # the same weights; the position table is smaller
        steps = small.head.steps * small.schedule.num_units  # denoising steps of one batch
        for mode in args.modes:
            for bs in args.profile_batches:
                cfg, _ = sampling_config(mode, bs)
                r = profile_sampling(small, cfg, table=args.profile_table, title=f"{mode} unit {k} batch {bs}")
                per_step = small.schedule.seq_len / steps  # profile_sampling reports per token
                wall = bench_sampling(small, cfg, repeats=2, decode=False)
                tag = f"profile_{mode}_unit{k}_b{bs}"
                rec.add(f"{tag}_kernels_per_step", r["kernels"] * per_step, ".1f")
                rec.add(f"{tag}_device_us_per_step", r["device_ms"] * per_step * 1e3, ".1f", "us")
                rec.add(f"{tag}_wall_us_per_step", bs / wall["images_per_s"] / steps * 1e6, ".1f", "us")
        del small
    C, grid = gen.tokenizer.latent_channels, gen.schedule.grid
    for bs in args.train_batches:
        latents = torch.randn(bs, C, *grid, device=device)
        r = bench_training(gen, latents, steps=2 if args.tiny else 10)
        if r.get("oom"):
            rec.add(f"train_b{bs}_oom", True)
            continue
        rec.add(f"train_b{bs}_tokens_per_s", r["tokens_per_s"], ".0f", "tokens/s")
        rec.add(f"train_b{bs}_peak_gib", r["peak_gib"], ".1f", "GiB")


if __name__ == "__main__":
    main()
