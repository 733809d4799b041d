"""Next-scale schedule (VAR, Tian et al. 2024): one unit per scale, coarse to fine, full attention inside a scale.

The input for scale k is the running latent f_hat of scales < k, area-downsampled to scale k's side (VAR's
``next_token_map``), so training and sampling read the same function of the same token pyramid.
"""

from __future__ import annotations

import torch

from visgen.nn.resize import resize
from visgen.schedules.base import Schedule


def scale_positions(scales: list[int]) -> torch.Tensor:
    """(L, 3) positions (scale level, row, column), rows and columns in the finest grid's units, so that a token
    sits where its patch is at every scale."""
    side, pos = scales[-1], []
    for level, s in enumerate(scales):
        r, c = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        step = side / s
        level_col = torch.full((s * s,), float(level))
        pos.append(torch.stack([level_col, (r.flatten() + 0.5) * step, (c.flatten() + 0.5) * step], 1))
    return torch.cat(pos)


class NextScaleSchedule(Schedule):
    """Units are the scales of a multi-scale VQ tokenizer; tokens arrive as (B, sum(s^2)).

    Positions: ``scale_positions``. The same class is the ``next_frequency`` schedule (NFIG) over a frequency-band
    tokenizer: its bands' grids are the scales, and the input for band k is the reconstruction from bands < k,
    resampled to band k's grid.
    """

    input_kind = "features"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer  # referenced for its codebook and Phi: next_input needs f_hat
        self.scales = list(tokenizer.scales)
        self.unit_sizes = [s * s for s in self.scales]
        self.input_dim = tokenizer.codebook_dim
        self.positions = scale_positions(self.scales)

    def to_sequence(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        return seq

    def next_input(self, units_so_far: list[torch.Tensor]) -> torch.Tensor:
        return self._read(self.tokenizer.f_hat(units_so_far), len(units_so_far))

    def step_input(self, f_hat, units_so_far: list[torch.Tensor]):
        """The running f_hat plus the newest scale (the sum ``tokenizer.f_hat`` takes, in the same order)."""
        k = len(units_so_far) - 1
        add = self.tokenizer.upsampled(k, units_so_far[-1].reshape(-1, self.scales[k], self.scales[k]), self.scales[-1])
        f_hat = add if f_hat is None else f_hat + add
        return self._read(f_hat, k + 1), f_hat

    def _read(self, f_hat: torch.Tensor, k: int) -> torch.Tensor:
        s = self.scales[k]
        x = resize(f_hat, s, self.tokenizer.down_mode)  # as the tokenizer read this scale's residual
        return x.flatten(2).transpose(1, 2)  # (B, s*s, codebook_dim)


class ContinuousScaleSchedule(Schedule):
    """FlowAR's scales (Ren et al. 2024): the continuous latent area-downsampled to each scale (sides that double,
    e.g. 1, 2, 4, 8); the input for scale k is scale k - 1 upsampled to scale k's side."""

    input_kind = "features"

    def __init__(self, grid: tuple[int, int], channels: int, scales: list[int]):
        if grid[0] != grid[1] or scales[-1] != grid[0]:
            raise ValueError(f"the last scale {scales[-1]} must equal the (square) latent side {grid}")
        self.scales, self.input_dim = list(scales), channels
        self.unit_sizes = [s * s for s in self.scales]
        self.positions = scale_positions(self.scales)

    def to_sequence(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, L, C), every scale of the pyramid in turn."""
        maps = [resize(latents, s, "area") for s in self.scales]
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        s = self.scales[-1]
        return seq[:, -s * s :].transpose(1, 2).unflatten(2, (s, s))

    def next_input(self, units_so_far: list[torch.Tensor]) -> torch.Tensor:
        prev, k = units_so_far[-1], len(units_so_far)
        p, s = self.scales[k - 1], self.scales[k]
        grid = prev.transpose(1, 2).unflatten(2, (p, p))
        return resize(grid, s, "bilinear").flatten(2).transpose(1, 2)
