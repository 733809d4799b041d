"""Reconstruction metrics on images in [-1, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, images in [-1, 1] compared on the [0, 1] scale."""
    mse = ((x.float() - y.float()) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) with an 11x11 Gaussian window, on the [0, 1] scale, channels averaged."""
    with torch.autocast(x.device.type, enabled=False):  # E[x^2] - E[x]^2 cancels catastrophically in bf16
        return _ssim(x, y, window, sigma)


def _ssim(x: torch.Tensor, y: torch.Tensor, window: int, sigma: float) -> torch.Tensor:
    x, y = (x.float() + 1) / 2, (y.float() + 1) / 2
    c = x.shape[1]
    g = torch.exp(-((torch.arange(window, device=x.device) - window // 2) ** 2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window)
    blur = lambda t: F.conv2d(t, kernel, groups=c)
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 by round-to-nearest after clamping: the one float-to-uint8 rule visgen uses."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
