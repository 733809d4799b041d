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

    @triton.jit
    def _rope_rows(x, cos, sin, NQ: tl.constexpr, D: tl.constexpr):
        """``_rope`` on (NQ, D) head vectors, each with its own angles (cos, sin: (NQ, D / 2))."""
        x1, x2 = tl.split(tl.reshape(x, (NQ, D // 2, 2)))
        return tl.interleave(x1 * cos - x2 * sin, x1 * sin + x2 * cos)

    @triton.jit
    def _rows_kernel(
        QKV, Cos, Sin, KC, VC, Pos, Out, H, N,
        s_r, s_l, s_t, s_h, sc_r, sc_l, ss_r, ss_l, sk_r, sk_h, sk_n, sv_r, sv_h, sv_n, sp_r, so_r, so_l, so_h,
        SCALE: tl.constexpr, D: tl.constexpr, NQ: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        r, h = (pid // H).to(tl.int64), pid % H
        offs_q, offs_d, offs_half = tl.arange(0, NQ), tl.arange(0, D), tl.arange(0, D // 2)
        live = offs_q < N
        pos = tl.load(Pos + r * sp_r + offs_q, mask=live, other=0)
        first = tl.min(tl.where(live, pos, 2**62), axis=0)  # the window's first slot: the cache holds those before
        cos = tl.load(Cos + r * sc_r + offs_q[:, None] * sc_l + offs_half[None, :], mask=live[:, None], other=1.0)
        sin = tl.load(Sin + r * ss_r + offs_q[:, None] * ss_l + offs_half[None, :], mask=live[:, None], other=0.0)
        at = QKV + r * s_r + h * s_h + offs_q[:, None] * s_l + offs_d[None, :]
        q = _rope_rows(tl.load(at, mask=live[:, None], other=0.0).to(tl.float32), cos, sin, NQ, D)
        k = _rope_rows(tl.load(at + s_t, mask=live[:, None], other=0.0).to(tl.float32), cos, sin, NQ, D)
        q, k = q.to(QKV.dtype.element_ty), k.to(KC.dtype.element_ty)  # rounded as SDPA would read them
        v = tl.load(at + 2 * s_t, mask=live[:, None], other=0.0).to(VC.dtype.element_ty)
        k_row, v_row = KC + r * sk_r + h * sk_h, VC + r * sv_r + h * sv_h
        tl.store(k_row + pos[:, None] * sk_n + offs_d[None, :], k, mask=live[:, None])  # the window's slots
        tl.store(v_row + pos[:, None] * sv_n + offs_d[None, :], v, mask=live[:, None])
        q = q.to(KC.dtype.element_ty)
        # the window itself, from registers: query i reads window token j where pos_j <= pos_i (a padded query reads
        # itself, a zero, so no row of scores is empty)
        s = tl.dot(q, tl.trans(k), input_precision="ieee" if IEEE else None).to(tl.float32) * SCALE
        sees = (live[None, :] & (pos[None, :] <= pos[:, None])) | (offs_q[None, :] == offs_q[:, None])
        s = tl.where(sees, s, float("-inf"))
        m_i = tl.max(s, axis=1)
        p = tl.exp(s - m_i[:, None])
        l_i = tl.sum(p, axis=1)
        acc = tl.dot(p.to(VC.dtype.element_ty), v, input_precision="ieee" if IEEE else None).to(tl.float32)
        # then the cache's slots 0..first-1, which every query of the window reads, with an online softmax
        for start in range(0, first, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            valid = offs_n < first
            kb = tl.load(k_row + offs_n[:, None] * sk_n + offs_d[None, :], mask=valid[:, None], other=0.0)
            s = tl.dot(q, tl.trans(kb), input_precision="ieee" if IEEE else None).to(tl.float32) * SCALE
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            vb = tl.load(v_row + offs_n[:, None] * sv_n + offs_d[None, :], mask=valid[:, None], other=0.0)
            pv = tl.dot(p.to(VC.dtype.element_ty), vb, input_precision="ieee" if IEEE else None).to(tl.float32)
            acc = acc * alpha[:, None] + pv
            l_i = l_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
        out = Out + r * so_r + h * so_h + offs_q[:, None] * so_l + offs_d[None, :]
        tl.store(out, (acc / l_i[:, None]).to(Out.dtype.element_ty), mask=live[:, None])

    def _launch_rows(kernel, qkv, cos, sin, k_cache, v_cache, pos, block_n: int, num_warps: int) -> torch.Tensor:
        R, N, _, H, D = qkv.shape
        out = torch.empty((R, N, H, D), dtype=qkv.dtype, device=qkv.device)
        kernel[(R * H,)](
            qkv, cos, sin, k_cache, v_cache, pos, out, H, N,
            qkv.stride(0), qkv.stride(1), qkv.stride(2), qkv.stride(3), cos.stride(0), cos.stride(1),
            sin.stride(0), sin.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), pos.stride(0),
            out.stride(0), out.stride(1), out.stride(2),
            SCALE=D**-0.5, D=D, NQ=max(16, triton.next_power_of_2(N)), BLOCK_N=block_n,
            IEEE=k_cache.dtype == torch.float32, num_warps=num_warps,
        )  # fmt: skip
        return out

    @torch.library.triton_op("visgen::decode_rows_attention", mutates_args={"k_cache", "v_cache"})
    def _rows_op(
        qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
        pos: torch.Tensor, block_n: int, num_warps: int,
    ) -> torch.Tensor:  # fmt: skip
        wrapped = torch.library.wrap_triton(_rows_kernel)
        return _launch_rows(wrapped, qkv, cos, sin, k_cache, v_cache, pos, block_n, num_warps)


def _check(kernel: str, shapes_ok: bool, expected: str, qkv, pos, cos):
    """Triton present and the arguments shaped as ``expected`` (what both kernels check first)."""
    if triton is None:
        raise RuntimeError("decode_kernel='triton' needs Triton (pip install triton) and a GPU; use 'sdpa'")
    if not shapes_ok:
        raise ValueError(f"the Triton {kernel} kernel expected {expected}; got {tuple(qkv.shape)}, "
                         f"{tuple(pos.shape)}, {tuple(cos.shape)}")  # fmt: skip


def _check_layout(kernel: str, D: int, min_d: int, tensors: tuple):
    """Unit-stride last dims and a power-of-two head dim of at least ``min_d``."""
    if any(t.stride(-1) != 1 for t in tensors):
        raise ValueError(f"the Triton {kernel} kernel needs unit-stride last dims")
    if D & (D - 1) or D < min_d:
        at_least = f" >= {min_d}" if min_d > 1 else ""
        raise ValueError(f"head dim must be a power of two{at_least} for the Triton {kernel} kernel, got {D}")


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
    D = qkv.shape[-1]
    shapes_ok = qkv.dim() == 4 and qkv.shape[1] == 3 and pos.numel() == 1 and cos.shape[-1] == D // 2
    _check("decode", shapes_ok, "qkv (R, 3, H, d), pos (1,), cos (1, d/2)", qkv, pos, cos)
    _check_layout("decode", D, 1, (qkv, cos, sin, k_cache, v_cache))
    if torch.compiler.is_compiling():  # the registered op: Inductor traces it and knows what it writes
        return _decode_op(qkv, cos, sin, k_cache, v_cache, pos, block_n, num_warps)
    # eager: the kernel itself, without the custom op's dispatch (most of a call's host time, which a sampling loop
    # pays once per layer and step when it runs or captures the loop)
    return _launch(_decode_kernel, qkv, cos, sin, k_cache, v_cache, pos, block_n, num_warps)


def decode_rows_attention(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    pos: torch.Tensor, block_n: int = 32, num_warps: int = 4,
) -> torch.Tensor:  # fmt: skip
    """A window of one-token units per row at positions of the row's own (speculative decoding's verifying pass and
    draft steps), in one kernel: rotate each token's query and key, write its key and value at its slot, and attend
    each query to the cache's slots before the window and to the window's tokens at or before it.

    qkv (R, n, 3, H, d): the window's unrotated queries, keys and values (the qkv projection's view); cos, sin
    (R, n, d / 2) fp32: each token's RoPE angles; k_cache, v_cache (R, H, slots, d), written in place; ``pos``
    (R, n) int64 on the device: each token's slot, a row's slots consecutive (as ``Generator.decode_rows`` gives
    them; where the cache holds slots at or past the window's first from an earlier round, they are never read).
    Returns (R, n, H, d) in qkv's dtype: what SDPA over slots <= each token's own gives, reading nothing else. One
    program per (row, head) holds the whole window (n <= 64), so the bytes read follow each row's own prefix."""
    D = qkv.shape[-1]
    shapes_ok = (
        qkv.dim() == 5 and qkv.shape[2] == 3 and pos.shape == qkv.shape[:2] and cos.shape == (*pos.shape, D // 2)
    )
    _check("rows", shapes_ok, "qkv (R, n, 3, H, d), pos (R, n), cos (R, n, d/2)", qkv, pos, cos)
    if qkv.shape[1] > 64:
        raise ValueError(f"the rows kernel holds a window of at most 64 tokens, got {qkv.shape[1]}")
    if cos.stride() != sin.stride():
        raise ValueError("the Triton rows kernel needs cos and sin laid out alike")
    _check_layout("rows", D, 16, (qkv, cos, sin, k_cache, v_cache, pos))
    if torch.compiler.is_compiling():
        return _rows_op(qkv, cos, sin, k_cache, v_cache, pos, block_n, num_warps)
    return _launch_rows(_rows_kernel, qkv, cos, sin, k_cache, v_cache, pos, block_n, num_warps)
