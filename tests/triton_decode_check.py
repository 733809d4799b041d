"""Run under TRITON_INTERPRET=1 (tests/test_engine.py does): the Triton decoding kernel on CPU tensors equals RoPE,
a cache write and SDPA over slots 0..pos (called directly and through its registered op), and a sampler that
decodes through it gives the SDPA sampler's tokens."""

import torch

from tests.test_engine import tiny_generator
from visgen.nn.decode_attention import _decode_op, decode_attention
from visgen.nn.transformer import apply_rope, rope_tables
from visgen.sampling import Sampler, SamplingConfig

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
print("ok")
