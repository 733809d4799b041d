"""Tokens per verifying pass of speculative Jacobi decoding on a trained token model: how many tokens a round
commits, for each ``--gammas`` and ``--inits`` (``SamplingConfig.jacobi_init``), pooled over ``--num-images``
class-balanced images. Counts, not speed: a CPU gives the same figures as a GPU (up to the last bits of the
arithmetic), so this runs anywhere; ``bench/speculative.py`` times it.

    python bench/jacobi_passes.py --checkpoint visgen/assets/cifar10-token-ar --name jacobi-passes-cpu
"""

from __future__ import annotations

import torch
from common import Record, parser

from visgen.checkpoint import load_model
from visgen.sampling import Sampler, SamplingConfig


def main():
    p = parser(__doc__)
    p.add_argument("--checkpoint", default="visgen/assets/cifar10-token-ar")
    p.add_argument("--gammas", type=int, nargs="+", default=[4, 8])
    p.add_argument("--inits", nargs="+", default=["uniform", "above"], choices=["uniform", "above"])
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cfg-scale", type=float, default=2.0)
    args = p.parse_args()
    gen = load_model(args.checkpoint, ema=True)
    rec = Record(args.name)
    labels = torch.arange(args.num_images) % gen.config.num_classes
    for g in args.gammas:
        for init in args.inits:
            cfg = SamplingConfig(cfg_scale=args.cfg_scale, speculative="jacobi", gamma=g, jacobi_init=init,
                                 batch_size=args.batch_size, seed=0)  # fmt: skip
            sampler = Sampler(gen, cfg)
            sampler.sample_tokens(labels)
            stats = sampler.speculative.stats
            rec.add(f"tokens_per_pass_g{g}_{init}", stats["tokens_per_pass"], ".3f")
            rec.add(f"acceptance_g{g}_{init}", stats["acceptance"], ".3f")


if __name__ == "__main__":
    main()
