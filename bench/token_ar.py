"""Token AR speed: sampling images/s (tokens only, and with tokenizer decode) and training tokens/s + TFLOP/s.

The model is the GPT-B preset (12 x 768) at 256 tokens (16 x 16) and vocab 16384, class-conditional, bf16, with
guidance on (cfg 2, so every step runs a doubled batch). The tokenizer is a visgen VQ tokenizer of LlamaGen VQ-16's
shape (downsample 16, channels 128 x (1, 1, 2, 2, 4)) with random weights: decode cost, not quality.

    python bench/token_ar.py [--name bench-token-ar]      # a GPU; on a CPU use --tiny to check it runs
"""

from __future__ import annotations

import argparse
import time

import torch

from visgen.generator import Generator, GeneratorConfig
from visgen.results import write_result
from visgen.sampling import Sampler, SamplingConfig
from visgen.tokenizers import VQConfig, VQTokenizer


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(tiny: bool) -> Generator:
    if tiny:
        tok = VQTokenizer(VQConfig(channels=8, channel_mult=(1, 2), z_channels=8, codebook_size=64, codebook_dim=4))
        return Generator(GeneratorConfig(tokenizer="-", image_size=16, num_classes=10, backbone="tiny"), tokenizer=tok)
    tok = VQTokenizer(
        VQConfig(channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256, codebook_size=16384)
    )
    return Generator(GeneratorConfig(tokenizer="-", image_size=256, num_classes=1000, backbone="gpt-b"), tokenizer=tok)


def bench_sampling(gen: Generator, batch: int, repeats: int, decode: bool) -> dict:
    sampler = Sampler(gen, SamplingConfig(cfg_scale=2.0, batch_size=batch, top_k=0))
    labels = torch.arange(batch) % gen.config.num_classes
    run = sampler.sample_images if decode else sampler.sample_tokens
    sync()
    t0 = time.perf_counter()
    run(labels)  # first batch: allocation and CUDA-graph capture
    sync()
    warmup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for r in range(repeats):
        run(labels, sample_ids=torch.arange(batch) + (r + 1) * batch)
    sync()
    return {"images_per_s": repeats * batch / (time.perf_counter() - t0), "first_batch_s": warmup}


def bench_training(gen: Generator, batch: int, steps: int) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = gen.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    L = model.schedule.seq_len
    h, w = model.schedule.grid
    tokens = torch.randint(0, model.tokenizer.vocab_size, (batch, h, w), device=device)
    labels = torch.randint(0, model.config.num_classes, (batch,), device=device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    def step():
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            loss = model.loss(tokens, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    tokens_per_s = steps * batch * L / (time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    return {"tokens_per_s": tokens_per_s, "model_tflops": 6 * params * tokens_per_s / 1e12}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a tiny model, to check the script on a CPU")
    p.add_argument("--name", help="write results/NAME.json")
    p.add_argument("--sample-batches", type=int, nargs="+", default=[8, 64, 256])
    p.add_argument("--train-batches", type=int, nargs="+", default=[64, 256])
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    gen = build(args.tiny)
    params = sum(p.numel() for p in gen.parameters())
    metrics = {"params": params}
    print(f"generator: {params / 1e6:.1f}M parameters, {gen.schedule.seq_len} tokens")
    # the CUDA-graph path must give the eager path's tokens exactly
    if torch.cuda.is_available():
        labels = torch.arange(8)
        a = Sampler(gen, SamplingConfig(cfg_scale=2.0, batch_size=8, cuda_graph=True)).sample_tokens(labels)
        b = Sampler(gen, SamplingConfig(cfg_scale=2.0, batch_size=8, cuda_graph=False)).sample_tokens(labels)
        metrics["graph_matches_eager"] = float((a == b).float().mean())
        print(f"CUDA graph vs eager: {metrics['graph_matches_eager']:.4f} of tokens equal")
    for bs in args.sample_batches:
        for decode in (False, True):
            r = bench_sampling(gen, bs, repeats=3, decode=decode)
            key = f"sample_b{bs}_{'with_decode' if decode else 'tokens_only'}"
            metrics[f"{key}_images_per_s"] = r["images_per_s"]
            metrics[f"{key}_first_batch_s"] = r["first_batch_s"]
            print(f"{key}: {r['images_per_s']:.1f} images/s (first batch {r['first_batch_s']:.2f} s)")
    for bs in args.train_batches:
        r = bench_training(gen, bs, steps=10 if not args.tiny else 2)
        metrics[f"train_b{bs}_tokens_per_s"] = r["tokens_per_s"]
        metrics[f"train_b{bs}_model_tflops"] = r["model_tflops"]
        print(f"train b{bs}: {r['tokens_per_s']:.0f} tokens/s, {r['model_tflops']:.1f} model TFLOP/s")
    if args.name:
        write_result(f"results/{args.name}.json", args.name, metrics)


if __name__ == "__main__":
    main()
