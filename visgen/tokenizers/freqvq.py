"""Frequency-band residual VQ tokenizer for next-frequency prediction (NFIG, Huang et al. 2025): the latent's
spectrum is cut into radial bands, low frequencies first, and each band is quantised on a token grid just large
enough for it.

The band split: band k of a latent is the inverse 2-D FFT of its spectrum masked to the annulus
edge_{k-1} < |f| <= edge_k (|f| the radial frequency in cycles per latent sample, edge_{-1} = 0 with the DC term
in band 0, the last band taking everything above the second-last edge, corners of the spectrum included), so the
bands partition the spectrum and sum to the latent (``band_split``). Grids: a band whose highest frequency is f
needs a grid of side at least 2 f S (Nyquist, S the latent's side), so band k's grid is ceil(2 edge_k S) (at least 1,
at most S; ``grids`` can raise them). Quantisation is residual over bands, as the multi-scale VQ over scales: band
k quantises the residual's content up to edge_k (what the lower bands left in their annuli, plus its own),
area-resampled to its grid, with one codebook shared by all bands and a Phi refinement per band; decoding sums the
bands' dequantised maps. Everything else (codebook start on data, dead-code restart, ``init_from`` a trained VQ,
training) is the multi-scale VQ's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from visgen.checkpoint import register_model
from visgen.config import ConfigError
from visgen.nn.resize import resize
from visgen.tokenizers.msvq import MultiScaleVQConfig, MultiScaleVQTokenizer


def radial_frequency(side: int) -> torch.Tensor:
    """(side, side) |f| of each FFT bin, in cycles per sample (0 at DC, 0.5 at Nyquist, up to 0.707 at corners)."""
    f = torch.fft.fftfreq(side)
    return torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)


def band_masks(side: int, edges: tuple[float, ...]) -> torch.Tensor:
    """(K, side, side) 0/1 masks of the K annuli (module docstring); they sum to one at every frequency."""
    r = radial_frequency(side)
    lo = [-1.0, *edges[:-1]]
    hi = [*edges[:-1], math.inf]  # the last band takes the corners above Nyquist too
    return torch.stack([((r > a) & (r <= b)).float() for a, b in zip(lo, hi)])


def nyquist_grids(side: int, edges: tuple[float, ...]) -> list[int]:
    """The smallest grid side each band fits on: ceil(2 edge_k side), between 1 and side."""
    return [min(side, max(1, math.ceil(2 * e * side - 1e-9))) for e in edges]


@dataclass
class FrequencyVQConfig(MultiScaleVQConfig):
    """Frequency-band VQ settings: those of ``MultiScaleVQConfig`` (autoencoder, codebook, ``phi_ratio``,
    ``init_from``, dead-code restart) but the scales, which follow from

    band_edges: upper edge of each band as a normalised frequency (cycles per latent sample), increasing, in
        (0, 0.5], the last 0.5 (the spectrum up to Nyquist; the corners above join the last band).
    latent_size: the latent's side (image side / downsample: 8 for 32 px at ``(1, 2, 2)``), which the bands and
        grids are computed for.
    grids: each band's token-grid side; empty: the Nyquist rule (``nyquist_grids``); a grid smaller than the rule
        is an error.
    """

    band_edges: tuple[float, ...] = (0.0625, 0.125, 0.25, 0.5)
    latent_size: int = 8
    grids: tuple[int, ...] = ()

    def __post_init__(self):
        edges = self.band_edges = tuple(float(e) for e in self.band_edges)
        if not edges or any(not 0 < e <= 0.5 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ConfigError(f"model.band_edges must increase within (0, 0.5], got {list(edges)}")
        if edges[-1] != 0.5:
            raise ConfigError(
                f"model.band_edges must end at 0.5 (Nyquist) so the bands cover the spectrum; got {edges[-1]}"
            )
        need = nyquist_grids(self.latent_size, edges)
        grids = tuple(self.grids) or tuple(need)
        if len(grids) != len(edges):
            raise ConfigError(f"model.grids gives {len(grids)} sides for {len(edges)} bands")
        for k, (g, n) in enumerate(zip(grids, need)):
            if not n <= g <= self.latent_size:
                raise ConfigError(
                    f"band {k} (up to {edges[k]:g} cycles/sample) needs a grid side of at least {n} (Nyquist: "
                    f"2 x {edges[k]:g} x {self.latent_size}) and at most the latent's {self.latent_size}; got {g}"
                )
        self.grids = grids
        self.scales = grids
        super().__post_init__()


@register_model("freqvq")
class FrequencyVQTokenizer(MultiScaleVQTokenizer):
    """Discrete tokenizer: image -> (B, sum(g_k^2)) indices, band by band (low to high), each band row-major."""

    config_class = FrequencyVQConfig

    def __init__(self, config: FrequencyVQConfig):
        super().__init__(config)
        self.band_edges = config.band_edges
        masks = band_masks(config.latent_size, config.band_edges)
        self.register_buffer("masks", masks, persistent=False)
        self.register_buffer("lowpass", masks.cumsum(0).clamp(max=1), persistent=False)  # bands 0..k together

    def grid_shape(self, image_size: int) -> tuple[int, int]:
        side = image_size // self.downsample
        if side != self.config.latent_size:
            raise ConfigError(
                f"this frequency-band tokenizer's bands are set for a {self.config.latent_size} x "
                f"{self.config.latent_size} latent (model.latent_size); {image_size} px give {side} x {side}"
            )
        return side, side

    def _filter(self, f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The part of ``f`` (B, D, S, S) whose spectrum lies in ``mask`` (S, S) (fp32 FFT)."""
        return torch.fft.ifft2(torch.fft.fft2(f.float()) * mask).real.to(f.dtype)

    def band_split(self, f: torch.Tensor) -> list[torch.Tensor]:
        """The latent's bands (each (B, D, S, S)): a partition of its spectrum that sums back to it."""
        return [self._filter(f, m) for m in self.masks]

    def _scale_input(self, k: int, rest: torch.Tensor, side: int) -> torch.Tensor:
        """What band k quantises: what is left of the latent up to its edge, area-resampled to its grid."""
        return resize(self._filter(rest, self.lowpass[k]), side, "area")
