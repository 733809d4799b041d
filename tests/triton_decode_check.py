"""Run under TRITON_INTERPRET=1 (tests/test_engine.py does): the Triton decoding kernels on CPU tensors equal RoPE,
the cache writes and SDPA (called directly and through their registered ops): the one-token kernel over slots
0..pos, and the rows kernel (windows of one-token units at per-row positions: speculative decoding's verifying passes
and draft steps) over each token's slots <= its own; samplers that decode through them give the SDPA samplers'
tokens."""

import copy

import torch
import torch.nn.functional as F

from tests.test_engine import tiny_generator
from tests.test_speculative import draft_for
from visgen.nn.decode_attention import _decode_op, _rows_op, decode_attention, decode_rows_attention
from visgen.nn.transformer import apply_rope, rope_tables
from visgen.sampling import Sampler, SamplingConfig
from visgen.sampling.sampler import _BatchState

torch.manual_seed(0)
R, H, D, S = 3, 2, 16, 256
qkv = torch.randn(R, 1, 3 * H * D).view(R, 1, 3, H, D)[:, 0]  # the qkv projection's view of one token
for pos in (0, 36, 63, 64, 127, 255):  # first slot, inside a block, block edges, last slot
    cos, sin = rope_tables(torch.tensor([[pos // 16, pos % 16]]), D, 10000.0)
    kc, vc = torch.randn(R, H, S, D), torch.randn(R, H, S, D)
    q, k = apply_rope(qkv.permute(1, 0, 2, 3)[:2, :, :, None], cos, sin).unbind(0)  # (R, H, 1, D)
    ref_k, ref_v = kc.clone(), vc.clone()
    ref_k[:, :, pos], ref_v[:, :, pos] = k[:, :, 0], qkv[:, 2]
    ref = torch.nn.functional.scaled_dot_product_attention(q, ref_k[:, :, : pos + 1], ref_v[:, :, : pos + 1])
    for block_n in (16, 64):
        k_cache, v_cache = kc.clone(), vc.clone()
        out = decode_attention(qkv, cos, sin, k_cache, v_cache, torch.tensor([pos]), block_n=block_n)
        torch.testing.assert_close(out, ref[:, :, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(k_cache, ref_k, atol=1e-6, rtol=1e-6)  # this token appended, nothing else
        assert torch.equal(v_cache, ref_v)
    # the registered op (what compiled blocks call) launches the same kernel
    k_cache, v_cache = kc.clone(), vc.clone()
    assert torch.equal(_decode_op(qkv, cos, sin, k_cache, v_cache, torch.tensor([pos]), 64, 2), out)  # block 64
    torch.testing.assert_close(k_cache, ref_k, atol=1e-6, rtol=1e-6)

gen = tiny_generator(adaln=True)
cfg = dict(cfg_scale=2.0, seed=4)
sdpa = Sampler(gen, SamplingConfig(**cfg)).sample_tokens([0, 1, 2])
triton = Sampler(gen, SamplingConfig(**cfg, decode_kernel="triton"))
assert torch.equal(triton.sample_tokens([0, 1, 2]), sdpa)
assert triton.model.backbone.blocks[0].attn.decode_fn is decode_attention
assert gen.backbone.blocks[0].attn.decode_fn is None  # the caller's model is left as it was
# units replayed by a device counter (cuda_graph "unit", run eagerly): the kernel reads positions from the counter
assert triton.unit_replay
st = _BatchState(triton.model, 3, triton.guided, triton.dtype, triton.device)
triton._start(st, torch.tensor([0, 1, 2]), torch.arange(3))
assert torch.equal(triton._unit_by_unit(st), sdpa)

# ---- windows at per-row positions (speculative decoding): the rows kernel
R, H, D, S = 3, 2, 16, 160
table = rope_tables(torch.stack([torch.arange(S) // 16, torch.arange(S) % 16], 1), D, 10000.0)


def reference(qkv, pos, kc, vc):
    """What ``Attention.forward`` does without the kernel: rotate, scatter into the cache, SDPA under the mask."""
    cos, sin = (t[pos][:, None] for t in table)  # (R, 1, n, d/2)
    q, k = apply_rope(qkv.permute(2, 0, 3, 1, 4)[:2], cos, sin).unbind(0)  # (R, H, n, d)
    v = qkv.permute(2, 0, 3, 1, 4)[2]
    kc, vc = kc.clone(), vc.clone()
    idx = pos[:, None, :, None].expand(-1, H, -1, D)
    kc.scatter_(2, idx, k.to(kc.dtype))
    vc.scatter_(2, idx, v.to(vc.dtype))
    mask = torch.arange(S) <= pos[:, None, :, None]
    out = F.scaled_dot_product_attention(q.to(kc.dtype), kc, vc, attn_mask=mask)
    return out.transpose(1, 2), kc, vc


# fp16 for the low-precision case: the interpreter (numpy) has no bfloat16 matrix product; GPUs run either
cases = [
    (torch.float32, 1, (0, 31, 100)),
    (torch.float32, 9, (3, 32, 140)),
    (torch.float32, 17, (0, 63, 143)),
    (torch.float16, 5, (0, 16, 95)),
]  # windows of 1 (a draft step) to past 16 (two query tiles' worth)
for dtype, n, firsts in cases:
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    pos = torch.tensor([[f + j for j in range(n)] for f in firsts[:R]])  # rows at different points
    qkv = torch.randn(R, n, 3 * H * D).to(dtype).view(R, n, 3, H, D)
    kc, vc = torch.randn(R, H, S, D).to(dtype), torch.randn(R, H, S, D).to(dtype)
    ref, ref_k, ref_v = reference(qkv, pos, kc, vc)
    cos, sin = (t[pos] for t in table)
    for block_n in (16, 32) if n == 9 else (32,):
        k_cache, v_cache = kc.clone(), vc.clone()
        out = decode_rows_attention(qkv, cos, sin, k_cache, v_cache, pos, block_n=block_n)
        torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
        torch.testing.assert_close(k_cache, ref_k, atol=tol, rtol=tol)  # the window's slots, nothing else
        assert torch.equal(v_cache, ref_v)
    k_cache, v_cache = kc.clone(), vc.clone()
    assert torch.equal(_rows_op(qkv, cos, sin, k_cache, v_cache, pos, 32, 4), out)  # the op: the same kernel

# speculative (Jacobi) rounds: the target's verifying passes through the rows kernel give the SDPA rounds' tokens
cfg = dict(cfg_scale=2.0, seed=4, speculative="jacobi", gamma=3)
sdpa = Sampler(gen, SamplingConfig(**cfg)).sample_tokens([0, 1])
triton = Sampler(gen, SamplingConfig(**cfg, decode_kernel="triton"))
assert torch.equal(triton.sample_tokens([0, 1]), sdpa)
assert triton.model.backbone.blocks[0].attn.rows_fn is decode_rows_attention
assert gen.backbone.blocks[0].attn.rows_fn is None  # the caller's model is left as it was
backbone = copy.deepcopy(gen.backbone)
backbone.set_decode_kernel("triton")  # what decode_kernel="auto" picks on a GPU: windows stay with SDPA
assert backbone.blocks[0].attn.decode_fn is decode_attention and backbone.blocks[0].attn.rows_fn is None
cfg = SamplingConfig(speculative="feature", decode_kernel="triton")
feature = Sampler(gen, cfg, draft=draft_for("feature", gen, 3))  # a draft's steps go through the kernels too
assert feature.speculative.draft_body.blocks[0].attn.rows_fn is decode_rows_attention
print("ok")
