"""Where sampling time goes: one batch of the token or VAR benchmark model under ``torch.profiler``, the operators
that take the most device time (CPU time on a CPU), the kernels launched per AR position and their device time, and
the split between generating tokens and decoding them.

    python bench/profile_sampling.py --family var --batch 256 [--compile] [--no-graph] [--decode-kernel triton]
    python bench/profile_sampling.py --family token --tiny --batch 2                      # checks it runs on a CPU
"""

from __future__ import annotations

import time

import torch
from common import parser, profile_sampling, setup, sync
from token_ar import SAMPLING as TOKEN_SAMPLING
from token_ar import build as build_token
from var import SAMPLING as VAR_SAMPLING
from var import build as build_var

from visgen.sampling import Sampler, SamplingConfig

SAMPLING = {"token": TOKEN_SAMPLING, "var": VAR_SAMPLING}  # as the benchmarks sample


def main():
    p = parser(__doc__)
    p.add_argument("--family", choices=sorted(SAMPLING), required=True)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--compile", action="store_true", help="compiled blocks and head (SamplingConfig.compile)")
    p.add_argument("--no-graph", action="store_true", help="no CUDA graphs (each kernel shows its launch)")
    p.add_argument("--decode-kernel", default="auto", help="SamplingConfig.decode_kernel: auto, sdpa or triton")
    p.add_argument("--rows", type=int, default=25, help="operators to list")
    args = p.parse_args()
    gen, rec = setup(args, build_token if args.family == "token" else build_var)
    cfg = SamplingConfig(**SAMPLING[args.family], batch_size=args.batch, compile=args.compile,
                         cuda_graph=not args.no_graph, decode_kernel=args.decode_kernel)  # fmt: skip
    sampler = Sampler(gen, cfg)
    labels = torch.arange(args.batch) % gen.config.num_classes
    tokens = sampler.sample_tokens(labels)  # warm-up: allocation, compile, graph capture
    sampler.decode(tokens)
    for name, run in (("tokens", lambda: sampler.sample_tokens(labels)),
                      ("decode", lambda: sampler.decode(tokens))):  # fmt: skip
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        rec.add(f"{name}_seconds_per_batch", time.perf_counter() - t0, ".4f", "s")
    r = profile_sampling(gen, cfg, table="-", title=f"{args.family} at batch {args.batch}", rows=args.rows)
    rec.add("kernels_per_token", r["kernels"], ".1f")
    rec.add("device_ms_per_token", r["device_ms"], ".4f", "ms")


if __name__ == "__main__":
    main()
