"""The parallel schedule (PAR) against raster order: sampling images/s of the CIFAR-10 recipes' models, same weights.

Token kind: the ``cifar`` backbone over the bundled VQ's 8 x 8 codes (``generators/cifar10-token-par.yaml``);
diffusion kind: the same backbone over the bundled KL tokenizer's latents with the diffusion head of
``generators/cifar10-diffusion-par.yaml`` (512 x 3, 100 steps). Random weights, guidance 2 (both halves in one
batch), eager sampler (the loop in one CUDA graph on a GPU), tokens only and with decode. For each ``--regions`` k:
``speedup_par{k}_{kind}_b{batch}`` is the parallel schedule's images/s over raster's (with decode) in the same run;
k = 4 is also written as ``speedup_par_{kind}_b{batch}``, the issue's name.

    python bench/parallel.py --name bench-parallel      # a GPU
    python bench/parallel.py --tiny                     # a check on the CPU
"""

from __future__ import annotations

import torch
from common import Record, bench_sampling, parser

from visgen.generator import Generator, GeneratorConfig
from visgen.sampling import SamplingConfig

KINDS = {
    "token": dict(tokenizer="asset:cifar10-vq", head="categorical", head_options={}),
    "diffusion": dict(tokenizer="asset:cifar10-kl", head="diffusion",
                      head_options={"width": 512, "depth": 3, "steps": 100}),
}  # fmt: skip


def build(kind: str, schedule: str, regions: int, tiny: bool) -> Generator:
    spec = dict(KINDS[kind])
    if tiny and kind == "diffusion":
        spec["head_options"] = {"width": 32, "depth": 1, "steps": 4}
    torch.manual_seed(0)
    return Generator(GeneratorConfig(image_size=32, num_classes=10, schedule=schedule, regions=regions,
                                     backbone="tiny" if tiny else "cifar", **spec))  # fmt: skip


def main():
    p = parser(__doc__)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--regions", type=int, nargs="+", default=[4, 8])
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    rec = Record(args.name)
    repeats = 1 if args.tiny else 3
    for kind in args.kinds:
        raster = build(kind, "raster", 4, args.tiny)
        rec.add(f"{kind}_params", sum(p.numel() for p in raster.parameters()), ",d")
        models = {"raster": raster}
        for k in args.regions:
            models[f"par{k}"] = build(kind, "parallel", k, args.tiny)
            models[f"par{k}"].load_state_dict(raster.state_dict(), strict=False)  # the same weights
            rec.add(f"par{k}_{kind}_steps", models[f"par{k}"].schedule.num_units, "d")
        for bs in args.sample_batches:
            rate = {}
            for name, model in models.items():
                for decode in (False, True):
                    r = bench_sampling(model, SamplingConfig(cfg_scale=2.0, batch_size=bs), repeats, decode)
                    what = "with_decode" if decode else "tokens_only"
                    rec.add(f"{name}_{kind}_b{bs}_{what}_images_per_s", r["images_per_s"], ".1f", "images/s")
                rate[name] = r["images_per_s"]
            for k in args.regions:
                rec.add(f"speedup_par{k}_{kind}_b{bs}", rate[f"par{k}"] / rate["raster"], ".2f", "x")
                if k == 4:
                    rec.add(f"speedup_par_{kind}_b{bs}", rate["par4"] / rate["raster"], ".2f", "x")


if __name__ == "__main__":
    main()
