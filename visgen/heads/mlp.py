"""The per-token denoiser MLP of MAR (Li et al. 2024, "Autoregressive Image Generation without Vector
Quantization", sec. 3 and appendix): residual blocks with AdaLN, conditioned on the backbone's feature for the token
and on the noise level. Shared by the diffusion head and the per-token flow-matching head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_features(t_N: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of a (possibly fractional) timestep, as DiT / MAR embed it before their MLP."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t_N.device, dtype=torch.float32) / half)
    angles = t_N.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class _ResBlock(nn.Module):
    """x + gate * MLP(LN(x) * (1 + scale) + shift), the modulation from the condition (zero at start)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Linear(width, 3 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """``mod``: this block's ``ada(c)`` (the denoiser computes every block's in one matrix product)."""
        shift, scale, gate = mod.chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class MLPDenoiser(nn.Module):
    """f(x_t, t | z): token-wise MLP of ``depth`` AdaLN residual blocks of ``width``; ``out_channels`` outputs.

    channels: the token's latent channels (input); cond_dim: the backbone's feature width; time_scale: multiplies t
    before its sinusoidal features (1 for integer diffusion steps, 1000 for flow times in [0, 1]).
    """

    def __init__(self, channels: int, cond_dim: int, width: int, depth: int, out_channels: int,
                 time_scale: float = 1.0):  # fmt: skip
        super().__init__()
        self.time_scale = time_scale
        self.x_in = nn.Linear(channels, width)
        self.t_in = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.c_in = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(_ResBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, out_channels)
        for layer in (self.final_ada, self.out):  # the output starts at zero, as MAR's
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def embed_time(self, t_N: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.t_in(timestep_features(t_N * self.time_scale).to(dtype))

    def forward(self, x_NC: torch.Tensor, t_N: torch.Tensor, z_ND: torch.Tensor) -> torch.Tensor:
        return self.trunk(x_NC, F.silu(self.embed_time(t_N, z_ND.dtype) + self.c_in(z_ND)))

    def modulation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of every block's AdaLN linear and the final one stacked: they all read the same condition,
        so one matrix product of width (3 * depth + 2) * width replaces depth + 1 narrow ones (at sampling's few
        hundred rows a step, the narrow products are launch- and tile-bound). A sampler stacks them once per unit."""
        layers = [b.ada for b in self.blocks] + [self.final_ada]
        return torch.cat([m.weight for m in layers]), torch.cat([m.bias for m in layers])

    def prepare(self, h_ND: torch.Tensor, times_S: torch.Tensor):
        """What a sampler's denoising steps over one unit share, computed once: ``c_in`` of the features ``h``, the
        time embeddings of every step's time (S, width) and the stacked AdaLN weights; ``step`` takes it."""
        zc = self.c_in(h_ND.reshape(-1, h_ND.shape[-1]))
        return zc, self.embed_time(times_S, zc.dtype), self.modulation()

    def step(self, x_NC: torch.Tensor, shared, i) -> torch.Tensor:
        """The output (fp32) for states ``x`` at step ``i`` (an index into the times given to ``prepare``)."""
        zc, temb, modulation = shared
        return self.trunk(x_NC.to(zc.dtype), F.silu(zc + temb[i]), modulation).float()

    def trunk(self, x_NC: torch.Tensor, c_NW: torch.Tensor, modulation=None) -> torch.Tensor:
        """The blocks given the condition c = silu(embed_time(t) + c_in(z)); a sampler computes ``c_in(z)`` once
        per token, the time embeddings once per unit, and passes ``modulation()`` stacked once per unit."""
        weight, bias = modulation if modulation is not None else self.modulation()
        W = self.x_in.out_features
        *mods, final = F.linear(c_NW, weight.to(c_NW.dtype), bias.to(c_NW.dtype)).split(
            [3 * W] * len(self.blocks) + [2 * W], dim=-1
        )
        x = self.x_in(x_NC)
        for block, mod in zip(self.blocks, mods):
            x = block(x, mod)
        shift, scale = final.chunk(2, dim=-1)
        return self.out(self.final_norm(x) * (1 + scale) + shift)
