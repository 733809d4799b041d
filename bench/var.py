"""VAR (and NFIG) speed: sampling images/s (256 px, tokenizer decode included) and training tokens/s, VAR-d16-sized.

The model: the ``var-d16`` preset (16 x 1024, AdaLN) with 3-axis RoPE over the next-scale schedule of a multi-scale
VQ tokenizer of VAR's shape (downsample 16, channels 160 x (1, 1, 2, 2, 4), codebook 4096 x 32, scales
1,2,3,4,5,6,8,10,13,16 = 680 tokens) with random weights. Sampling as VAR samples: guidance 1.5 ramped linearly over
scales, top-k 900, top-p 0.96, bf16, the loop over scales in one CUDA graph, eager and with the blocks and head
compiled, and ``default``: the sampler's defaults as the CLIs run them for a 10k-image job (``compile="auto"``;
``..._compiled`` says what it chose). ``--cold MODE ...``: that mode's first batch also timed in fresh processes,
sampler construction included, as bench/token_ar.py does (``..._first_batch_cold_s`` with empty compile caches,
``..._first_batch_warm_s`` in the process after it).
Training: bf16 autocast, fused AdamW, eager and with the blocks compiled; a batch that does not fit is retried with
activation checkpointing.

``--families var nfig`` adds NFIG in the same run: the same backbone over the next-frequency schedule of a
frequency-band tokenizer of the same autoencoder and codebook, its 16 x 16 latent cut at ``NFIG_EDGES`` with the
recipe's DFT resampling and exact grids (1, 3, 5, 9, 13, 16 = 541 tokens against VAR's 680); its figures carry the
prefix ``nfig_``.

    python bench/var.py [--name bench-var] [--families var nfig] [--cold default]   # a GPU; on a CPU use --tiny to check it runs
"""

from __future__ import annotations

import argparse
import time

import torch
from common import (
    bench_sampling,
    bench_training,
    bytecode_cache,
    parser,
    probe_first_batch,
    record_cold,
    setup,
    sync,
    times_cold,
)

from visgen.generator import Generator, GeneratorConfig
from visgen.sampling import Sampler, SamplingConfig
from visgen.tokenizers import FrequencyVQConfig, FrequencyVQTokenizer, MultiScaleVQConfig, MultiScaleVQTokenizer

SAMPLING = dict(cfg_scale=1.5, cfg_schedule="linear", top_k=900, top_p=0.96)  # as VAR samples
NFIG_EDGES = (0.03125, 0.0625, 0.125, 0.25, 0.375, 0.5)  # cycles per latent sample, for a 16 x 16 latent
# the recipe's resampling: DFT, exact grids 1, 3, 5, 9, 13, 16 (541 tokens; resample: area would give the Nyquist
# grids 1, 2, 4, 8, 12, 16, 485 tokens, what results/bench-nfig.json held before it was rerun)
NFIG_RESAMPLE = "spectral"


def build(tiny: bool, family: str = "var") -> Generator:
    schedule = "next_frequency" if family == "nfig" else "next_scale"
    if tiny:
        shape = dict(channels=8, channel_mult=(1, 2), z_channels=8, codebook_size=64, codebook_dim=4)
        tok = (FrequencyVQTokenizer(FrequencyVQConfig(**shape, band_edges=(0.0625, 0.125, 0.5), latent_size=8,
                                                  resample=NFIG_RESAMPLE))
               if family == "nfig" else MultiScaleVQTokenizer(MultiScaleVQConfig(**shape, scales=(1, 2, 4, 8))))  # fmt: skip
        cfg = GeneratorConfig(tokenizer="-", image_size=16, num_classes=10, schedule=schedule,
                              backbone={"preset": "tiny", "adaln": True, "rope_axes": 3})  # fmt: skip
        return Generator(cfg, tokenizer=tok)
    shape = dict(channels=160, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=32, codebook_size=4096,
                 codebook_dim=32)  # fmt: skip
    if family == "nfig":
        tok = FrequencyVQTokenizer(
            FrequencyVQConfig(**shape, band_edges=NFIG_EDGES, latent_size=16, resample=NFIG_RESAMPLE)
        )
    else:
        tok = MultiScaleVQTokenizer(MultiScaleVQConfig(**shape, scales=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16)))
    cfg = GeneratorConfig(tokenizer="-", image_size=256, num_classes=1000, schedule=schedule,
                          backbone={"preset": "var-d16", "rope_axes": 3})  # fmt: skip
    return Generator(cfg, tokenizer=tok)


