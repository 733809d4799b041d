"""Exponential moving average of a model's parameters, kept in fp32."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    """Shadow parameters ``s <- d s + (1 - d) w`` with the warm-up ``d = min(decay, (1 + n) / (10 + n))``.

    Buffers (a measured latent scale, codebook usage counts) are not averaged: they always come from the model.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.named_parameters()}
        self._pairs: tuple[nn.Module, list, list] | None = None  # (model, shadows, its parameters), looked up once

    @torch.no_grad()
    def update(self, model: nn.Module, step: int):
        d = min(self.decay, (1 + step) / (10 + step))
        if self._pairs is None or self._pairs[0] is not model:
            params = dict(model.named_parameters())
            self._pairs = (model, list(self.shadow.values()), [params[k] for k in self.shadow])
        _, shadows, params = self._pairs
        # one fused launch for all tensors instead of one per parameter
        torch._foreach_lerp_(shadows, [p.detach().float() for p in params], 1 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]):
        for k in self.shadow:
            self.shadow[k].copy_(state[k])

    @torch.no_grad()
    def capture(self, model: nn.Module):
        """Take the model's current parameters as the shadow (how a sharded model's EMA is restored: its full EMA
        weights are loaded into the model, which shards them, and read back from there)."""
        params = dict(model.named_parameters())
        for k, v in self.shadow.items():
            v.copy_(params[k])

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with EMA parameters: what ``ema.safetensors`` holds."""
        state = {k: v.detach() for k, v in model.state_dict().items()}
        state.update({k: v.to(state[k].dtype) for k, v in self.shadow.items()})
        return state

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module):
        """Temporarily put the EMA parameters into ``model`` (for validation and previews)."""
        params = dict(model.named_parameters())
        backup = {k: p.detach().clone() for k, p in params.items()}
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(self.shadow[k])
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(backup[k])
