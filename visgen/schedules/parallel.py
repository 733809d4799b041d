"""Parallel schedule (PAR, Wang et al. 2024, "Parallelized Autoregressive Visual Generation", arXiv 2412.15119):
several distant tokens a step.

The grid is cut into ``regions`` equal rectangles (4 is 2 x 2, 8 is 2 x 4). Each region is read in
raster order, so position j of every region makes *group j*. Generation first draws group 0 token by token (the
first token of each region, one step each: they fix the image's layout, and PAR finds they must be sequential), then
one whole group per step: the tokens at the same place in every region, far apart and so weakly dependent (PAR and
NAR, arXiv 2503.10696, both find that drawing *adjacent* tokens together hurts). 64 tokens in k regions take
k + 64 / k - 1 steps instead of 64: 19 for k = 4 or 16, 15 for k = 8.

The input at each slot of group j >= 1 is its own region's token of group j - 1 (group 0's tokens feed group 1 in
the same way, so every parallel step reads the same kind of input); attention is block-causal over units, so a slot
sees all of the previous groups (PAR's group-wise full attention). PAR instead feeds group 1 the last initial token
and learned transition tokens [M1 .. M(k-1)]; here every slot already reads its region's previous token and knows
where it is by its RoPE coordinates (row and column of the token it predicts), so no learned tokens are needed.
"""

from __future__ import annotations

import math

import torch

from visgen.config import ConfigError
from visgen.schedules.base import Schedule


def region_layout(grid: tuple[int, int], regions: int) -> tuple[int, int]:
    """(regions down, regions across) cutting ``grid`` into ``regions`` equal rectangles, the most nearly square
    ones where there is a choice (8 on 8 x 8: 2 x 4 regions of 4 x 2 tokens), or a ConfigError."""
    h, w = grid
    fits = [(r, regions // r) for r in range(1, regions + 1)
            if regions % r == 0 and h % r == 0 and w % (regions // r) == 0]  # fmt: skip
    if not fits or regions >= h * w:
        raise ConfigError(
            f"model.regions must cut the {h} x {w} token grid into equal rectangles of more than one token (a "
            f"product of a divisor of {h} and a divisor of {w}, below {h * w}); got {regions}"
        )
    return min(fits, key=lambda rc: abs(math.log((h / rc[0]) / (w / rc[1]))))


class ParallelSchedule(Schedule):
    """Tokens (B, h, w) [or latents (B, C, h, w)] in PAR order: group 0 one token a unit, then one group a unit."""

    def __init__(self, grid: tuple[int, int], regions: int = 4, continuous: bool = False, channels: int = 0):
        self.grid, self.regions, self.continuous = tuple(grid), regions, continuous
        rows, cols = region_layout(self.grid, regions)
        h, w = self.grid
        rh, rw = h // rows, w // cols
        # order[i]: the raster index of the i-th token generated; group j holds place j of every region
        r, c = torch.meshgrid(torch.arange(rh), torch.arange(rw), indexing="ij")  # place within a region
        R, C = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")  # which region
        row = R.flatten()[None, :] * rh + r.flatten()[:, None]  # (places, regions)
        col = C.flatten()[None, :] * rw + c.flatten()[:, None]
        self.order = (row * w + col).flatten()
        self.inverse = torch.argsort(self.order)
        self.unit_sizes = [1] * regions + [regions] * (rh * rw - 1)
        self.positions = torch.stack([row.flatten(), col.flatten()], dim=1)
        if continuous:
            self.input_kind, self.input_dim = "features", channels

    def to_sequence(self, tokens: torch.Tensor) -> torch.Tensor:
        flat = tokens.flatten(2).transpose(1, 2) if self.continuous else tokens.flatten(1)  # raster order
        return flat[:, self.order.to(flat.device)]

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        flat = seq[:, self.inverse.to(seq.device)]
        return flat.transpose(1, 2).unflatten(2, (h, w)) if self.continuous else flat.unflatten(1, (h, w))

    def next_input(self, units_so_far: list[torch.Tensor]) -> torch.Tensor:
        if len(units_so_far) == self.regions:  # the first group step reads all of group 0
            return torch.cat(units_so_far, dim=1)
        return units_so_far[-1]

    def teacher_inputs(self, seq: torch.Tensor) -> torch.Tensor:
        k = self.regions  # group 0's first k - 1 tokens one by one, then each group from the one before
        return torch.cat([seq[:, : k - 1], seq[:, :-k]], dim=1)
