"""Per-token flow-matching head: MAR's denoiser MLP (``visgen.heads.mlp``) trained as a velocity model on the linear
path x_t = (1 - t) x + t e with target e - x (as the FlowAR head, but token by token), and sampled from noise (t = 1)
to data (t = 0) by Euler or Heun steps (``FlowSteps``). The same trunk as ``DiffusionHead``, so the two compare on
one backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visgen.config import ConfigError
from visgen.heads.flow import FlowSteps
from visgen.heads.mlp import MLPDenoiser
from visgen.sampling.noise import CounterNoise


class FlowMLPHead(FlowSteps, nn.Module):
    """v(x_t, t | z) for each token's latent; see the module docstring.

    width, depth: the MLP; steps, solver: the sampling steps (25) and how each is taken (``FlowSteps``); batch_mul:
    (t, noise) draws per token per training step (4, as the diffusion head's).
    """

    discrete = False

    def __init__(self, d_model: int, channels: int, width: int = 1024, depth: int = 6, steps: int = 25,
                 batch_mul: int = 4, solver: str = "euler"):  # fmt: skip
        super().__init__()
        if min(width, depth, batch_mul) < 1:
            raise ConfigError("head_options width, depth and batch_mul must be at least 1")
        self.set_sampling_steps(steps, "head_options.steps")
        self.set_solver(solver, "head_options.solver")
        self.channels, self.batch_mul = channels, batch_mul
        self.net = MLPDenoiser(channels, d_model, width, depth, out_channels=channels, time_scale=1000.0)

    def loss(self, target_BLC: torch.Tensor, h_BLD: torch.Tensor, unit_sizes: list[int] | None = None) -> torch.Tensor:
        """Mean squared velocity error per token."""
        x = target_BLC.reshape(-1, self.channels).float().repeat(self.batch_mul, 1)
        z = h_BLD.reshape(-1, h_BLD.shape[-1]).repeat(self.batch_mul, 1)
        t = torch.rand(len(x), device=x.device)
        e = torch.randn_like(x)
        x_t = (1 - t[:, None]) * x + t[:, None] * e
        return F.mse_loss(self.net(x_t.to(z.dtype), t, z).float(), e - x)

    def sample(self, h: torch.Tensor, cfg_scale, noise: CounterNoise, step, guided: bool = False,
               temperature: float = 1.0, **_) -> torch.Tensor:  # fmt: skip
        """Latents (B, n, C) by the head's solver over the (guided) velocity; the initial noise is scaled by the
        temperature. ``h`` (B, n, D), or (2B, n, D) when ``guided``: conditional rows, then unconditional."""
        B, n, D = h.shape
        B = B // 2 if guided else B
        C = self.channels
        shared = self.net.prepare(h, self.times(h.device))  # once per unit
        scale = torch.as_tensor(cfg_scale, device=h.device)

        def velocity(x, i):
            v = self.net.step(torch.cat([x, x]) if guided else x, shared, i)
            if guided:
                v_c, v_u = v.chunk(2)
                v = v_u + scale.to(v.dtype) * (v_c - v_u)
            return v

        x = noise.normal(step, (n, C), stream=0).reshape(B * n, C) * temperature
        return self.integrate(x, velocity).view(B, n, C)
