"""KL-VAE tokenizer: continuous latents from a diagonal Gaussian posterior (LDM, Rombach et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from visgen.checkpoint import register_model
from visgen.tokenizers.base import Tokenizer
from visgen.tokenizers.modules import ConvAEConfig


@dataclass
class KLConfig(ConvAEConfig):
    """KL-VAE settings.

    in_channels, channels, channel_mult, num_res_blocks: the conv autoencoder (``ConvAEConfig``).
    latent_channels: channels of the latent grid.
    kl_weight: weight of KL(q(z|x) || N(0, I)), small so the latent keeps detail (LDM uses 1e-6).
    """

    latent_channels: int = 4
    kl_weight: float = 1e-6


@register_model("kl")
class KLTokenizer(Tokenizer):
    """Continuous tokenizer: image -> (B, latent_channels, h, w) latents (posterior mean x scaling factor).

    The scaling factor (1 / std of the latents, as in LDM sec. 4.3.2) is measured on the data at validation time by
    the trainer and saved with the weights as a buffer.
    """

    config_class = KLConfig
    discrete = False

    def __init__(self, config: KLConfig):
        super().__init__()
        self.config = c = config
        self.downsample = c.downsample
        self.latent_channels, self.image_channels = c.latent_channels, c.in_channels
        self.encoder = c.encoder(2 * c.latent_channels)  # mean and log-variance
        self.decoder = c.decoder(c.latent_channels)
        self.register_buffer("scaling_factor", torch.ones(()))

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(images).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.posterior(images)[0] * self.scaling_factor

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(tokens / self.scaling_factor)

    @torch.no_grad()
    def calibrate(self, latent_std: float):
        """Set the scaling factor from the measured std of unscaled posterior means."""
        self.scaling_factor.fill_(1.0 / max(latent_std, 1e-6))

    def training_losses(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mean, logvar = self.posterior(images)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
        return self.decoder(z), {
            "loss_kl": self.config.kl_weight * kl,
            "kl": kl.detach(),
            "latent_mean": mean,
        }
