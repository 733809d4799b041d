"""LPIPS-style perceptual loss (Zhang et al. 2018) over VGG-16 features, from local weights only.

No weights are downloaded: give ``weights`` as a safetensors file holding torchvision's ``vgg16().features``
parameters under ``features.*`` and the five LPIPS linear layers under ``lin.{0..4}.weight`` (shape (1, C, 1, 1)).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from visgen.config import ConfigError

_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in vgg16().features
_CHANNELS = (64, 128, 256, 512, 512)
# ImageNet statistics, expressed for inputs in [-1, 1] as LPIPS does
_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


class PerceptualLoss(nn.Module):
    """Mean LPIPS distance between two image batches in [-1, 1]; frozen."""

    def __init__(self, weights: str | Path | None):
        super().__init__()
        from torchvision.models import vgg16

        if not weights or not Path(weights).is_file():
            raise ConfigError(
                f"the perceptual loss needs local LPIPS-VGG weights (loss.perceptual_weights=PATH), got {weights!r}; "
                "none ship with visgen. Set loss.perceptual_weight=0 to train without it."
            )
        self.features = vgg16().features[: _TAPS[-1] + 1]
        self.lin = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        state = load_file(str(weights))
        try:
            self.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"{weights} is not an LPIPS-VGG weights file: {e}") from e
        self.register_buffer("shift", _SHIFT.clone())
        self.register_buffer("scale", _SCALE.clone())
        self.requires_grad_(False).eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return sum(lin((a - b).pow(2)).mean() for lin, a, b in zip(self.lin, self._taps(x), self._taps(y)))
