"""The one tokenizer interface every generator family reads and writes through."""

from __future__ import annotations

import torch
from torch import nn

from visgen.checkpoint import PretrainedMixin


class Tokenizer(PretrainedMixin, nn.Module):
    """``encode(images) -> tokens`` and ``decode(tokens) -> images``, images in [-1, 1] as (B, C, H, W).

    Discrete tokenizers give indices (B, h, w) and have ``vocab_size``; continuous ones give latents
    (B, latent_channels, h, w), already multiplied by the tokenizer's latent scaling factor so that generators
    see roughly unit variance.
    """

    discrete: bool = True
    downsample: int = 1
    vocab_size: int = 0
    latent_channels: int = 0
    image_channels: int = 3

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compile_decoder(self):
        """Compile decoding with ``torch.compile`` (the sampler's copy, under ``SamplingConfig.compile``): the conv
        decoder where there is one (its norms and activations fuse: 1.5x at batch 256 for VAR's), else ``decode``."""
        dec = getattr(self, "decoder", None)
        if isinstance(dec, nn.Module):
            dec.compile(dynamic=False)
        else:
            self.decode = torch.compile(self.decode, dynamic=False)

    decoder_parts: tuple[str, ...] = ("post_quant_conv", "decoder")  # the modules only decoding runs

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The parameters of the modules only ``decode`` runs (``decoder_parts``): what a decoder fine-tune trains,
        leaving every token the encoder gives as it was."""
        names = [n for n, _ in self.named_modules()]
        return [p for name in self.decoder_parts if name in names for p in self.get_submodule(name).parameters()]

    def token_state(self) -> dict[str, torch.Tensor]:
        """The weights that make tokens: the state dict outside ``decoder_parts``. Two tokenizers that agree on it give
        the same tokens, whatever their decoders (a generator, a speculative draft or a swapped decoder reads them
        alike)."""
        decoder = tuple(f"{part}." for part in self.decoder_parts)
        return {k: v for k, v in self.state_dict().items() if not k.startswith(decoder)}

    def grid_shape(self, image_size: int) -> tuple[int, int]:
        """The token grid (h, w) for square images of side ``image_size``."""
        return image_size // self.downsample, image_size // self.downsample

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))

    def training_losses(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction (before decoding to the image loss) and the tokenizer's own regulariser.

        Returns the reconstructed images and a dict of named auxiliary terms already weighted (commitment for VQ,
        KL for the VAE) plus any statistics worth logging.
        """
        raise NotImplementedError
