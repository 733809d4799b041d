"""Token AR speed: sampling images/s (tokens only, and with tokenizer decode) and training tokens/s + TFLOP/s.

The model is the GPT-B preset (12 x 768) at 256 tokens (16 x 16) and vocab 16384, class-conditional, bf16, with
guidance on (cfg 2, so every step runs a doubled batch). The tokenizer is a visgen VQ tokenizer of LlamaGen VQ-16's
shape (downsample 16, channels 128 x (1, 1, 2, 2, 4)) with random weights: decode cost, not quality. Sampling runs
eager (the whole loop in one CUDA graph, no compile: first batch in about a second) and with the blocks compiled,
each optionally with one-token steps attending through visgen's Triton kernel (modes ``eager_triton``,
``compiled_triton``: GPU only; the sampler's default there), the others through SDPA; training eager and compiled.
Mode ``default`` is the sampler's defaults as the CLIs run them for a job of 10k images (``compile`` and
``decode_kernel`` ``auto``; ``..._compiled`` says what ``auto`` chose); the timed batches are one call, as a user's.
``default_loop`` / ``default_unit``: the same with the whole loop captured in one CUDA graph (``cuda_graph="loop"``)
/ with unit 0 and a later unit captured and the later one replayed per unit (``cuda_graph="unit"``). ``autotuned_triton``:
``compiled_triton`` under ``compile_mode="max-autotune-no-cudagraphs"``.
A first batch is timed in the running process (``first_batch_s``: compile caches warm from the modes before it) and,
for the modes given to ``--cold``, in fresh processes, sampler construction included: ``first_batch_cold_s`` with
empty Inductor and Triton caches and Python's bytecode compiled (as pip leaves an install), ``first_batch_warm_s`` in
the process after it, with the compile caches it left, ``cold_no_bytecode_first_batch_s`` as this environment runs
(where it keeps no bytecode, every process compiles the source of the modules it imports first).

    python bench/token_ar.py [--name bench-token-ar] [--modes ...] [--cold MODE ...]   # a GPU; --tiny: a CPU check
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import (
    bench_sampling,
    bench_training,
    bytecode_cache,
    parser,
    probe_first_batch,
    record_cold,
    setup,
    times_cold,
)

from visgen.generator import Generator, GeneratorConfig
from visgen.sampling import Sampler, SamplingConfig
from visgen.tokenizers import VQConfig, VQTokenizer

SAMPLING = dict(cfg_scale=2.0)  # guidance on: every step runs a doubled batch
# sampling; training takes eager / compiled. ``default``: the sampler's defaults as sample.py / eval/fid.py run them
# for a job of JOB_IMAGES (compile and decode kernel ``auto``)
MODES = [
    "default",
    "default_loop",
    "default_unit",
    "eager",
    "compiled",
    "eager_triton",
    "compiled_triton",
    "autotuned_triton",
]
JOB_IMAGES = 10_000


def build(tiny: bool) -> Generator:
    if tiny:
        tok = VQTokenizer(VQConfig(channels=8, channel_mult=(1, 2), z_channels=8, codebook_size=64, codebook_dim=4))
        return Generator(GeneratorConfig(tokenizer="-", image_size=16, num_classes=10, backbone="tiny"), tokenizer=tok)
    tok = VQTokenizer(
        VQConfig(channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256, codebook_size=16384)
    )
    return Generator(GeneratorConfig(tokenizer="-", image_size=256, num_classes=1000, backbone="gpt-b"), tokenizer=tok)


def sampling_config(mode: str, batch: int) -> SamplingConfig:
    if mode.startswith("default"):  # default_loop / default_unit: the defaults with that cuda_graph
        graph = {"default": True, "default_loop": "loop", "default_unit": "unit"}[mode]
        return SamplingConfig(**SAMPLING, batch_size=batch, cuda_graph=graph)
    tuned = mode.startswith("autotuned")  # matrix products tuned per shape, elementwise work in their epilogues
    return SamplingConfig(**SAMPLING, batch_size=batch, compile=mode.startswith("compiled") or tuned,
                          compile_mode="max-autotune-no-cudagraphs" if tuned else "default",
                          decode_kernel="triton" if mode.endswith("triton") else "sdpa")  # fmt: skip


def job_images(mode: str) -> int:
    return JOB_IMAGES if mode.startswith("default") else 0


def probe_args(mode: str, batch: int, tiny: bool) -> list[str]:
    return [mode, str(batch)] + (["--tiny"] if tiny else [])


def main():
    p = parser(__doc__)
    p.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    p.add_argument("--cold", nargs="*", default=[], choices=MODES, help="also time these modes' first batch cold")
    p.add_argument("--probe", nargs=2, metavar=("MODE", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        mode, batch = args.probe[0], int(args.probe[1])
        return probe_first_batch(build(args.tiny), sampling_config(mode, batch), job_images(mode), decode=False)
    gen, rec = setup(args, build)
    pycache = bytecode_cache(__file__, [probe_args(m, 2, True) for m in args.cold]) if args.cold else None
    if torch.cuda.is_available():  # the CUDA-graph path must give the eager path's tokens exactly
        labels = torch.arange(8)

        def tokens(graph: bool | str, kernel: str) -> torch.Tensor:
            cfg = SamplingConfig(**SAMPLING, batch_size=8, cuda_graph=graph, decode_kernel=kernel)
            return Sampler(gen, cfg).sample_tokens(labels)

        a, b, t = tokens(True, "sdpa"), tokens(False, "sdpa"), tokens("loop", "triton")
        rec.add("graph_matches_eager", float((a == b).float().mean()), ".4f")
        rec.add("triton_tokens_match_sdpa", float((a == t).float().mean()), ".4f")  # bf16 sums in another order
        rec.add("unit_graph_matches_loop_graph", float((tokens("unit", "triton") == t).float().mean()), ".4f")
    for mode in args.modes:
        for bs in args.sample_batches:
            for decode in (False, True):
                try:
                    r = bench_sampling(gen, sampling_config(mode, bs), repeats=3, decode=decode,
                                       images=job_images(mode))  # fmt: skip
                except Exception as e:  # one mode failing (a compile on this machine) leaves the others measured
                    print(f"{mode} b{bs}: failed: {type(e).__name__}: {str(e)[:2000]}", file=sys.stderr)
                    continue
                key = f"sample_{mode}_b{bs}_{'with_decode' if decode else 'tokens_only'}"
                rec.add(f"{key}_images_per_s", r["images_per_s"], unit="images/s")
                rec.add(f"{key}_first_batch_s", r["first_batch_s"], ".2f", "s")
                if mode.startswith("default"):
                    rec.add(f"{key}_compiled", r["compiled"], "d")  # what compile="auto" chose for the job
            if times_cold(args, mode, bs):
                record_cold(rec, f"sample_{mode}_b{bs}_tokens_only", __file__, probe_args(mode, bs, args.tiny), pycache)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    h, w = gen.schedule.grid
    for mode in [m for m in args.modes if m in ("eager", "compiled")]:
        for bs in args.train_batches:
            tokens = torch.randint(0, gen.tokenizer.vocab_size, (bs, h, w), device=device)
            r = bench_training(gen, tokens, steps=10 if not args.tiny else 2, compile=mode == "compiled")
            for k, v in r.items():
                rec.add(f"train_{mode}_b{bs}_{k}", v)


if __name__ == "__main__":
    main()
