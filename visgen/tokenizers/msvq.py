"""Multi-scale residual VQ tokenizer (VAR, Tian et al. 2024, sec. 3.2 and appendix): one codebook shared by every
scale; each scale quantises the area-downsampled residual, and its codes, upsampled and refined by a Phi
convolution, are subtracted before the next scale."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from visgen.checkpoint import register_model
from visgen.config import ConfigError
from visgen.nn.resize import resize
from visgen.tokenizers.base import Tokenizer
from visgen.tokenizers.vq import VQConfig, restart_dead_codes


@dataclass
class MultiScaleVQConfig(VQConfig):
    """Multi-scale VQ settings: those of ``VQConfig`` (the conv autoencoder, ``z_channels``, ``beta``) and

    codebook_size, codebook_dim: one Euclidean codebook shared by all scales (VAR: 4096 x 32).
    scales: side of each scale's token map, coarse to fine; the last equals the latent side (32 px, ``(1, 2, 2)``:
        8, e.g. 1, 2, 3, 4, 6, 8).
    phi_ratio: weight of the Phi refinement, z + r (conv(z) - z) (VAR's quant_resi = 0.5).
    dead_code_threshold, usage_decay: dead-code restart as in ``VQConfig`` (a dead code moves to a random residual
        of the batch, any scale; at most codebook_size / 64 codes per step, so the codebook never jumps); 0 turns
        it off. A fresh codebook (not from ``init_from``) starts on residuals of the first training batch.
    init_from: a trained ``vq`` tokenizer folder whose encoder, decoder and (normalised) codebook start this one;
        parts whose shapes differ keep their fresh initialisation.
    """

    codebook_size: int = 1024
    codebook_dim: int = 32
    scales: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    phi_ratio: float = 0.5
    init_from: str = ""

    def __post_init__(self):
        super().__post_init__()
        self.scales = tuple(self.scales)


@register_model("msvq")
class MultiScaleVQTokenizer(Tokenizer):
    """Discrete tokenizer: image -> (B, sum(s^2)) indices, scale by scale, each scale row-major."""

    # how a scale's map is read from the latent (the residual, and the schedule's input for the scale) and how its
    # codes go back up to the latent: VAR's area and bicubic
    down_mode, up_mode = "area", "bicubic"

    config_class = MultiScaleVQConfig
    discrete = True

    def __init__(self, config: MultiScaleVQConfig):
        super().__init__()
        self.config = c = config
        self.downsample = c.downsample
        self.vocab_size, self.image_channels, self.scales = c.codebook_size, c.in_channels, c.scales
        self.encoder = c.encoder(c.z_channels)
        self.quant_conv = nn.Conv2d(c.z_channels, c.codebook_dim, 1)
        self.codebook = nn.Embedding(c.codebook_size, c.codebook_dim)
        nn.init.uniform_(self.codebook.weight, -1 / c.codebook_size, 1 / c.codebook_size)
        self.register_buffer("usage", torch.ones(c.codebook_size))
        self.register_buffer("codes_from_data", torch.zeros((), dtype=torch.bool))  # set once the codebook has data
        self.phi = nn.ModuleList(nn.Conv2d(c.codebook_dim, c.codebook_dim, 3, padding=1) for _ in c.scales)
        self.post_quant_conv = nn.Conv2d(c.codebook_dim, c.z_channels, 1)
        self.decoder = c.decoder(c.z_channels)
        if c.init_from:
            self._init_from(c.init_from)

    def _init_from(self, path: str):
        from visgen.checkpoint import load_model

        vq = load_model(path)
        if vq.model_type != "vq":
            raise ConfigError(f"init_from needs a 'vq' tokenizer folder; {path} holds a {vq.model_type!r}")
        src = {k: v for k, v in vq.state_dict().items() if not k.startswith("quantizer.")}
        src["codebook.weight"] = vq.quantizer.codes().detach()
        own = self.state_dict()
        fit = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
        self.load_state_dict(fit, strict=False)
        self.codes_from_data.fill_("codebook.weight" in fit)
        self.initialised_from = sorted(fit)

    @property
    def codebook_dim(self) -> int:
        return self.config.codebook_dim

    def grid_shape(self, image_size: int) -> tuple[int, int]:
        side = image_size // self.downsample
        if self.scales[-1] != side:
            raise ValueError(f"the last scale {self.scales[-1]} must equal the latent side {side} for {image_size} px")
        return side, side

    def _lookup(self, r_BDss: torch.Tensor) -> torch.Tensor:
        flat = r_BDss.permute(0, 2, 3, 1).reshape(-1, r_BDss.shape[1])
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.weight.t() + self.codebook.weight.pow(2).sum(1)
        return d.argmin(1).view(r_BDss.shape[0], r_BDss.shape[2], r_BDss.shape[3])

    def upsampled(self, k: int, idx_Bss: torch.Tensor, side: int) -> torch.Tensor:
        """Scale k's codes, upsampled to the latent and refined by its Phi: what scale k adds to f_hat."""
        z = self.codebook(idx_Bss).permute(0, 3, 1, 2)
        z = resize(z, side, self.up_mode)
        r = self.config.phi_ratio
        return z * (1 - r) + self.phi[k](z) * r

    def split_scales(self, tokens_BL: torch.Tensor) -> list[torch.Tensor]:
        return [t.view(-1, s, s) for t, s in zip(tokens_BL.split([s * s for s in self.scales], dim=1), self.scales)]

    def f_hat(self, units: list[torch.Tensor]) -> torch.Tensor:
        """The latent reconstructed from the first len(units) scales' indices (each (B, s*s) or (B, s, s))."""
        side = self.scales[-1]
        out = 0
        for k, idx in enumerate(units):
            out = out + self.upsampled(k, idx.reshape(-1, self.scales[k], self.scales[k]), side)
        return out

    def _scale_input(self, k: int, rest: torch.Tensor, side: int) -> torch.Tensor:
        """What scale k quantises: the residual, area-downsampled to its side."""
        return resize(rest, side, self.down_mode)

    def _quantize(self, f: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """f_hat, each scale's indices (B, s, s) and each scale's residual (B, D, s, s) as quantised."""
        side, rest, f_hat, idx_list, res_list = f.shape[-1], f, torch.zeros_like(f), [], []
        for k, s in enumerate(self.scales):
            r = self._scale_input(k, rest, s)
            idx = self._lookup(r)
            z = self.upsampled(k, idx, side)
            f_hat, rest = f_hat + z, rest - z
            idx_list.append(idx)
            res_list.append(r)
        return f_hat, idx_list, res_list

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        _, idx, _ = self._quantize(self.quant_conv(self.encoder(images)))
        return torch.cat([i.flatten(1) for i in idx], dim=1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.f_hat(self.split_scales(tokens))))

    @torch.no_grad()
    def _maintain_codebook(self, flat_idx: torch.Tensor, residuals: list[torch.Tensor]):
        """A fresh codebook moves onto residuals of the first training batch (every code counts as dead once);
        later, dead codes restart onto residuals, a few per step."""
        c = self.config
        # the buffer is read back once per process (not every step): after the first batch it stays True
        first = not getattr(self, "_codes_from_data_seen", False) and not bool(self.codes_from_data)
        self._codes_from_data_seen = True
        if not first and c.dead_code_threshold <= 0:
            return
        vectors = torch.cat([r.permute(0, 2, 3, 1).reshape(-1, r.shape[1]) for r in residuals])
        if first:
            self.usage.zero_()
            restart_dead_codes(self.codebook.weight, self.usage, torch.zeros_like(self.usage), vectors, 1.0, 1.0)
            self.codes_from_data.fill_(True)
        else:
            counts = torch.bincount(flat_idx, minlength=self.vocab_size).float()
            restart_dead_codes(self.codebook.weight, self.usage, counts, vectors, c.dead_code_threshold,
                               c.usage_decay, max_codes=max(1, self.vocab_size // 64))  # fmt: skip

    def training_losses(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        f = self.quant_conv(self.encoder(images))
        f_hat, idx, residuals = self._quantize(f)
        # codebook and Phi pull f_hat to f; commitment pulls f to f_hat (VQ-VAE eq. 3 on the summed pyramid)
        loss = F.mse_loss(f_hat, f.detach()) + self.config.beta * F.mse_loss(f, f_hat.detach())
        f_st = f + (f_hat - f).detach()
        flat = torch.cat([i.flatten() for i in idx])
        if self.training:
            self._maintain_codebook(flat, residuals)
        return self.decoder(self.post_quant_conv(f_st)), {"loss_vq": loss, "indices": flat}
