"""Pixel schedule: sub-pixels (or whole pixels) in raster order, as PixelCNN orders them.

``unit="subpixel"``: one 8-bit sub-pixel per unit, rows then columns with the channels of a pixel in turn (R, then
G given R, then B given R and G; van den Oord et al. 2016, sec. 3.1): H x W x C units, each reading the sub-pixel
before it as a token, positions (row, column, channel) for 3-axis RoPE. ``unit="pixel"``: one whole pixel per unit,
its channels predicted jointly by the head (the discretised logistic mixture, whose means couple the channels):
H x W units, each reading the pixel before it as C values in [-1, 1], a third of the steps.
"""

from __future__ import annotations

import torch

from visgen.schedules.base import Schedule

PIXEL_UNITS = ("subpixel", "pixel")


class PixelSchedule(Schedule):
    """Tokens (B, C, H, W) in [0, 255] <-> the sequence (B, H * W * C) of sub-pixels, or (B, H * W, C) of pixels."""

    def __init__(self, size: int, channels: int, unit: str = "subpixel"):
        self.size, self.channels, self.unit = size, channels, unit
        rows, cols, chans = torch.meshgrid(
            torch.arange(size), torch.arange(size), torch.arange(channels if unit == "subpixel" else 1), indexing="ij"
        )
        self.positions = torch.stack([rows.flatten(), cols.flatten(), chans.flatten()], dim=1)
        self.unit_sizes = [1] * len(self.positions)
        if unit == "pixel":
            self.input_kind, self.input_dim = "features", channels

    def to_sequence(self, tokens: torch.Tensor) -> torch.Tensor:
        seq = tokens.permute(0, 2, 3, 1)  # (B, H, W, C): a pixel's channels next to each other
        return seq.flatten(1) if self.unit == "subpixel" else seq.flatten(1, 2)

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        s, c = self.size, self.channels
        return seq.reshape(len(seq), s, s, c).permute(0, 3, 1, 2)

    def _inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        # a whole pixel is read as its values in [-1, 1] (the tokenizer's decoding), through a linear embedding
        return tokens if self.unit == "subpixel" else tokens.float() / 127.5 - 1

    def next_input(self, units_so_far: list[torch.Tensor]) -> torch.Tensor:
        return self._inputs(units_so_far[-1])

    def teacher_inputs(self, seq: torch.Tensor) -> torch.Tensor:
        return self._inputs(seq[:, :-1])
