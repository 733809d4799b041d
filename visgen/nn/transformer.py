"""The decoder-only backbone every AR family shares: Llama-style blocks (RMSNorm, SwiGLU, RoPE over 1-3 axes),
optional AdaLN class conditioning, block-causal attention through ``scaled_dot_product_attention``, and a static
KV cache that appends a unit of any size.

Attention rule (DESIGN.md): position i sees position j iff ``unit_id[j] <= unit_id[i]``. With one-token units this
is plain causal attention; the same rule, read off the cache, serves decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class TransformerConfig:
    """Backbone size and options.

    n_layer, n_head, d_model: depth, heads, width.
    mlp_ratio: SwiGLU hidden width / d_model (8/3 keeps the parameter count of a 4x GELU MLP, Llama).
    rope_axes: axes RoPE rotates over (1: sequence, 2: rows/cols, 3: time/rows/cols); head_dim splits evenly.
    rope_theta: RoPE base frequency.
    adaln: condition every block on the class by adaptive LayerNorm (DiT / VAR) as well as the prefix token.
    dropout: attention and residual dropout in training.
    """

    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    mlp_ratio: float = 8 / 3
    rope_axes: int = 2
    rope_theta: float = 10000.0
    adaln: bool = False
    dropout: float = 0.0


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        return F.rms_norm(x, (x.shape[-1],), w, self.eps)  # one fused kernel on GPUs (torch >= 2.8)


def rope_tables(positions_LA: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (L, head_dim / 2) for positions with A axes; each axis gets an equal share of the frequencies."""
    n_axes = positions_LA.shape[1]
    per_axis = head_dim // 2 // n_axes
    freqs = 1.0 / theta ** (torch.arange(per_axis, device=positions_LA.device).float() / per_axis)
    angles = torch.cat([positions_LA[:, a, None].float() * freqs for a in range(n_axes)], dim=-1)
    pad = head_dim // 2 - angles.shape[1]  # frequencies left over when head_dim/2 is not divisible: no rotation
    angles = F.pad(angles, (0, pad))
    return angles.cos(), angles.sin()


def apply_rope(x_BHLD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x_BHLD.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.type_as(x_BHLD)


class KVCache(nn.Module):
    """Preallocated keys and values for every layer (B, heads, max_len, head_dim); a unit is written at
    ``input_pos`` (a device tensor), so one decoding step has fixed shapes and can be captured in a CUDA graph."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's keys and values (views): a block gets tensors, not an index, so one compiled block serves all."""
        return self.k[i], self.v[i]


class Attention(nn.Module):
    decode_fn = None  # one-token decoding steps through this instead of SDPA (``Transformer.set_decode_kernel``)
    rows_fn = None  # and windows at per-row positions (speculative decoding) through this

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x, rope, mask, is_causal, kv, input_pos, kv_len):
        B, L, _ = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.n_head, self.head_dim)
        if self.decode_fn is not None and kv is not None and L == 1 and input_pos.dim() == 1:
            # rotate, append to the cache and attend to exactly slots 0..input_pos in one kernel; no mask
            return self.proj(self.decode_fn(qkv[:, 0], *rope, *kv, input_pos).view(B, 1, -1))
        if self.rows_fn is not None and kv is not None and input_pos.dim() == 2:
            # each row's window at its own slots: written and attended in one kernel, reading each row's prefix only
            cos, sin = rope  # (B, 1, n, d / 2)
            return self.proj(self.rows_fn(qkv, cos[:, 0], sin[:, 0], *kv, input_pos).view(B, L, -1))
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k = apply_rope(qkv[:2], *rope).unbind(0)  # queries and keys rotated together
        v = qkv[2]
        if kv is not None:  # decoding: write this unit, attend to the first kv_len slots
            k_cache, v_cache = kv
            if input_pos.dim() == 1:  # every row at the same positions
                k_cache.index_copy_(2, input_pos, k)
                v_cache.index_copy_(2, input_pos, v)
            else:  # (B, L): each row at its own positions (speculative decoding: rows accept different lengths)
                idx = input_pos[:, None, :, None].expand(-1, self.n_head, -1, self.head_dim)
                k_cache.scatter_(2, idx, k)
                v_cache.scatter_(2, idx, v)
            k, v = k_cache[:, :, :kv_len], v_cache[:, :, :kv_len]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(B, L, -1))


