"""Run under TRITON_INTERPRET=1 (tests/test_engine.py does): the Triton decoding-attention kernel on CPU tensors
equals SDPA over slots 0..pos, and a sampler that decodes through it gives the SDPA sampler's tokens."""

import torch

from tests.test_engine import tiny_generator
from visgen.nn.decode_attention import decode_attention
from visgen.sampling import Sampler, SamplingConfig

torch.manual_seed(0)
kc, vc = torch.randn(3, 2, 256, 16), torch.randn(3, 2, 256, 16)
q = torch.randn(3, 1, 3, 2, 16).permute(2, 0, 3, 1, 4)[0]  # strided like the qkv projection's view
for pos in (0, 36, 63, 64, 127, 255):  # first slot, inside a block, block edges, last slot
    k, v = kc[:, :, : pos + 1], vc[:, :, : pos + 1]
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    for block_n in (16, 64):
        out = decode_attention(q, kc, vc, torch.tensor([pos]), block_n=block_n)  # offered the whole cache
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)

gen = tiny_generator(adaln=True)
cfg = dict(cfg_scale=2.0, seed=4)
sdpa = Sampler(gen, SamplingConfig(**cfg)).sample_tokens([0, 1, 2])
triton = Sampler(gen, SamplingConfig(**cfg, decode_kernel="triton"))
assert torch.equal(triton.sample_tokens([0, 1, 2]), sdpa)
assert triton.model.backbone.blocks[0].attn.decode_fn is decode_attention
assert gen.backbone.blocks[0].attn.decode_fn is None  # the caller's model is left as it was
print("ok")
