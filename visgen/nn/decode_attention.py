"""Attention of one query token per row against its KV-cache prefix, as a Triton kernel.

Decoding a one-token unit at sequence position p attends (rows, heads, 1, d) queries to cache slots 0..p (units are
contiguous in sequence order, DESIGN.md, so that prefix is exactly what the unit sees). PyTorch's fused SDPA kernels
tile queries in blocks of 64-128, and a masked call reads whatever slots it is given; this kernel gives each
(row, head) one program that reads p, streams exactly slots 0..p once with an online softmax (fp32 statistics) and
writes one output. Since p is read on the device, one launch (one captured CUDA graph, one compiled shape) serves
every step of a sequence while the bytes read grow with the prefix. It is registered as a
``torch.library.triton_op`` so CUDA graphs capture it and ``torch.compile`` traces it whole.

Selected with ``Transformer.set_decode_kernel("triton")`` (``SamplingConfig.decode_kernel``); it needs a GPU and
Triton. Under ``TRITON_INTERPRET=1`` the same kernel runs on CPU tensors, which is how the tests check it.
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
        Q, K, V, Pos, Out, H,
        sq_r, sq_h, sk_r, sk_h, sk_n, sv_r, sv_h, sv_n, so_r, so_h,
        SCALE: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        r, h = (pid // H).to(tl.int64), pid % H  # 64-bit offsets: a large cache passes 2^31 elements
        end = tl.load(Pos) + 1  # slots 0..p
        offs_d = tl.arange(0, D)
        q = (
            tl.load(Q + r * sq_r + h * sq_h + offs_d).to(tl.float32) * SCALE
        )  # a constexpr: fp32 (Inductor would pass fp64)
        m_i = tl.full((), float("-inf"), tl.float32)
        l_i = tl.zeros((), tl.float32)
        acc = tl.zeros((D,), tl.float32)
        k_row, v_row = K + r * sk_r + h * sk_h, V + r * sv_r + h * sv_h
        for start in range(0, end, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            valid = offs_n < end
            k = tl.load(k_row + offs_n[:, None] * sk_n + offs_d[None, :], mask=valid[:, None], other=0.0)
            s = tl.where(valid, tl.sum(k.to(tl.float32) * q[None, :], axis=1), float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=0))  # finite: every block holds at least one visible slot
            p = tl.exp(s - m_new)
            alpha = tl.exp(m_i - m_new)
            v = tl.load(v_row + offs_n[:, None] * sv_n + offs_d[None, :], mask=valid[:, None], other=0.0)
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new
        tl.store(Out + r * so_r + h * so_h + offs_d, (acc / l_i).to(Out.dtype.element_ty))

    @torch.library.triton_op("visgen::decode_attention", mutates_args=())
    def _decode_op(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, block_n: int, num_warps: int
    ) -> torch.Tensor:
        R, H, _, D = q.shape
        out = torch.empty((R, H, 1, D), dtype=q.dtype, device=q.device)
        torch.library.wrap_triton(_decode_kernel)[(R * H,)](
            q, k, v, pos, out, H,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), out.stride(1), SCALE=D**-0.5, D=D, BLOCK_N=block_n, num_warps=num_warps,
        )  # fmt: skip
        return out


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, block_n: int = 64, num_warps: int = 2
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over slots 0..pos for q (R, H, 1, d) and the cache's k and v (R, H, slots, d),
    unit-stride last dims (cache views); ``pos`` (1,) int64 on q's device: the query's slot (< slots, not checked
    on the device). Returns (R, H, 1, d) in q's dtype. ``block_n`` slots per loop step, ``num_warps`` per program
    (``bench/attention.py`` times choices)."""
    if triton is None:
        raise RuntimeError("decode_kernel='triton' needs Triton (pip install triton) and a GPU; use 'sdpa'")
    if q.shape[2] != 1 or pos.numel() != 1 or k.stride(-1) != 1 or v.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError(
            f"one query token and unit-stride heads expected, got q {tuple(q.shape)}, pos {tuple(pos.shape)}"
        )
    if q.shape[-1] & (q.shape[-1] - 1):
        raise ValueError(f"head dim must be a power of two for the Triton kernel, got {q.shape[-1]}")
    return _decode_op(q, k, v, pos, block_n, num_warps)