class SwiGLU(nn.Module):
    def __init__(self, d: int, ratio: float):
        super().__init__()
        hidden = int(d * ratio + 63) // 64 * 64  # a multiple of 64 for tensor-core-friendly shapes
        self.w12 = nn.Linear(d, 2 * hidden, bias=False)
        self.w3 = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(cfg.d_model, affine=not cfg.adaln), RMSNorm(cfg.d_model, affine=not cfg.adaln)
        self.attn, self.mlp = Attention(cfg), SwiGLU(cfg.d_model, cfg.mlp_ratio)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.adaln:
            # shift, scale, gate for attention and MLP from the class embedding (DiT, Peebles & Xie 2023, sec. 3.2)
            self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.d_model, 6 * cfg.d_model))
            nn.init.zeros_(self.ada[1].weight)
            nn.init.zeros_(self.ada[1].bias)
        else:
            self.ada = None

    def forward(self, x, h, next_w, cond, rope, mask, is_causal: bool, kv=None, input_pos=None, kv_len: int = 0):
        """The residual stream ``x`` -> the new stream, and its RMS norm scaled by ``next_w`` (the next block's
        ``norm1`` weight, or the final norm's) when one is given. ``h``: ``self.norm1(x)`` when the block before
        computed it (inference: the norm that follows a block is computed at its end, so a compiled block fuses it
        with the last residual add), None to compute it here (training: the compiler then recomputes it in
        backward instead of keeping it, a (B, L, d) tensor a layer). ``kv``: this layer's (keys, values) cache when
        decoding, written at ``input_pos``, read up to ``kv_len``."""
        if h is None:
            h = self.norm1(x)
        if self.ada is None:
            x = x + self.drop(self.attn(h, rope, mask, is_causal, kv, input_pos, kv_len))
            x = x + self.drop(self.mlp(self.norm2(x)))
        else:
            sh1, sc1, g1, sh2, sc2, g2 = self.ada(cond)[:, None].chunk(6, dim=-1)
            x = x + (1 + g1) * self.drop(self.attn(h * (1 + sc1) + sh1, rope, mask, is_causal, kv, input_pos, kv_len))
            x = x + (1 + g2) * self.drop(self.mlp(self.norm2(x) * (1 + sc2) + sh2))
        return x, None if next_w is None else F.rms_norm(x, (x.shape[-1],), next_w.to(x.dtype), self.norm1.eps)


