"""Next-scale schedule (VAR, Tian et al. 2024): one unit per scale, coarse to fine, full attention inside a scale.

The input for scale k is the running latent f_hat of scales < k, area-downsampled to scale k's side (VAR's
``next_token_map``), so training and sampling read the same function of the same token pyramid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visgen.schedules.base import Schedule


class NextScaleSchedule(Schedule):
    """Units are the scales of a multi-scale VQ tokenizer; tokens arrive as (B, sum(s^2)).

    Positions are 3-axis: (scale level, row, column), rows and columns in the finest grid's units so that a token
    sits where its patch is, at every scale.
    """

    input_kind = "features"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer  # referenced for its codebook and Phi: next_input needs f_hat
        self.scales = list(tokenizer.scales)
        self.unit_sizes = [s * s for s in self.scales]
        self.input_dim = tokenizer.codebook_dim
        side, pos = self.scales[-1], []
        for level, s in enumerate(self.scales):
            r, c = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
            step = side / s
            pos.append(
                torch.stack(
                    [torch.full((s * s,), float(level)), (r.flatten() + 0.5) * step, (c.flatten() + 0.5) * step], 1
                )
            )
        self.positions = torch.cat(pos)

    def to_sequence(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        return seq

    def next_input(self, units_so_far: list[torch.Tensor]) -> torch.Tensor:
        k = len(units_so_far)
        f_hat = self.tokenizer.f_hat(units_so_far)
        s = self.scales[k]
        x = F.interpolate(f_hat, size=(s, s), mode="area")
        return x.flatten(2).transpose(1, 2)  # (B, s*s, codebook_dim)
