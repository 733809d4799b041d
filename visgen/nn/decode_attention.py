"""Attention of one query token per row against a masked KV-cache prefix, as a Triton kernel.

Decoding a one-token unit attends (rows, heads, 1, d) queries to the first ``kv_len`` cache slots under a (1, kv_len)
mask. The fused SDPA kernels tile queries in blocks of 64-128, so with one query per (row, head) they run
latency-bound: about 125 us per call for GPT-B's heads at 512 rows against a 256-slot bucket, three times what
reading the keys and values takes (``results/bench-attention.json``). This kernel gives each (row, head) one program
that streams its keys and values once with an online softmax (fp32 statistics). It is registered as a
``torch.library.triton_op`` so CUDA graphs capture it and ``torch.compile`` traces it whole.

Selected with ``Transformer.set_decode_kernel("triton")`` (``SamplingConfig.decode_kernel``); it needs a
GPU and Triton. Under ``TRITON_INTERPRET=1`` the same kernel runs on CPU tensors, which is how the tests check it.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs without Triton: the SDPA path serves every case
    triton = None


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _decode_kernel(
        Q, K, V, M, Out, kv_len, scale, H,
        sq_r, sq_h, sk_r, sk_h, sk_n, sv_r, sv_h, sv_n, sm_n, so_r, so_h,
        D: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        r, h = (pid // H).to(tl.int64), pid % H  # 64-bit offsets: a large cache passes 2^31 elements
        offs_d = tl.arange(0, D)
        q = tl.load(Q + r * sq_r + h * sq_h + offs_d).to(tl.float32) * scale
        m_i = tl.full((), float("-inf"), tl.float32)
        l_i = tl.zeros((), tl.float32)
        acc = tl.zeros((D,), tl.float32)
        for start in range(0, kv_len, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            valid = (offs_n < kv_len) & (tl.load(M + offs_n * sm_n, mask=offs_n < kv_len, other=0) != 0)
            k = tl.load(
                K + r * sk_r + h * sk_h + offs_n[:, None] * sk_n + offs_d[None, :], mask=valid[:, None], other=0.0
            )
            s = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block with nothing visible adds nothing
            p = tl.exp(s - m_safe)
            alpha = tl.exp(m_i - m_safe)
            v = tl.load(
                V + r * sv_r + h * sv_h + offs_n[:, None] * sv_n + offs_d[None, :], mask=valid[:, None], other=0.0
            )
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new
        tl.store(Out + r * so_r + h * so_h + offs_d, (acc / l_i).to(Out.dtype.element_ty))

    @torch.library.triton_op("visgen::decode_attention", mutates_args=())
    def _decode_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        R, H, _, D = q.shape
        out = torch.empty((R, H, 1, D), dtype=q.dtype, device=q.device)
        kv_len = k.shape[2]
        torch.library.wrap_triton(_decode_kernel)[(R * H,)](
            q, k, v, mask, out, kv_len, D**-0.5, H,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
            mask.stride(-1), out.stride(0), out.stride(1), D=D, BLOCK_N=64,
        )  # fmt: skip
        return out


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) masked) v for q (R, H, 1, d), k and v (R, H, kv_len, d) with unit-stride last dims
    (cache views), mask (1, kv_len) bool (True: visible; slot 0 always is); returns (R, H, 1, d) in q's dtype."""
    if triton is None:
        raise RuntimeError("decode_kernel='triton' needs Triton (pip install triton) and a GPU; use 'sdpa'")
    if q.shape[2] != 1 or mask.shape[0] != 1 or k.stride(-1) != 1 or v.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError(
            f"one query token and unit-stride heads expected, got q {tuple(q.shape)}, mask {tuple(mask.shape)}"
        )
    if q.shape[-1] & (q.shape[-1] - 1):
        raise ValueError(f"head dim must be a power of two for the Triton kernel, got {q.shape[-1]}")
    return _decode_op(q, k, v, mask.view(torch.uint8) if mask.dtype == torch.bool else mask)
