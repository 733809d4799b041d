"""Decoding attention: device microseconds per call (replayed from a CUDA graph on a GPU, as the sampler runs it)
for one query token against a KV-cache prefix, as the token family decodes (rows = 2 x batch with guidance, GPT-B
heads, a bf16 static cache of 256 slots read up to a 64-slot bucket with a mask), for each way of computing it:

    sdpa_default     ``F.scaled_dot_product_attention`` with a mask, the backend PyTorch picks
    sdpa_cudnn / sdpa_efficient / sdpa_math    the same, one backend forced
    sdpa_flash_exact the flash kernel on the exact prefix, no mask (a shape per step: the bound to beat)
    matmul           two batched matmuls and a softmax (memory-bound reads of the cache, nothing else)
    unfused          what the sdpa decode path does per layer, uncompiled: RoPE on the token's query and key, its
                     key and value written to the cache, masked SDPA over the bucket
    triton           ``visgen.nn.decode_attention`` (``SamplingConfig.decode_kernel="triton"``): all of that in one
                     Triton program per (row, head), streaming exactly the prefix once, offered the whole cache;
                     ``triton_nN_wW``: N slots per loop step, W warps a program
    flex_compiled    with ``--flex``: FlexAttention compiled (its decoding kernel splits the cache over thread
                     blocks); tried in the compiled blocks for one-token units and dropped: 5-12 ms a call at batch
                     256 (`git show 7cbf93f:results/bench-attention.json`, measured at 04e5634)

    python bench/attention.py [--name bench-attention] [--flex]     # a GPU; --tiny checks it on a CPU
"""

from __future__ import annotations

import functools
import os
import time

import torch
import torch.nn.functional as F
from common import Record, parser, sync
from torch.nn.attention import SDPBackend, sdpa_kernel

from visgen.nn.decode_attention import decode_attention
from visgen.nn.transformer import apply_rope, rope_tables

TRITON_CONFIGS = [(32, 2), (64, 4), (128, 2), (128, 4)]  # (slots per loop step, warps); the default is 64, 2
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}  # fmt: skip


def matmul_attention(q, k, v, mask):
    s = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5
    return (s.masked_fill(~mask, float("-inf")).softmax(-1).to(v.dtype)) @ v


def variants(q, k_cache, v_cache, kv_len: int, bucket: int, flex: bool):
    k, v = k_cache[:, :, :bucket], v_cache[:, :, :bucket]
    mask = torch.arange(bucket, device=q.device)[None, :] < kv_len  # (1, bucket)
    out = {"sdpa_default": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)}
    for name in ("cudnn", "efficient", "math"):
        out[f"sdpa_{name}"] = lambda name=name: _forced(name, q, k, v, mask)
    ke, ve = k_cache[:, :, :kv_len], v_cache[:, :, :kv_len]
    out["sdpa_flash_exact"] = lambda: _forced("flash", q, ke, ve, None)
    out["matmul"] = lambda: matmul_attention(q, k, v, mask)
    if q.is_cuda or os.environ.get("TRITON_INTERPRET"):
        out.update(append_variants(k_cache, v_cache, kv_len, bucket))
    if q.is_cuda and flex:
        compiled = _compiled_flex()
        out["flex_compiled"] = lambda: compiled(q, k, v, mask.expand(1, -1))
    return out


def append_variants(k_cache, v_cache, kv_len: int, bucket: int) -> dict:
    """The Triton kernel also rotates the token's query and key and appends its key and value, from the raw qkv
    projection: timed beside ``unfused``, that work in PyTorch ops followed by masked SDPA over the bucket (the
    ``sdpa`` decode path's per-layer work, uncompiled). Each works on its own copy of the cache; max diffs of
    ``triton*`` are against ``unfused``."""
    R, H, _, D = k_cache.shape
    qkv = torch.randn(R, 3, H, D, device=k_cache.device, dtype=k_cache.dtype)
    pos = torch.tensor([kv_len - 1], device=k_cache.device)
    cos, sin = rope_tables(torch.tensor([[kv_len - 1]], device=k_cache.device), D, 10000.0)
    ku, vu, kt, vt = k_cache.clone(), v_cache.clone(), k_cache.clone(), v_cache.clone()
    mask = torch.arange(bucket, device=k_cache.device)[None, :] < kv_len

    def unfused():
        q, k = apply_rope(qkv.permute(1, 0, 2, 3)[:2, :, :, None], cos, sin).unbind(0)
        ku.index_copy_(2, pos, k)
        vu.index_copy_(2, pos, qkv[:, 2, :, None])
        return F.scaled_dot_product_attention(q, ku[:, :, :bucket], vu[:, :, :bucket], attn_mask=mask)[:, :, 0]

    out = {"unfused": unfused, "triton": functools.partial(decode_attention, qkv, cos, sin, kt, vt, pos)}
    for block_n, warps in TRITON_CONFIGS:
        out[f"triton_n{block_n}_w{warps}"] = functools.partial(
            decode_attention, qkv, cos, sin, kt, vt, pos, block_n=block_n, num_warps=warps
        )
    return out


def flex_attention_masked(q, k, v, mask):
    from torch.nn.attention.flex_attention import flex_attention

    def masked(score, b, h, q_idx, kv_idx):
        return torch.where(mask[q_idx, kv_idx], score, float("-inf"))

    return flex_attention(q, k, v, score_mod=masked)


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention_masked, fullgraph=True)


def _forced(name, q, k, v, mask):
    with sdpa_kernel(BACKENDS[name]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def main():
    p = parser(__doc__)
    p.add_argument("--batches", type=int, nargs="+", default=[8, 64, 256])
    p.add_argument("--kv-lens", type=int, nargs="+", default=[40, 100, 160, 250])
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--flex", action="store_true", help="also compiled FlexAttention (a long compile, GPU)")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    heads, dim, slots = (12, 64, 256) if not args.tiny else (2, 8, 64)
    rec = Record(args.name)
    for batch in args.batches:
        rows = 2 * batch
        k_cache = torch.randn(rows, heads, slots, dim, device=device, dtype=dtype)
        v_cache = torch.randn_like(k_cache)
        q = torch.randn(rows, heads, 1, dim, device=device, dtype=dtype)
        for kv_len in args.kv_lens:
            bucket = min(slots, -(-kv_len // 64) * 64)
            ref = None
            for name, fn in variants(q, k_cache, v_cache, kv_len, bucket, args.flex).items():
                try:
                    y = fn()
                except RuntimeError as e:  # a backend that does not take this case
                    print(f"b{batch}_kv{kv_len}_{name}: unsupported ({str(e).splitlines()[0][:80]})")
                    continue
                ref = y if ref is None or name == "unfused" else ref
                err = (y.float() - ref.float()).abs().max().item()
                us = time_us(fn, args.iters)
                rec.add(f"b{batch}_kv{kv_len}_{name}_us", us, ".1f", f"us (max diff {err:.3g})")


def time_us(fn, iters: int) -> float:
    """Microseconds per call. On a GPU the calls are captured in one CUDA graph and replayed, as the sampler runs
    them: device time, without the host's launch and dispatch cost (which would dominate small batches)."""
    if not torch.cuda.is_available():
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters * 1e6
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn()
    graph.replay()  # warm
    sync()
    t0 = time.perf_counter()
    graph.replay()
    sync()
    return (time.perf_counter() - t0) / iters * 1e6


if __name__ == "__main__":
    main()
