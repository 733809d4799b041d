"""One decoding step of attention for one token per row (RoPE, cache append, attention), as one Triton kernel.

Decoding a one-token unit at sequence position p attends its query to cache slots 0..p (units are contiguous in
sequence order, DESIGN.md, so that prefix is exactly what the unit sees). PyTorch's fused SDPA kernels tile queries
in blocks of 64-128, and a masked call reads whatever slots it is given; around them, rotating the query and key and
writing the key and value to the cache take three more small kernels per layer. This kernel gives each (row, head)
one program that rotates the token's query and key, writes its key and value to slot p, and streams exactly slots
0..p-1 once with an online softmax (fp32 statistics). Since p is read on the device, one launch (one captured CUDA
graph, one compiled shape) serves every step of a sequence while the bytes read grow with the prefix. It is
registered as a ``torch.library.triton_op`` (mutating the cache) so ``torch.compile`` traces it whole; uncompiled
callers launch the kernel directly (CUDA graphs capture it either way).

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
    def _rope(x, cos, sin, D: tl.constexpr):
        """``transformer.apply_rope`` on one head vector: pairs (2i, 2i + 1) rotated by angle i (fp32)."""
        x1, x2 = tl.split(tl.reshape(x, (D // 2, 2)))
        return tl.interleave(x1 * cos - x2 * sin, x1 * sin + x2 * cos)

    @triton.jit
    def _decode_kernel(
        QKV, Cos, Sin, KC, VC, Pos, Out, H,
        s_r, s_t, s_h, sk_r, sk_h, sk_n, sv_r, sv_h, sv_n, so_r, so_h,
        SCALE: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        r, h = (pid // H).to(tl.int64), pid % H  # 64-bit offsets: a large cache passes 2^31 elements
        pos = tl.load(Pos)
        offs_d, offs_half = tl.arange(0, D), tl.arange(0, D // 2)
        cos, sin = tl.load(Cos + offs_half), tl.load(Sin + offs_half)
        base = QKV + r * s_r + h * s_h
        q = _rope(tl.load(base + offs_d).to(tl.float32), cos, sin, D)
        k = _rope(tl.load(base + s_t + offs_d).to(tl.float32), cos, sin, D).to(KC.dtype.element_ty)
        v = tl.load(base + 2 * s_t + offs_d)
        k_row, v_row = KC + r * sk_r + h * sk_h, VC + r * sv_r + h * sv_h
        tl.store(k_row + pos * sk_n + offs_d, k)  # append this token
        tl.store(v_row + pos * sv_n + offs_d, v.to(VC.dtype.element_ty))
        q = q.to(QKV.dtype.element_ty).to(tl.float32) * SCALE  # the rounded query, as SDPA would read it
        # online softmax, starting from this token's own slot (in registers), then slots 0..pos-1 from the cache
        m_i = tl.sum(q * k.to(tl.float32), axis=0)
        l_i = tl.full((), 1.0, tl.float32)
        acc = v.to(tl.float32)
        for start in range(0, pos, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            valid = offs_n < pos
            kb = tl.load(k_row + offs_n[:, None] * sk_n + offs_d[None, :], mask=valid[:, None], other=0.0)
            s = tl.where(valid, tl.sum(kb.to(tl.float32) * q[None, :], axis=1), float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            p = tl.exp(s - m_new)
            alpha = tl.exp(m_i - m_new)
            vb = tl.load(v_row + offs_n[:, None] * sv_n + offs_d[None, :], mask=valid[:, None], other=0.0)
            acc = acc * alpha + tl.sum(p[:, None] * vb.to(tl.float32), axis=0)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new
        tl.store(Out + r * so_r + h * so_h + offs_d, (acc / l_i).to(Out.dtype.element_ty))

    def _launch(kernel, qkv, cos, sin, k_cache, v_cache, pos, block_n: int, num_warps: int) -> torch.Tensor:
        R, _, H, D = qkv.shape
        out = torch.empty((R, H, D), dtype=qkv.dtype, device=qkv.device)
        kernel[(R * H,)](
            qkv, cos, sin, k_cache, v_cache, pos, out, H,
            qkv.stride(0), qkv.stride(1), qkv.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
            SCALE=D**-0.5, D=D, BLOCK_N=block_n, num_warps=num_warps,
        )  # fmt: skip
        return out

    @torch.library.triton_op("visgen::decode_attention", mutates_args={"k_cache", "v_cache"})
    def _decode_op(
        qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
        pos: torch.Tensor, block_n: int, num_warps: int,
    ) -> torch.Tensor:  # fmt: skip
        wrapped = torch.library.wrap_triton(_decode_kernel)
        return _launch(wrapped, qkv, cos, sin, k_cache, v_cache, pos, block_n, num_warps)


def decode_attention(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    pos: torch.Tensor, block_n: int = 64, num_warps: int = 2,
) -> torch.Tensor:  # fmt: skip
    """One decoding step of attention for one token per row, in one kernel: rotate its query and key by RoPE, write
    its key and value to cache slot ``pos``, attend to slots 0..pos.

    qkv (R, 3, H, d): the token's unrotated query, key and value (the qkv projection's view); cos, sin (1, d / 2)
    fp32: its RoPE tables (``transformer.rope_tables``); k_cache, v_cache (R, H, slots, d), written in place;
    ``pos`` (1,) int64 on the device: the token's slot (< slots, not checked on the device). Returns (R, H, d) in
    qkv's dtype. ``block_n`` slots per loop step, ``num_warps`` per program (``bench/attention.py`` times choices;
    the defaults were the fastest or near it at every batch and prefix there)."""
    if triton is None:
        raise RuntimeError("decode_kernel='triton' needs Triton (pip install triton) and a GPU; use 'sdpa'")
    D = qkv.shape[-1]
    if qkv.dim() != 4 or qkv.shape[1] != 3 or pos.numel() != 1 or cos.shape[-1] != D // 2:
        raise ValueError(f"expected qkv (R, 3, H, d), pos (1,), cos (1, d/2); got {tuple(qkv.shape)}, "
                         f"{tuple(pos.shape)}, {tuple(cos.shape)}")  # fmt: skip
    if any(t.stride(-1) != 1 for t in (qkv, cos, sin, k_cache, v_cache)):
        raise ValueError("the Triton decode kernel needs unit-stride last dims")
    if D & (D - 1):
        raise ValueError(f"head dim must be a power of two for the Triton kernel, got {D}")
    if torch.compiler.is_compiling():  # the registered op: Inductor traces it and knows what it writes
        return _decode_op(qkv, cos, sin, k_cache, v_cache, pos, block_n, num_warps)
    # eager: the kernel itself, without the custom op's dispatch (most of a call's host time, which a sampling loop
    # pays once per layer and step when it runs or captures the loop)
    return _launch(_decode_kernel, qkv, cos, sin, k_cache, v_cache, pos, block_n, num_warps)
