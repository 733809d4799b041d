"""Raster-order token schedule (LlamaGen, Sun et al. 2024): one token per unit, row by row."""

from __future__ import annotations

import torch

from visgen.schedules.base import Schedule


class RasterSchedule(Schedule):
    """Tokens (B, h, w) [or latents (B, C, h, w)] read row-major; the input for token i is token i - 1.

    With ``unit_size`` k > 1, k consecutive tokens form a unit predicted in one step: the inputs at unit j's
    positions are unit j - 1's tokens (token i reads token i - k), and attention is block-causal, so every token of
    unit j sees exactly the tokens before the unit. Positions are 2-D (row, column) of the token being predicted,
    for 2-axis RoPE.
    """

    input_is_previous_unit = True

    def __init__(self, grid: tuple[int, int], continuous: bool = False, channels: int = 0, unit_size: int = 1):
        self.grid, self.continuous, self.unit_size = tuple(grid), continuous, unit_size
        h, w = self.grid
        self.unit_sizes = [unit_size] * (h * w // unit_size)
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        self.positions = torch.stack([rows.flatten(), cols.flatten()], dim=1)
        if continuous:
            self.input_kind, self.input_dim = "features", channels

    def to_sequence(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.continuous:  # (B, C, h, w) -> (B, L, C)
            return tokens.flatten(2).transpose(1, 2)
        return tokens.flatten(1)

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        if self.continuous:
            return seq.transpose(1, 2).unflatten(2, (h, w))
        return seq.unflatten(1, (h, w))

    def next_input(self, units_so_far: list[torch.Tensor]) -> torch.Tensor:
        return units_so_far[-1]

    def teacher_inputs(self, seq: torch.Tensor) -> torch.Tensor:
        return seq[:, : -self.unit_size]  # the vectorised form of next_input over all units
