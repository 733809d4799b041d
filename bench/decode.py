"""Tokenizer decode speed: images/s of the VAR-shaped multi-scale VQ decoder (``bench/var.py``'s tokenizer, 256 px)
in the layouts a sampler could use, so the sampler's choice rests on figures:

    nchw            bf16, channels-first
    nhwc            bf16, channels-last, the toolkit's GroupNorm (keeps channels-last; what the sampler uses)
    nhwc_native_gn  bf16, channels-last, ``nn.GroupNorm`` (returns channels-first before torch 2.12)
    nhwc_compiled   ``nhwc`` under ``torch.compile`` (fused norms and activations); its first batch includes compile
    *_heuristic     ``nhwc`` or ``nhwc_compiled`` with cuDNN's heuristics choosing each convolution's algorithm
                    (``cudnn.benchmark`` off) instead of timing every candidate at a shape's first call

Every mode's first batch is timed apart (CUDA is started before the first); a convolution shape that an earlier mode
benchmarked is not timed again in the process, so ``nhwc``'s first batch holds the timing of the decoder's shapes, and
the second compiled mode reuses the first one's graph, so the first holds the compile.

    python bench/decode.py [--name bench-decode] [--batch 256] [--profile]    # a GPU; --tiny checks it on a CPU
"""

from __future__ import annotations

import copy
import time

import torch
from common import Record, parser, sync
from torch import nn
from var import build

from visgen.tokenizers.modules import GroupNorm

MODES = ("nchw", "nhwc_heuristic", "nhwc", "nhwc_native_gn", "nhwc_compiled_heuristic", "nhwc_compiled")


def decoder_for(tokenizer, mode: str, dtype: torch.dtype, device: torch.device):
    mode = mode.removesuffix("_heuristic")
    fmt = torch.contiguous_format if mode == "nchw" else torch.channels_last
    dec = copy.deepcopy(tokenizer).to(device=device, dtype=dtype, memory_format=fmt).eval()
    if mode == "nhwc_native_gn":
        for m in dec.modules():
            if isinstance(m, GroupNorm):
                m.__class__ = nn.GroupNorm
    if mode == "nhwc_compiled":
        dec.decoder.compile()
    return dec


def main():
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="print the top operators of each eager mode")
    args = p.parse_args()
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    tok = build(args.tiny).tokenizer
    rec = Record(args.name)
    rec.add("batch", args.batch, "d")
    rec.add("image_size", tok.downsample * tok.scales[-1], "d")
    tokens = torch.randint(0, tok.vocab_size, (args.batch, sum(s * s for s in tok.scales)), device=device)
    torch.ones(1, device=device).add_(1)  # CUDA's start is no mode's first batch
    sync()
    for mode in args.modes:
        dec = decoder_for(tok, mode, dtype, device)
        benchmark = not mode.endswith("_heuristic")
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, benchmark=benchmark):
            sync()
            t0 = time.perf_counter()
            dec.decode(tokens)
            sync()
            rec.add(f"{mode}_first_batch_s", time.perf_counter() - t0, ".2f", "s")
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                dec.decode(tokens)
            sync()
            rec.add(f"{mode}_images_per_s", args.repeats * args.batch / (time.perf_counter() - t0), unit="images/s")
            if args.profile and "compiled" not in mode:
                from torch.profiler import ProfilerActivity, profile

                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
                with profile(activities=acts) as prof:
                    dec.decode(tokens)
                    sync()
                key = "cuda_time_total" if cuda else "cpu_time_total"
                print(prof.key_averages().table(sort_by=key, row_limit=12))
        del dec
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
