"""Flow-matching head (FlowAR, Ren et al. 2024): a small transformer over all tokens of the current unit,
conditioned token by token on the backbone's features (spatial AdaLN), trained on the linear path
x_t = (1 - t) x + t e with velocity target e - x, and sampled with Euler steps from noise (t = 1) to data (t = 0)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from visgen.config import ConfigError
from visgen.sampling.noise import CounterNoise


def timestep_embedding(t_B: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000 as in DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t_B.device).float() / half)
    angles = 1000 * t_B.float()[:, None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


SOLVERS = ("euler", "heun")


class FlowSteps:
    """What the flow heads share: how a head integrates its velocity from noise (t = 1) to data (t = 0) when
    sampling, over ``steps`` equal steps: ``euler`` (one velocity a step) or ``heun`` (Heun's second-order method:
    an Euler step, the velocity where it lands, and the step again with the mean of the two; two velocities a step).
    On the video recipe's model Heun at 13 steps drew motion as close to the data's as Euler at 100, at the cost of
    Euler at 26 (``results/moving-fmnist-video-head-steps-cpu.json``)."""

    steps: int
    solver: str = "euler"

    def set_sampling_steps(self, steps: int, what: str = "head steps"):
        """Sample with ``steps`` steps instead of the recipe's (fewer: faster, coarser)."""
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"{what} must be at least 1, got {steps}")
        self.steps = steps

    def set_solver(self, solver: str, what: str = "head solver"):
        """Sample with ``solver`` (``euler`` or ``heun``) instead of the recipe's."""
        if solver not in SOLVERS:
            raise ConfigError(f"{what} must be one of {', '.join(SOLVERS)}, got {solver!r}")
        self.solver = solver

    def times(self, device) -> torch.Tensor:
        """The ``steps + 1`` times the solver visits, from 1 down to 0 (fp32)."""
        return 1 - torch.arange(self.steps + 1, device=device, dtype=torch.float32) / self.steps

    def integrate(self, x: torch.Tensor, velocity) -> torch.Tensor:
        """``x`` (noise at t = 1) carried to t = 0 by the solver; ``velocity(x, i)`` is the velocity at the ``i``-th
        of ``times()``."""
        for i in range(self.steps):
            v = velocity(x, i)
            if self.solver == "heun":
                v = (v + velocity(x - v / self.steps, i + 1)) / 2
            x = x - v / self.steps
        return x


class _AdaBlock(nn.Module):
    """Self-attention + MLP over the unit's tokens, each token modulated by its own condition (spatial AdaLN)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        B, n, w = x.shape
        h = self.norm1(x) * (1 + sc1) + sh1
        q, k, v = self.qkv(h).view(B, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        x = x + (1 + g1) * self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, n, w))
        return x + (1 + g2) * self.mlp(self.norm2(x) * (1 + sc2) + sh2)


class FlowHead(FlowSteps, nn.Module):
    """Velocity model v(x_t, t | features) over one unit; see the module docstring.

    d_model: backbone width; channels: latent channels per token; width, depth, heads: the head's transformer;
    steps, solver: the sampling steps and how each is taken (``FlowSteps``); cfg_interval: the part of the time axis
    (in t, 1 = noise) where guidance acts on the velocity (Kynkaanniemi et al. 2024); outside it the conditional
    velocity is used.
    """

    discrete = False

    def __init__(self, d_model: int, channels: int, width: int = 128, depth: int = 2, heads: int = 4, steps: int = 25,
                 cfg_interval: tuple[float, float] = (0.0, 1.0), solver: str = "euler"):  # fmt: skip
        super().__init__()
        self.set_sampling_steps(steps, "head_options.steps")
        self.set_solver(solver, "head_options.solver")
        self.channels, self.width, self.cfg_interval = channels, width, cfg_interval
        self.x_in, self.c_in = nn.Linear(channels, width), nn.Linear(d_model, width)
        self.t_in = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(_AdaBlock(width, heads) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, channels))

    def velocity(self, x_BnC: torch.Tensor, t_B: torch.Tensor, h_BnD: torch.Tensor) -> torch.Tensor:
        c = self.c_in(h_BnD) + self.t_in(timestep_embedding(t_B, self.width).to(h_BnD.dtype))[:, None]
        x = self.x_in(x_BnC)
        for block in self.blocks:
            x = block(x, c)
        return self.out(x)

    def unit_loss(self, target_BnC: torch.Tensor, h_BnD: torch.Tensor) -> torch.Tensor:
        """Mean squared velocity error of one unit (one t per sample, shared by the unit's tokens)."""
        x = target_BnC.float()
        t = torch.rand(x.shape[0], device=x.device)
        e = torch.randn_like(x)
        x_t = (1 - t[:, None, None]) * x + t[:, None, None] * e
        v = self.velocity(x_t.to(h_BnD.dtype), t, h_BnD).float()
        return F.mse_loss(v, e - x)

    def loss(self, target_BLC: torch.Tensor, h_BLD: torch.Tensor, unit_sizes: list[int]) -> torch.Tensor:
        """Loss over all units, each weighted by its token count (FlowAR weights scales by size)."""
        total = sum(unit_sizes)
        parts = zip(target_BLC.split(unit_sizes, 1), h_BLD.split(unit_sizes, 1), unit_sizes)
        return sum(self.unit_loss(x, h) * (n / total) for x, h, n in parts)

    def sample(self, h: torch.Tensor, cfg_scale, noise: CounterNoise, step, guided: bool = False,
               temperature: float = 1.0, **_) -> torch.Tensor:  # fmt: skip
        """The (guided) velocity integrated from t = 1 to t = 0 by the head's solver, from noise keyed by (sample,
        unit) and scaled by ``temperature`` (as the per-token flow head's). ``h`` (B, n, D), or (2B, n, D) when
        ``guided``: conditional rows, then unconditional."""
        B, n, _ = h.shape
        B = B // 2 if guided else B
        h_cond = h[:B]
        lo, hi = self.cfg_interval
        times = [1 - i / self.steps for i in range(self.steps + 1)]  # Python floats: the guidance interval's side

        def velocity(x, i):
            t_val = times[i]
            if guided and lo <= t_val <= hi:  # conditional and unconditional velocity in one pass
                v, vu = self.velocity(torch.cat([x, x]), torch.full((2 * B,), t_val, device=x.device), h).chunk(2)
                return vu + cfg_scale.to(v.dtype) * (v - vu)
            return self.velocity(x, torch.full((B,), t_val, device=x.device), h_cond)

        return self.integrate((noise.normal(step, (n, self.channels), stream=0) * temperature).to(h.dtype), velocity)
