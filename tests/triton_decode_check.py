"""Run under TRITON_INTERPRET=1 (tests/test_engine.py does): the Triton decoding-attention kernel on CPU tensors
equals masked SDPA, and a sampler that decodes through it gives the SDPA sampler's tokens."""

import torch

from tests.test_engine import tiny_generator
from visgen.nn.decode_attention import decode_attention
from visgen.sampling import Sampler, SamplingConfig

torch.manual_seed(0)
kc, vc = torch.randn(3, 2, 256, 16), torch.randn(3, 2, 256, 16)
q = torch.randn(3, 1, 3, 2, 16).permute(2, 0, 3, 1, 4)[0]  # strided like the qkv projection's view
for kv_len, visible in ((64, 37), (128, 128), (192, 70)):
    k, v = kc[:, :, :kv_len], vc[:, :, :kv_len]
    mask = torch.arange(kv_len)[None, :] < visible
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(decode_attention(q, k, v, mask), ref, atol=1e-5, rtol=1e-5)

gen = tiny_generator(adaln=True)
cfg = dict(cfg_scale=2.0, seed=4)
sdpa = Sampler(gen, SamplingConfig(**cfg)).sample_tokens([0, 1, 2])
triton = Sampler(gen, SamplingConfig(**cfg, decode_kernel="triton"))
assert torch.equal(triton.sample_tokens([0, 1, 2]), sdpa)
assert triton.model.backbone.blocks[0].attn.decode_fn is decode_attention
assert gen.backbone.blocks[0].attn.decode_fn is None  # the caller's model is left as it was
print("ok")