class Transformer(nn.Module):
    """Blocks + final norm over embedded inputs (B, L, d_model); see ``TransformerConfig``."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if cfg.d_model % cfg.n_head:
            raise ValueError(f"d_model {cfg.d_model} is not divisible by n_head {cfg.n_head}")
        self.cfg = cfg
        self.head_dim = cfg.d_model // cfg.n_head
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model)
        self.register_buffer("norm_ones", torch.ones(cfg.d_model), persistent=False)  # weight of weightless norms
        self.activation_checkpointing = False  # training: recompute each block in backward instead of storing it
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module):
        if isinstance(m, nn.Linear) and m.weight.std() != 0:  # keep the zero-initialised AdaLN projections
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def compile_blocks(self, **options):
        """Regional ``torch.compile``: each block is compiled, and since the blocks are alike one compiled graph
        serves them all (a fraction of whole-model compile time). Elementwise work (norms, RoPE, SwiGLU, AdaLN)
        fuses into a few kernels; options go to ``torch.compile`` (e.g. ``backend="eager"`` to check tracing)."""
        import torch._dynamo

        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 64))  # one per shape
        for block in self.blocks:
            block.compile(**{"fullgraph": True, **options})  # shapes turn dynamic once a second one is seen

    def auto_decode_kernel(self, device) -> str:
        """``triton`` on a GPU where it applies (Triton installed, a power-of-two head dim), else ``sdpa``."""
        if torch.device(device).type != "cuda" or self.head_dim & (self.head_dim - 1):
            return "sdpa"
        from visgen.nn import decode_attention  # imports Triton: only on GPUs

        return "triton" if decode_attention.available() else "sdpa"

    rows_kernel = False  # whether windows at per-row positions go through the rows kernel (set_decode_kernel)

    def set_decode_kernel(self, name: str, rows: bool = False):
        """How one-token units attend while decoding: ``sdpa`` (PyTorch's fused kernels over the ``kv_len`` slots
        offered, under the mask, any device) or ``triton`` (``visgen.nn.decode_attention``: RoPE, the cache append
        and attention to exactly the slots up to the token's own position, read on the device, in one kernel, so
        ``kv_len`` and the mask no longer matter; GPUs). With ``rows``, ``triton`` also takes windows at per-row
        positions (``Generator.decode_rows``: speculative decoding's verifying passes and draft steps) through its
        rows kernel."""
        if name not in ("sdpa", "triton"):
            raise ValueError(f"decode kernel must be sdpa or triton, got {name!r}")
        fn = rows_fn = None
        if name == "triton":
            from visgen.nn import decode_attention  # imports Triton: only when asked for

            if not decode_attention.available():
                raise ValueError("decode kernel 'triton' needs Triton (pip install triton); use 'sdpa'")
            fn = decode_attention.decode_attention
            if rows and self.head_dim >= 16:
                rows_fn = decode_attention.decode_rows_attention
        for block in self.blocks:
            block.attn.decode_fn, block.attn.rows_fn = fn, rows_fn
        self.rows_kernel = rows_fn is not None  # windows read their prefixes themselves: callers build no mask

    def new_cache(self, batch: int, max_len: int, dtype, device) -> KVCache:
        c = self.cfg
        return KVCache(c.n_layer, batch, c.n_head, max_len, self.head_dim, dtype, device)

    def forward(
        self,
        x_BLD: torch.Tensor,
        positions_LA: torch.Tensor | None,
        cond_BD: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        input_pos: torch.Tensor | None = None,
        kv_len: int | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Features (B, L, d_model). Training: the whole sequence with ``mask`` (bool, True = attend) or
        ``is_causal``. Decoding: one unit at sequence positions ``input_pos`` against ``cache``, reading its first
        ``kv_len`` slots (default all), with ``mask`` (n, kv_len) saying which of them it may read (None: all);
        or, with ``input_pos`` (B, n), each row at positions of its own, ``mask`` (B, 1, n, kv_len) and the RoPE
        tables (B, 1, n, head_dim / 2).
        ``rope``: the (cos, sin) tables of these positions (``rope_tables``) instead of ``positions_LA``, when the
        caller keeps them (decoding slices them from tables built once: no kernel computes them in a step)."""
        if rope is None:
            rope = rope_tables(positions_LA, self.head_dim, self.cfg.rope_theta)
        if cache is not None and kv_len is None:
            kv_len = cache.k.shape[3]
        # inference: each block ends with the next one's first norm, the last with the final norm; the weights as
        # plain tensor views (ones where a norm has none: AdaLN), so every block traces alike and one compiled graph
        # serves all. Training: each block norms its own input (see ``Block.forward``)
        fused = not torch.is_grad_enabled()
        h, next_ws = None, [None] * len(self.blocks)
        if fused:
            if x_BLD._base is not None:  # a view (of the guided batch, say): the first block would trace apart from
                x_BLD = x_BLD.clone()  # the rest, whose input is a block's output (a compiled graph more)
            h = self.blocks[0].norm1(x_BLD)
            ones = self.norm_ones
            next_ws = [b.norm1.weight if b.norm1.weight is not None else ones for b in self.blocks[1:]]
            next_ws = [w.view(-1) for w in next_ws + [self.norm.weight]]  # a view of a Parameter is a plain Tensor
        for i, (block, next_w) in enumerate(zip(self.blocks, next_ws)):
            kv = cache.layer(i) if cache is not None else None
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x_BLD, h = checkpoint(block, x_BLD, h, next_w, cond_BD, rope, mask, is_causal, use_reentrant=False)
            else:
                x_BLD, h = block(x_BLD, h, next_w, cond_BD, rope, mask, is_causal, kv, input_pos, kv_len or 0)
        return h if fused else self.norm(x_BLD)


def set_backbones(module: nn.Module, compile: bool, checkpointing: bool, required: bool):
    """Compile (regionally) and/or checkpoint the activations of every ``Transformer`` inside ``module``.
    ``required``: having none is a ValueError (a setting that asked for them by name)."""
    backbones = [m for m in module.modules() if isinstance(m, Transformer)]
    if not backbones and required:
        raise ValueError("train.compile and train.activation_checkpointing need a transformer backbone")
    for b in backbones:
        b.activation_checkpointing = checkpointing
        if compile:
            b.compile_blocks()
