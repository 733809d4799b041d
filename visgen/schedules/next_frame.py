"""Next-frame schedule (frame-level AR, FAR: Gu et al. 2025): one unit = every token of one video frame.

Frames are encoded one by one by an image tokenizer (continuous latents (B, T, C, h, w)); attention is block-causal
across frames and full inside a frame, positions are (time, row, column) for 3-axis RoPE, and the input for frame t
is frame t - 1's latent (the same function in training and sampling). A flow head over a whole frame predicts it.
"""

from __future__ import annotations

import torch

from visgen.schedules.base import Schedule


class NextFrameSchedule(Schedule):
    """Latents (B, T, C, h, w) <-> the sequence (B, T * h * w, C), frame after frame, each frame row-major."""

    input_kind = "features"

    def __init__(self, frames: int, grid: tuple[int, int], channels: int):
        self.frames, self.grid, self.input_dim = frames, tuple(grid), channels
        h, w = self.grid
        self.unit_sizes = [h * w] * frames
        t, r, c = torch.meshgrid(torch.arange(frames), torch.arange(h), torch.arange(w), indexing="ij")
        self.positions = torch.stack([t.flatten(), r.flatten(), c.flatten()], dim=1)

    def to_sequence(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.permute(0, 1, 3, 4, 2).flatten(1, 3)  # (B, T, h, w, C) -> (B, T h w, C)

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        return seq.unflatten(1, (self.frames, h, w)).permute(0, 1, 4, 2, 3)

    def next_input(self, units_so_far: list[torch.Tensor]) -> torch.Tensor:
        return units_so_far[-1]

    def teacher_inputs(self, seq: torch.Tensor) -> torch.Tensor:
        return seq[:, : -self.unit_sizes[0]]
