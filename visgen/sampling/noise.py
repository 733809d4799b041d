"""Counter-based randomness: every random number is a hash of (seed, sample index, step, element).

A sample's noise therefore depends only on the seed and its own index, never on the batch it was drawn in, the
batch size or the number of processes; and drawing it is a handful of element-wise ops with no generator state,
so it runs inside a CUDA graph.
"""

from __future__ import annotations

import math

import torch

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # low 32 bits of x * c for 32-bit x and c, without int64 overflow: split c into 16-bit halves
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _mix(x: torch.Tensor) -> torch.Tensor:
    # "lowbias32" integer hash (C. Wellons, hash-prospector)
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


class CounterNoise:
    """Noise for a batch of samples with global indices ``sample_ids`` (B,) under ``seed``; ``step`` in the draws
    is an int, a scalar tensor or a (B,) tensor (a step per sample)."""

    def __init__(self, seed: int, sample_ids: torch.Tensor):
        self.key = _mix(_mix(torch.full_like(sample_ids, seed & _M32, dtype=torch.int64)) ^ (sample_ids.long() & _M32))

    def repeat(self, n: int) -> CounterNoise:
        """Noise for ``n`` rows per sample (B * n rows, each sample's in turn): a row draws what its sample draws
        at the row's own step, so a unit's tokens decoded at once and one at a time see the same noise."""
        out = CounterNoise.__new__(CounterNoise)
        out.key = self.key.repeat_interleave(n)
        return out

    def _bits(self, step: torch.Tensor | int, shape: tuple[int, ...], stream: int) -> torch.Tensor:
        key = self.key
        step = torch.as_tensor(step, device=key.device).long()
        key = _mix(key ^ ((step * 0x9E37 + stream) & _M32))  # per step and per use within a step
        idx = torch.arange(math.prod(shape), device=key.device, dtype=torch.int64).view(shape)
        return _mix(key.view(-1, *([1] * len(shape))) ^ idx)

    def uniform(self, step, shape: tuple[int, ...], stream: int = 0) -> torch.Tensor:
        """(B, *shape) uniform in (0, 1), float32."""
        return ((self._bits(step, shape, stream) >> 8).float() + 0.5) / 2**24

    def gumbel(self, step, shape: tuple[int, ...], stream: int = 0) -> torch.Tensor:
        return -torch.log(-torch.log(self.uniform(step, shape, stream)))

    def normal(self, step, shape: tuple[int, ...], stream: int = 0) -> torch.Tensor:
        """(B, *shape) standard normal by Box-Muller."""
        u1, u2 = self.uniform(step, shape, 2 * stream + 1), self.uniform(step, shape, 2 * stream + 2)
        return torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)
