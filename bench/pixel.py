"""Pixel AR speed: sampling images/s with sub-pixel units (3072 steps an image, categorical head) and whole-pixel
units (1024 steps, the DMoL head), and training sub-pixels/s and model TFLOP/s (6 x parameters x positions/s), eager
and with the blocks compiled (the recipe's `train.compile: true`).

The model is the CIFAR-10 pixel recipe's (generators/cifar10-pixel-ar.yaml: 16 x 512, about 50M parameters) at
32 x 32 x 3, class-conditional, bf16, guidance on (cfg 2: every step runs a doubled batch), decoding included
(the exact inverse of the tokenizer: nothing to time).

    python bench/pixel.py [--name bench-pixel] [--sample-batches 64 256] [--train-batches 64]   # a GPU
    python bench/pixel.py --tiny                                                                  # a CPU check
"""

from __future__ import annotations

import itertools

import torch
from common import Record, bench_sampling, bench_training, parser

from visgen.generator import Generator, GeneratorConfig
from visgen.sampling import SamplingConfig

UNITS = {"subpixel": "categorical", "pixel": "dmol"}


def build(unit: str, tiny: bool) -> Generator:
    size, backbone = (4, "tiny") if tiny else (32, {"preset": "gpt-b", "n_layer": 16, "n_head": 8, "d_model": 512})
    cfg = GeneratorConfig(tokenizer="pixel", image_size=size, num_classes=10, schedule="pixel", unit=unit,
                          head=UNITS[unit], backbone=backbone)  # fmt: skip
    gen = Generator(cfg)
    for p in gen.head.parameters():  # a head that is not uniform (the categorical one starts at zero)
        torch.nn.init.normal_(p, std=0.02)
    return gen


def main():
    p = parser(__doc__)
    p.set_defaults(sample_batches=[64, 256], train_batches=[64])
    p.add_argument("--units", nargs="+", default=list(UNITS), choices=list(UNITS))
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--train-modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    rec = Record(args.name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for unit in args.units:
        torch.manual_seed(0)
        gen = build(unit, args.tiny)
        rec.add(f"{unit}_params", sum(p.numel() for p in gen.parameters()), ",d")
        rec.add(f"{unit}_steps_per_image", gen.schedule.num_units, "d")
        for b in args.sample_batches:
            r = bench_sampling(gen, SamplingConfig(cfg_scale=2.0, batch_size=b), repeats=2, decode=True)
            rec.add(f"sample_{unit}_b{b}_images_per_s", r["images_per_s"], ".2f")
            rec.add(f"sample_{unit}_b{b}_first_batch_s", r["first_batch_s"], ".1f", "s")
        per_position = gen.tokenizer.config.channels if unit == "pixel" else 1
        for mode, b in itertools.product(args.train_modes, args.train_batches):
            s = gen.config.image_size
            tokens = torch.randint(0, 256, (b, 3, s, s), device=device)
            r = bench_training(gen, tokens, args.train_steps, compile=mode == "compiled")
            name = f"train_{unit}_b{b}" if mode == "eager" else f"train_compiled_{unit}_b{b}"
            if r.get("oom"):
                rec.add(name, "out of memory")
                continue
            rec.add(f"{name}_subpixels_per_s", r["tokens_per_s"] * per_position, ",.0f")
            rec.add(f"{name}_model_tflops", r["model_tflops"], ".1f")
            rec.add(f"{name}_peak_gib", r["peak_gib"], ".1f")


if __name__ == "__main__":
    main()
