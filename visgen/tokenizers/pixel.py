"""The pixel tokenizer: each 8-bit sub-pixel is a token (vocabulary 256), decoding is the exact inverse.

Pixel-level AR models (PixelCNN, van den Oord et al. 2016; PixelCNN++, Salimans et al. 2017; Image Transformer,
Parmar et al. 2018; Sparse Transformer, Child et al. 2019) model the image itself: no training, no reconstruction
error, and an exact likelihood in bits per dimension. Images in [-1, 1] map to round((x + 1) * 127.5), the inverse
of how every visgen image is written as uint8, so a data set's images round-trip exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from visgen.checkpoint import register_model
from visgen.config import ConfigError
from visgen.tokenizers.base import Tokenizer


@dataclass
class PixelConfig:
    """channels: 3 (RGB) or 1 (grey); image_size: the side of the images it reads (checked)."""

    channels: int = 3
    image_size: int = 32

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ConfigError(f"the pixel tokenizer reads 1 (grey) or 3 (RGB) channels, got {self.channels}")
        if self.image_size < 1:
            raise ConfigError(f"the pixel tokenizer's image_size must be at least 1, got {self.image_size}")


def pixel_tokenizer_ref(ref: str) -> int | None:
    """The channel count a generator's ``tokenizer: pixel`` / ``pixel:rgb`` / ``pixel:grey`` reference names, else
    None (the reference is a folder)."""
    names = {"pixel": 3, "pixel:rgb": 3, "pixel:grey": 1, "pixel:gray": 1}
    if ref.startswith("pixel:") and ref not in names:
        raise ConfigError(f"unknown pixel tokenizer {ref!r}; use pixel (RGB), pixel:rgb or pixel:grey")
    return names.get(ref)


@register_model("pixel")
class PixelTokenizer(Tokenizer):
    """Sub-pixels as tokens: ``encode`` (B, C, H, W) in [-1, 1] -> (B, C, H, W) integers in [0, 255]."""

    config_class = PixelConfig
    vocab_size = 256

    def __init__(self, config: PixelConfig):
        super().__init__()
        self.config = config
        self.image_channels = config.channels

    def _check(self, images: torch.Tensor):
        c, s = self.config.channels, self.config.image_size
        if images.dim() != 4 or images.shape[1:] != (c, s, s):
            got = " x ".join(map(str, images.shape[1:])) if images.dim() == 4 else f"shape {tuple(images.shape)}"
            raise ConfigError(
                f"the pixel tokenizer reads {c} x {s} x {s} images ({'grey' if c == 1 else 'RGB'}, side {s}: "
                f"model.tokenizer and model.image_size), got {got}; set data.channels / data.image_size to match, "
                "or the recipe to the data"
            )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check(images)
        return ((images.float().clamp(-1, 1) + 1) * 127.5).round().long()

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.float() / 127.5 - 1

    def grid_shape(self, image_size: int) -> tuple[int, int]:
        if image_size != self.config.image_size:
            raise ConfigError(
                f"the pixel tokenizer was set up for side {self.config.image_size}, the model for {image_size}"
            )
        return image_size, image_size

    def training_losses(self, images: torch.Tensor):
        raise ConfigError("the pixel tokenizer has nothing to train (its decoding is the exact inverse)")
