"""Categorical head: softmax over a codebook, with temperature, top-k and top-p (nucleus) sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visgen.sampling.noise import CounterNoise


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / the smallest set with probability >= top_p (Holtzman et al. 2020) to -inf.

    Both cut at a logit value, so ties with the last kept logit are kept too. Top-p after top-k sorts only the k
    kept logits (``topk`` gives them sorted), not the whole vocabulary: VAR samples 174k rows of 4096 per batch."""
    k = top_k if 0 < top_k < logits.shape[-1] else 0
    if top_p < 1.0:
        vals = torch.topk(logits, k, dim=-1).values if k else logits.sort(dim=-1, descending=True).values
        probs = vals.softmax(-1)
        kept = (probs.cumsum(-1) - probs <= top_p).sum(-1, keepdim=True)  # each token whose predecessors' mass <= p
        return logits.masked_fill(logits < vals.gather(-1, kept - 1), float("-inf"))
    if k:
        return logits.masked_fill(logits < torch.topk(logits, k, dim=-1).values[..., -1:], float("-inf"))
    return logits


class CategoricalHead(nn.Module):
    """Linear map from features to logits over ``vocab_size`` tokens."""

    discrete = True

    def __init__(self, d_model: int, vocab_size: int):
        super().__init__()
        self.proj = nn.Linear(d_model, vocab_size)
        nn.init.zeros_(self.proj.weight)  # start from the uniform distribution
        nn.init.zeros_(self.proj.bias)

    def logits(self, h_BLD: torch.Tensor) -> torch.Tensor:
        return self.proj(h_BLD).float()

    def loss(self, target_BL: torch.Tensor, h_BLD: torch.Tensor, unit_sizes: list[int] | None = None) -> torch.Tensor:
        """Mean cross-entropy in nats per token (every token weighs the same, whatever its unit)."""
        return F.cross_entropy(self.logits(h_BLD).flatten(0, 1), target_BL.flatten())

    def guided_logits(self, h, cfg_scale, guided: bool = False) -> torch.Tensor:
        """Logits, guided when ``guided``: then ``h`` holds the conditional rows followed by as many unconditional
        ones (one matmul for both), and the logits are u + s (c - u) (LlamaGen, sec. 3.3), for the first half."""
        logits = self.logits(h)
        if not guided:
            return logits
        c, u = logits.chunk(2)
        return u + cfg_scale * (c - u)

    def probs(self, h, cfg_scale, guided: bool = False, temperature: float = 1.0, top_k: int = 0,
              top_p: float = 1.0) -> torch.Tensor:  # fmt: skip
        """The distribution ``sample`` draws from, (B, n, V) fp32: guided, filtered, softmax(logits / T); one-hot
        on the argmax at temperature 0. Speculative decoding compares two models' distributions through it."""
        logits = filter_logits(self.guided_logits(h, cfg_scale, guided), top_k, top_p)
        if temperature == 0:
            return F.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        return (logits / temperature).softmax(-1)

    def sample(
        self,
        h: torch.Tensor,
        cfg_scale,
        noise: CounterNoise,
        step,
        guided: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> torch.Tensor:
        """Tokens (B, n) from features ``h`` (B, n, D), or (2B, n, D) when ``guided`` (conditional rows, then
        unconditional), by the Gumbel-max trick: argmax(logits / T + g) samples softmax(logits / T) exactly."""
        logits = filter_logits(self.guided_logits(h, cfg_scale, guided), top_k, top_p)
        if temperature == 0:
            return logits.argmax(-1)
        return (logits / temperature + noise.gumbel(step, logits.shape[1:])).argmax(-1)
