"""Discretised mixture of logistics (PixelCNN++, Salimans et al. 2017, sec. 2.1-2.2): a whole pixel's C channels
from one feature, far fewer output parameters than C softmaxes over 256 values.

Each of K components has a logistic per channel; the channels are coupled by linear autoregressive means (sec. 2.2):
mu_G + a * R, mu_B + b * R + c * G, with R and G the pixel's actual values. A value's probability is the logistic's
mass over its bin of width 2 / (bins - 1) in [-1, 1], the edge bins taking the tails, so the 256^3 values of an RGB
pixel sum to one exactly (computed in log space without the reference code's density fallback).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visgen.config import ConfigError
from visgen.sampling.noise import CounterNoise

_MIN_LOG_SCALE = -7.0  # PixelCNN++'s floor on the logistics' log scales


def _log_bin_mass(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(a) - sigmoid(b)) for a > b, stable in both tails (computed on the side where it is small)."""
    upper = (a + b) > 0  # the bin lies in the upper tail: sigmoid(a) - sigmoid(b) = sigmoid(-b) - sigmoid(-a)
    hi, lo = torch.where(upper, -b, a), torch.where(upper, -a, b)
    ls_hi, ls_lo = F.logsigmoid(hi), F.logsigmoid(lo)
    return ls_hi + torch.log(-torch.expm1((ls_lo - ls_hi).clamp(max=-1e-12)))


class DMoLHead(nn.Module):
    """p(pixel | feature) for whole-pixel units: ``channels`` (1 or 3), ``mixtures`` K (PixelCNN++: 10), ``bins``
    values per channel (256: 8 bits)."""

    discrete = False  # whole pixels of integers, but no single categorical over them

    def __init__(self, d_model: int, channels: int, mixtures: int = 10, bins: int = 256):
        super().__init__()
        if channels not in (1, 3):
            raise ConfigError(f"the dmol head models 1 or 3 channels, got {channels}")
        if mixtures < 1 or bins < 2:
            raise ConfigError("head_options: mixtures must be at least 1 and bins at least 2")
        self.channels, self.mixtures, self.bins = channels, mixtures, bins
        n_coeffs = 3 if channels == 3 else 0
        self.proj = nn.Linear(d_model, mixtures * (1 + 2 * channels + n_coeffs))

    def params(self, h: torch.Tensor, cfg_scale=1.0, guided: bool = False):
        """(logits (..., K), means (..., K, C), log_scales (..., K, C), coeffs (..., K, 3) or None), fp32; guided:
        ``h`` holds conditional then unconditional rows and the raw outputs are guided as u + s (c - u)."""
        out = self.proj(h).float()
        if guided:
            c, u = out.chunk(2)
            out = u + torch.as_tensor(cfg_scale, device=out.device, dtype=out.dtype) * (c - u)
        K, C = self.mixtures, self.channels
        logits, rest = out[..., :K], out[..., K:].unflatten(-1, (K, -1))
        means, log_scales = rest[..., :C], rest[..., C : 2 * C].clamp_min(_MIN_LOG_SCALE)
        coeffs = torch.tanh(rest[..., 2 * C :]) if C == 3 else None
        return logits, means, log_scales, coeffs

    def _coupled_means(self, means, coeffs, x):
        """Each channel's means given the pixel's earlier channels ``x`` (..., C) in [-1, 1] (sec. 2.2)."""
        if coeffs is None:
            return means
        r, g = x[..., None, 0], x[..., None, 1]
        return torch.stack([means[..., 0], means[..., 1] + coeffs[..., 0] * r,
                            means[..., 2] + coeffs[..., 1] * r + coeffs[..., 2] * g], dim=-1)  # fmt: skip

    def log_prob(self, pixels: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """log P(pixel) in nats, (...,) for integer pixels (..., C) in [0, bins - 1] and features (..., D)."""
        logits, means, log_scales, coeffs = self.params(h)
        half = self.bins - 1
        x = pixels.float() / (half / 2) - 1  # bin centres in [-1, 1]
        centred = x[..., None, :] - self._coupled_means(means, coeffs, x)
        inv_s = torch.exp(-log_scales)
        plus, minus = inv_s * (centred + 1 / half), inv_s * (centred - 1 / half)
        first, last = pixels[..., None, :] == 0, pixels[..., None, :] == half
        log_mass = torch.where(first, F.logsigmoid(plus), torch.where(last, F.logsigmoid(-minus),
                                                                         _log_bin_mass(plus, minus)))  # fmt: skip
        return torch.logsumexp(F.log_softmax(logits, -1) + log_mass.sum(-1), -1)

    def loss(self, target_BLC: torch.Tensor, h_BLD: torch.Tensor, unit_sizes: list[int] | None = None) -> torch.Tensor:
        """Mean negative log-likelihood in nats per dimension (per sub-pixel: bits/dim is this / ln 2)."""
        return -self.log_prob(target_BLC, h_BLD).mean() / self.channels

    def sample(self, h: torch.Tensor, cfg_scale, noise: CounterNoise, step, guided: bool = False,
               temperature: float = 1.0, **_) -> torch.Tensor:  # fmt: skip
        """Pixels (B, n, C) of integers in [0, bins - 1]: a component by the Gumbel-max trick, then each channel's
        logistic in turn, rounded to its bin before the next channel's mean reads it (the model's own law: a
        logistic draw rounded to the nearest bin has exactly that bin's mass). Temperature scales the logistic
        noise; 0 takes the most likely component's means."""
        logits, means, log_scales, coeffs = self.params(h, cfg_scale, guided)
        n, K, C, half = logits.shape[1], self.mixtures, self.channels, self.bins - 1
        if temperature == 0:
            k = logits.argmax(-1)
        else:
            k = (logits + noise.gumbel(step, (n, K), stream=0)).argmax(-1)
        pick = lambda t: t.gather(-2, k[..., None, None].expand(*k.shape, 1, t.shape[-1]))[..., 0, :]
        means, log_scales = pick(means), pick(log_scales)
        coeffs = pick(coeffs) if coeffs is not None else None
        u = noise.uniform(step, (n, C), stream=1)
        logistic = (torch.log(u) - torch.log1p(-u)) * temperature
        values = torch.zeros_like(means)
        for c in range(C):  # channel c's mean reads the rounded earlier channels
            mu = means[..., c]
            if c == 1:
                mu = mu + coeffs[..., 0] * values[..., 0]
            elif c == 2:
                mu = mu + coeffs[..., 1] * values[..., 0] + coeffs[..., 2] * values[..., 1]
            level = ((mu + torch.exp(log_scales[..., c]) * logistic[..., c]).clamp(-1, 1) + 1) * (half / 2)
            values[..., c] = level.round() / (half / 2) - 1
        return ((values + 1) * (half / 2)).round().long()
