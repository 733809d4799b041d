"""Training task for tokenizers: reconstruction + the tokenizer's own regulariser + optional adversarial and
perceptual terms."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from visgen.config import ConfigError
from visgen.losses import PatchDiscriminator, PerceptualLoss, hinge_d_loss
from visgen.metrics import psnr, ssim
from visgen.tokenizers.base import Tokenizer


def _frames(x: torch.Tensor) -> torch.Tensor:
    """Images as they are; video clips (B, T, C, H, W) as their frames (B T, C, H, W): a frame tokenizer trains on
    the frames of a video data set (``data.frames``)."""
    return x.flatten(0, 1) if x.dim() == 5 else x


@dataclass
class TokenizerLossConfig:
    """Loss weights for tokenizer training.

    l1_weight, l2_weight: pixel reconstruction terms.
    perceptual_weight: LPIPS-VGG term; needs ``perceptual_weights`` (a local file, nothing is downloaded).
    adv_weight: hinge-GAN generator term from a patch discriminator (VQGAN, Esser et al. 2021); 0 turns it off.
    adv_start: optimizer step at which the adversarial terms start (VQGAN delays them until reconstructions are
        reasonable, or the discriminator wins at once).
    disc_warmup: steps from ``adv_start`` in which only the discriminator learns (the tokenizer waits, its losses
        logged): a fresh discriminator on an already trained decoder (a decoder fine-tune) would push it at random.
    disc_channels, disc_layers: patch discriminator size.
    """

    l1_weight: float = 1.0
    l2_weight: float = 1.0
    perceptual_weight: float = 0.0
    perceptual_weights: str = ""
    adv_weight: float = 0.0
    adv_start: int = 2000
    disc_warmup: int = 0
    disc_channels: int = 64
    disc_layers: int = 2


FINETUNE = ("all", "decoder")


class TokenizerTask(nn.Module):
    """Trains a ``Tokenizer``; the discriminator trains in the same backward pass (see ``forward``).

    ``finetune="decoder"``: only the modules decoding runs train (``Tokenizer.decoder_parameters``), on what the
    frozen encoder's tokens decode to, so every token stays as it was and generators trained on them keep working
    with the sharper decoder."""

    def __init__(self, model: Tokenizer, loss: TokenizerLossConfig, finetune: str = "all"):
        super().__init__()
        if finetune not in FINETUNE:
            raise ConfigError(f"model.finetune must be one of {', '.join(FINETUNE)}; got {finetune!r}")
        self.model, self.loss_cfg, self.decoder_only = model, loss, finetune == "decoder"
        if self.decoder_only:
            decoder = model.decoder_parameters()
            if not decoder:
                raise ConfigError(f"a {type(model).__name__} has no decoder modules to fine-tune (model.finetune)")
            model.requires_grad_(False)
            for p in decoder:
                p.requires_grad_(True)
        self.perceptual = PerceptualLoss(loss.perceptual_weights) if loss.perceptual_weight > 0 else None
        self.disc = (
            PatchDiscriminator(model.image_channels, loss.disc_channels, loss.disc_layers)
            if loss.adv_weight > 0
            else None
        )
        self.has_unused_parameters = self.disc is not None  # the discriminator idles until adv_start

    def forward(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, c = _frames(batch["image"]), self.loss_cfg
        if self.decoder_only:  # the tokens generators read, decoded
            with torch.no_grad():
                tokens = self.model.encode(x)
            recon, terms = self.model.decode(tokens), {}
        else:
            recon, terms = self.model.training_losses(x)
        recon = recon.float()
        loss = c.l1_weight * F.l1_loss(recon, x) + c.l2_weight * F.mse_loss(recon, x)
        logs = {"rec_loss": loss.detach()}
        if self.perceptual is not None:
            p = self.perceptual(recon, x)
            loss = loss + c.perceptual_weight * p
            logs["perceptual"] = p.detach()
        for k, v in terms.items():
            if k.startswith("loss_"):
                loss = loss + v
                logs[k[5:]] = v.detach()
            elif v.ndim == 0:
                logs[k] = v
        if self.disc is not None and step >= c.adv_start:
            # One optimizer, one backward: the generator term sees the discriminator through detached
            # weights, so it moves only the tokenizer; the discriminator term sees detached reconstructions.
            frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
            g_loss = -functional_call(self.disc, frozen, (recon,)).mean()
            d_loss = hinge_d_loss(self.disc(x), self.disc(recon.detach()))
            if step < c.adv_start + c.disc_warmup:  # the discriminator's warm-up: the tokenizer waits
                loss = loss.detach() + g_loss.detach() + d_loss
            else:
                loss = loss + c.adv_weight * g_loss + d_loss
            logs.update(g_loss=g_loss.detach(), d_loss=d_loss.detach())
        logs["loss"] = loss.detach()
        return loss, logs

    @torch.no_grad()
    def validate(self, model: Tokenizer, batches, accelerator) -> dict[str, float]:
        """PSNR, SSIM, and codebook usage (VQ) or latent statistics (continuous; sets the scaling factor)."""
        sums = torch.zeros(4, device=accelerator.device, dtype=torch.float64)
        used = torch.zeros(max(model.vocab_size, 1), device=accelerator.device)
        for batch in batches:
            x = _frames(batch["image"])
            tokens = model.encode(x)
            recon = model.decode(tokens).float().clamp(-1, 1)
            sums[0] += psnr(recon, x).sum()
            sums[1] += ssim(recon, x).sum()
            sums[2] += len(x)
            if model.discrete:
                used[tokens.flatten()] = 1
            else:
                sums[3] += (tokens.float() / model.scaling_factor).pow(2).mean(dim=(1, 2, 3)).sum()
        sums = accelerator.reduce(sums, "sum")
        n = max(sums[2].item(), 1)
        out = {"psnr": sums[0].item() / n, "ssim": sums[1].item() / n, "images": int(sums[2].item())}
        if model.discrete:
            out["codebook_usage"] = accelerator.reduce(used, "max").mean().item()
        elif sums[2] > 0:
            std = (sums[3].item() / n) ** 0.5  # rms of the unscaled latents, LDM's 1 / scale_factor
            model.calibrate(std)
            out["latent_rms"], out["scaling_factor"] = std, 1.0 / std
        return out

    @torch.no_grad()
    def preview(self, model: Tokenizer, batch: dict) -> torch.Tensor:
        """Originals above their reconstructions."""
        x = _frames(batch["image"])[:8]
        return torch.cat([x, model.reconstruct(x).float().clamp(-1, 1)])
