"""VQ tokenizer: a VQGAN-style conv autoencoder with an l2-normalised, low-dimensional codebook."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from visgen.checkpoint import register_model
from visgen.tokenizers.base import Tokenizer
from visgen.tokenizers.modules import ConvAEConfig


@dataclass
class VQConfig(ConvAEConfig):
    """VQ tokenizer settings.

    in_channels, channels, channel_mult, num_res_blocks: the conv autoencoder (``ConvAEConfig``).
    z_channels: encoder output width before the projection to the codebook.
    codebook_size: number of codes (the generator's vocabulary).
    codebook_dim: code vector size; small and l2-normalised, which raises codebook usage
        (ViT-VQGAN, Yu et al. 2022, sec. 3.2; LlamaGen uses 8).
    beta: commitment weight (VQ-VAE, van den Oord et al. 2017, eq. 3).
    dead_code_threshold: a code whose running usage (expected hits per batch) falls below this is restarted
        at a random encoder output of the current batch (Dhariwal et al. 2020, Jukebox, sec. 3.2); 0 turns it off.
    usage_decay: decay of the running code-usage count.
    """

    z_channels: int = 64
    codebook_size: int = 512
    codebook_dim: int = 8
    beta: float = 0.25
    dead_code_threshold: float = 0.03
    usage_decay: float = 0.99


class VectorQuantizer(nn.Module):
    """Nearest-code lookup in cosine distance with straight-through gradients and dead-code restart."""

    def __init__(self, size: int, dim: int, beta: float, dead_code_threshold: float, usage_decay: float):
        super().__init__()
        self.beta, self.threshold, self.decay = beta, dead_code_threshold, usage_decay
        self.codebook = nn.Embedding(size, dim)
        nn.init.normal_(self.codebook.weight)
        self.register_buffer("usage", torch.ones(size))

    def codes(self) -> torch.Tensor:
        return F.normalize(self.codebook.weight, dim=-1)

    def lookup(self, z_BDhw: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w) of the nearest codes."""
        z = F.normalize(z_BDhw, dim=1).permute(0, 2, 3, 1)
        return (z @ self.codes().t()).argmax(-1)  # max cosine = min l2 between unit vectors

    def embed(self, idx_Bhw: torch.Tensor) -> torch.Tensor:
        return self.codes()[idx_Bhw].permute(0, 3, 1, 2)

    def forward(self, z_BDhw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        z = F.normalize(z_BDhw, dim=1)
        idx = self.lookup(z)
        zq = self.embed(idx)
        # codebook term pulls codes to encoder outputs, commitment term the reverse (VQ-VAE eq. 3)
        loss = F.mse_loss(zq, z.detach()) + self.beta * F.mse_loss(z, zq.detach())
        counts = torch.bincount(idx.flatten(), minlength=self.codebook.num_embeddings).float()
        p = counts / counts.sum()
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())
        if self.training and self.threshold > 0:
            self._restart_dead_codes(z.detach(), counts)
        return z + (zq - z).detach(), idx, {"loss_vq": loss, "perplexity": perplexity.detach()}

    def _restart_dead_codes(self, z_BDhw: torch.Tensor, counts: torch.Tensor):
        flat = z_BDhw.permute(0, 2, 3, 1).reshape(-1, z_BDhw.shape[1])
        restart_dead_codes(self.codebook.weight, self.usage, counts, flat, self.threshold, self.decay)


@torch.no_grad()
def restart_dead_codes(weight: torch.Tensor, usage: torch.Tensor, counts: torch.Tensor, vectors_ND: torch.Tensor,
                       threshold: float, decay: float, max_codes: int = 0):  # fmt: skip
    """Update the running ``usage`` with this batch's ``counts`` and move every code used less than ``threshold``
    to a random row of ``vectors_ND`` (Jukebox, Dhariwal et al. 2020, sec. 3.2); identical on every process.
    ``max_codes`` > 0 moves at most that many per call (the least used first), so restarts come gradually."""
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        dist.all_reduce(counts)  # the same usage on every process, hence the same dead codes
    usage.mul_(decay).add_(counts, alpha=1 - decay)
    # candidates: every code, or the max_codes least used; the dead among them move. Nothing reads the number of
    # dead codes back to the host, so a training step never waits on the GPU here.
    size = weight.shape[0]
    n = max_codes if 0 < max_codes < size else size
    idx = torch.topk(usage, n, largest=False).indices if n < size else torch.arange(size, device=usage.device)
    dead = usage[idx] < threshold
    pick = torch.randint(0, vectors_ND.shape[0], (n,), device=vectors_ND.device)
    new = vectors_ND[pick].float().contiguous()
    if distributed:
        dist.broadcast(new, src=0)  # replicas must restart with the same vectors or they drift apart
    weight.data[idx] = torch.where(dead[:, None], new.to(weight.dtype), weight.data[idx])
    usage[idx] = torch.where(dead, torch.ones_like(usage[idx]), usage[idx])


@register_model("vq")
class VQTokenizer(Tokenizer):
    """Discrete tokenizer: image -> (B, h, w) code indices -> image. See ``VQConfig`` for the arguments."""

    config_class = VQConfig
    discrete = True

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        c = config
        self.downsample = c.downsample
        self.vocab_size, self.image_channels = c.codebook_size, c.in_channels
        self.encoder = c.encoder(c.z_channels)
        self.quant_conv = nn.Conv2d(c.z_channels, c.codebook_dim, 1)
        self.quantizer = VectorQuantizer(c.codebook_size, c.codebook_dim, c.beta, c.dead_code_threshold, c.usage_decay)
        self.post_quant_conv = nn.Conv2d(c.codebook_dim, c.z_channels, 1)
        self.decoder = c.decoder(c.z_channels)

    @property
    def codebook_dim(self) -> int:
        return self.config.codebook_dim

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantizer.lookup(self.quant_conv(self.encoder(images)))

    def embed_codes(self, idx_Bhw: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, codebook_dim, h, w) of indices; the input space of the scale family."""
        return self.quantizer.embed(idx_Bhw)

    def decode_codes(self, zq_BDhw: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(zq_BDhw))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decode_codes(self.embed_codes(tokens))

    def training_losses(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        zq, idx, terms = self.quantizer(self.quant_conv(self.encoder(images)))
        terms["indices"] = idx
        return self.decode_codes(zq), terms