def main():
    p = parser(__doc__)
    p.add_argument("--train-modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--sample-modes", nargs="+", default=["default", "eager", "compiled"],
                   choices=["default", "eager", "compiled"])  # fmt: skip
    p.add_argument("--families", nargs="+", default=["var"], choices=["var", "nfig"])
    p.add_argument("--cold", nargs="*", default=[], choices=["default", "eager", "compiled"],
                   help="also time these modes' first batch in fresh processes, cold and warm")  # fmt: skip
    p.add_argument("--probe", nargs=3, metavar=("FAMILY", "MODE", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        family, mode, batch = args.probe[0], args.probe[1], int(args.probe[2])
        return probe_first_batch(build(args.tiny, family), *sampling_config(mode, batch), decode=True)
    rec = None
    probes = [probe_args(f, m, 2, True) for f in args.families for m in args.cold]
    pycache = bytecode_cache(__file__, probes) if probes else None
    for family in args.families:
        gen, rec = setup(args, lambda tiny, f=family: build(tiny, f), rec, "" if family == "var" else f"{family}_")
        run_family(args, gen, rec, family, pycache)


def sampling_config(mode: str, batch: int) -> tuple[SamplingConfig, int]:
    """The sampling settings of ``mode`` and the job size the sampler is told (``default``: the sampler's defaults
    as sample.py / eval/fid.py run them for a 10k-image job)."""
    if mode == "default":
        return SamplingConfig(**SAMPLING, batch_size=batch), 10_000
    return SamplingConfig(**SAMPLING, batch_size=batch, compile=mode == "compiled"), 0


def probe_args(family: str, mode: str, batch: int, tiny: bool) -> list[str]:
    return [family, mode, str(batch)] + (["--tiny"] if tiny else [])


def run_family(args, gen, rec, family: str, pycache: str | None):
    pre = "" if family == "var" else f"{family}_"
    for mode in args.sample_modes:
        for bs in args.sample_batches:
            cfg, images = sampling_config(mode, bs)
            r = bench_sampling(gen, cfg, repeats=3, decode=True, images=images)
            prefix = pre + {"eager": "sample", "compiled": "sample_compiled", "default": "sample_default"}[mode]
            rec.add(f"{prefix}_b{bs}_with_decode_images_per_s", r["images_per_s"], unit="images/s")
            rec.add(f"{prefix}_b{bs}_first_batch_s", r["first_batch_s"], ".2f", "s")
            if mode == "default":
                rec.add(f"{prefix}_b{bs}_compiled", r["compiled"], "d")  # what compile="auto" chose
            if times_cold(args, mode, bs):
                probe = probe_args(family, mode, bs, args.tiny)
                record_cold(rec, f"{prefix}_b{bs}_with_decode", __file__, probe, pycache)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # the tokenizer's decode alone, as the sampler runs it (a copy in the sampling dtype, channels-last on GPUs)
    # and as an fp32 tokenizer under bf16 autocast
    bs = args.sample_batches[-1]
    sampler = Sampler(gen, SamplingConfig(batch_size=bs))
    tokens = torch.randint(0, gen.tokenizer.vocab_size, (bs, gen.schedule.seq_len), device=sampler.device)
    for name, dec in (("sampler", sampler.decoder), ("fp32_autocast", sampler.model.tokenizer)):
        sampler.model.decode_tokens(tokens, dec)
        sync()
        t0 = time.perf_counter()
        for _ in range(3):
            sampler.model.decode_tokens(tokens, dec)
        sync()
        rec.add(f"{pre}decode_b{bs}_{name}_images_per_s", 3 * bs / (time.perf_counter() - t0), unit="images/s")
    del sampler
    for mode in args.train_modes:
        for bs in args.train_batches:
            tokens = torch.randint(0, gen.tokenizer.vocab_size, (bs, gen.schedule.seq_len), device=device)
            steps = 10 if not args.tiny else 2
            r = bench_training(gen, tokens, steps, compile=mode == "compiled")
            if r.get("oom"):
                rec.add(f"{pre}train_{mode}_b{bs}_oom", True)
                r = bench_training(gen, tokens, steps, compile=mode == "compiled", checkpointing=True)
                rec.add(f"{pre}train_{mode}_b{bs}_activation_checkpointing", True)
            for k, v in r.items():
                rec.add(f"{pre}train_{mode}_b{bs}_{k}", v)


if __name__ == "__main__":
    main()
