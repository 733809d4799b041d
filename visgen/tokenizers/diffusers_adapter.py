"""Adapters that put diffusers' ``AutoencoderKL`` and ``VQModel`` behind the visgen tokenizer interface.

Load a pretrained autoencoder from a local folder or a hub id (``pretrained=...``), or build a fresh one from a
diffusers config (``model_config={...}``) and train it with the visgen trainer. A saved adapter stores the
diffusers config next to its weights, so reloading it never touches the hub.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from visgen.checkpoint import CheckpointError, register_model
from visgen.config import ConfigError, from_dict
from visgen.tokenizers.base import Tokenizer


@dataclass
class DiffusersVAEConfig:
    """Adapter settings.

    pretrained: a local folder or a hub id (``stabilityai/sd-vae-ft-ema``); empty to build from ``model_config``.
    subfolder: the subfolder of ``pretrained`` that holds the autoencoder (``vae`` in a pipeline repo).
    model_config: diffusers constructor arguments, used when ``pretrained`` is empty.
    scaling_factor: latent scaling (KL only); defaults to the model's own ``config.scaling_factor``.
    """

    pretrained: str = ""
    subfolder: str | None = None
    model_config: dict | None = None
    scaling_factor: float | None = None


def _load_diffusers(cls, cfg: DiffusersVAEConfig):
    if not cfg.pretrained:
        if not cfg.model_config:
            raise ConfigError("a diffusers tokenizer needs model.pretrained (folder or hub id) or model.model_config")
        return cls(**cfg.model_config)
    local = Path(cfg.pretrained).expanduser()
    try:
        if local.exists():
            return cls.from_pretrained(str(local), subfolder=cfg.subfolder)
        # HF_HUB_OFFLINE read now, not when huggingface_hub was imported: set late, it still spares the retries
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        return cls.from_pretrained(cfg.pretrained, subfolder=cfg.subfolder, local_files_only=offline)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"could not load a diffusers {cls.__name__} from {cfg.pretrained!r}: {e}\n"
            "Offline or without the hub? Download it on a connected machine "
            "(huggingface-cli download ID --local-dir DIR) and pass model.pretrained=DIR."
        ) from e


class _DiffusersTokenizer(Tokenizer):
    config_class = DiffusersVAEConfig
    decoder_parts = ("vae.post_quant_conv", "vae.decoder")
    diffusers_class: type

    def __init__(self, config: DiffusersVAEConfig, load_pretrained: bool = True):
        super().__init__()
        if not load_pretrained:
            config = DiffusersVAEConfig(model_config=config.model_config, scaling_factor=config.scaling_factor)
        self.vae = _load_diffusers(self.diffusers_class, config)
        model_config = {k: v for k, v in dict(self.vae.config).items() if not k.startswith("_")}
        self.config = DiffusersVAEConfig(config.pretrained, config.subfolder, model_config, config.scaling_factor)
        self.downsample = 2 ** (len(model_config["block_out_channels"]) - 1)
        self.image_channels = model_config["in_channels"]

    @classmethod
    def from_config(cls, meta: dict, directory=None):
        return cls(from_dict(DiffusersVAEConfig, meta["config"], f"{cls.model_type} config"), load_pretrained=False)


@register_model("diffusers-kl")
class DiffusersKLTokenizer(_DiffusersTokenizer):
    """Continuous tokenizer over ``diffusers.AutoencoderKL``; latents are posterior modes x scaling factor."""

    discrete = False

    def __init__(self, config: DiffusersVAEConfig, load_pretrained: bool = True):
        from diffusers import AutoencoderKL

        self.diffusers_class = AutoencoderKL
        super().__init__(config, load_pretrained)
        self.latent_channels = self.vae.config.latent_channels
        scale = config.scaling_factor if config.scaling_factor is not None else self.vae.config.scaling_factor
        self.register_buffer("scaling_factor", torch.tensor(float(scale)))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.mode() * self.scaling_factor

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(tokens / self.scaling_factor).sample

    @torch.no_grad()
    def calibrate(self, latent_std: float):
        self.scaling_factor.fill_(1.0 / max(latent_std, 1e-6))

    def training_losses(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        dist = self.vae.encode(images).latent_dist
        kl = dist.kl().mean()
        return self.vae.decode(dist.sample()).sample, {
            "loss_kl": 1e-6 * kl,
            "kl": kl.detach(),
            "latent_mean": dist.mean,
        }


@register_model("diffusers-vq")
class DiffusersVQTokenizer(_DiffusersTokenizer):
    """Discrete tokenizer over ``diffusers.VQModel``; tokens are codebook indices (B, h, w)."""

    discrete = True

    def __init__(self, config: DiffusersVAEConfig, load_pretrained: bool = True):
        from diffusers import VQModel

        self.diffusers_class = VQModel
        super().__init__(config, load_pretrained)
        self.vocab_size = self.vae.config.num_vq_embeddings

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        _, _, (_, _, idx) = self.vae.quantize(self.vae.encode(images).latents)
        b, _, h, w = images.shape
        return idx.reshape(b, h // self.downsample, w // self.downsample)

    def embed_codes(self, idx_Bhw: torch.Tensor) -> torch.Tensor:
        return self.vae.quantize.embedding(idx_Bhw).permute(0, 3, 1, 2)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(self.embed_codes(tokens), force_not_quantize=True).sample

    def training_losses(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        quant, loss, (perplexity, _, idx) = self.vae.quantize(self.vae.encode(images).latents)
        recon = self.vae.decode(quant, force_not_quantize=True).sample
        return recon, {"loss_vq": loss, "perplexity": perplexity.detach(), "indices": idx}
