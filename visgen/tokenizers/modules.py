"""Convolutional encoder and decoder shared by the VQ, multi-scale VQ and KL tokenizers (VQGAN, Esser et al. 2021,
without attention at these small resolutions), and the settings they share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that keeps a channels-last input channels-last. (PyTorch's CUDA kernel before 2.12 returns a
    channels-first tensor, so every convolution after it converts back: in a bf16 channels-last decoder these copies
    cost more than the convolutions.) Statistics in fp32, as the native kernel keeps them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        b, c, h, w = x.shape
        xg = x.permute(0, 2, 3, 1).reshape(b, h * w, self.num_groups, c // self.num_groups)  # a view
        var, mean = torch.var_mean(xg.float(), dim=(1, 3), keepdim=True, correction=0)
        scale = torch.rsqrt(var + self.eps) * self.weight.float().view(1, 1, self.num_groups, -1)  # (B, 1, G, C/G)
        shift = self.bias.float().view(1, 1, self.num_groups, -1) - mean * scale
        y = torch.addcmul(shift.to(x.dtype), xg, scale.to(x.dtype))
        return y.view(b, h, w, c).permute(0, 3, 1, 2)


def _norm(c: int) -> nn.GroupNorm:
    return GroupNorm(min(32, c // 4) if c >= 8 else 1, c, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.block = nn.Sequential(
            _norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            _norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
        )  # fmt: skip
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.block(x)


class Encoder(nn.Module):
    """Image (B, in_ch, H, W) -> features (B, out_ch, H / 2^(len(mult)-1), ...)."""

    def __init__(self, in_ch: int, ch: int, mult: tuple[int, ...], num_res_blocks: int, out_ch: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ch * mult[0], 3, padding=1)]
        c = ch * mult[0]
        for i, m in enumerate(mult):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(c, ch * m))
                c = ch * m
            if i < len(mult) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        layers += [ResBlock(c, c), _norm(c), nn.SiLU(), nn.Conv2d(c, out_ch, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """Latent (B, in_ch, h, w) -> image (B, out_ch, h * 2^(len(mult)-1), ...); mirrors ``Encoder``."""

    def __init__(self, in_ch: int, ch: int, mult: tuple[int, ...], num_res_blocks: int, out_ch: int):
        super().__init__()
        c = ch * mult[-1]
        layers: list[nn.Module] = [nn.Conv2d(in_ch, c, 3, padding=1), ResBlock(c, c)]
        for i, m in reversed(list(enumerate(mult))):
            for _ in range(num_res_blocks + 1):
                layers.append(ResBlock(c, ch * m))
                c = ch * m
            if i > 0:
                layers.append(Upsample(c))
        layers += [_norm(c), nn.SiLU(), nn.Conv2d(c, out_ch, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@dataclass
class ConvAEConfig:
    """The conv autoencoder of visgen's own tokenizers (each tokenizer's config adds its latent and codebook).

    in_channels: image channels (3 RGB, 1 grey).
    channels: base width of the conv encoder/decoder.
    channel_mult: width multiplier per resolution level; len - 1 downsamplings by 2 (``(1, 2, 2)``: 32 px -> 8x8).
    num_res_blocks: residual blocks per level.
    """

    in_channels: int = 3
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)  # a list from YAML / JSON; one form for comparisons

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def encoder(self, out_channels: int) -> Encoder:
        return Encoder(self.in_channels, self.channels, self.channel_mult, self.num_res_blocks, out_channels)

    def decoder(self, latent_channels: int) -> Decoder:
        return Decoder(latent_channels, self.channels, self.channel_mult, self.num_res_blocks, self.in_channels)
