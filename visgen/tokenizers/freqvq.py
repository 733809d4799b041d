"""Frequency-band residual VQ tokenizer for next-frequency prediction (NFIG, Huang et al. 2025): the latent's
spectrum is cut into radial bands, low frequencies first, and each band is quantised on a token grid just large
enough for it.

The band split: band k of a latent is the inverse 2-D FFT of its spectrum masked to the annulus
edge_{k-1} < |f| <= edge_k (|f| the radial frequency in cycles per latent sample, edge_{-1} = 0 with the DC term
in band 0, the last band taking everything above the second-last edge, corners of the spectrum included), so the
bands partition the spectrum and sum to the latent (``band_split``). Quantisation is residual over bands, as the
multi-scale VQ over scales: band k quantises the residual's content up to edge_k (what the lower bands left in their
annuli, plus its own), resampled to its grid, with one codebook shared by all bands and a Phi refinement per band;
decoding sums the bands' dequantised maps.

Resampling and grids (``resample``):

- ``spectral`` (the recipe's): band maps go to their grids and back through the DFT (``resize(..., "spectral")``),
  and band k's grid is the smallest that holds every frequency of bands 0..k exactly: 2 m + 1 for m the largest
  per-axis integer frequency (in cycles per latent side) of a bin in them, at most S (``exact_grids``; 1, 3, 5, 8 for
  edges 1/16, 1/8, 1/4, 1/2 of an 8 x 8 latent, 99 tokens). A band's content then survives its grid exactly, and the
  schedule's input for band k, the bands below resampled to its grid, is exact too.
- ``area`` (what the first runs used): area-downsampling and bicubic upsampling, VAR's, with the grids of the Nyquist
  rule: a band whose highest radial frequency is f gets side ceil(2 f S) (``nyquist_grids``; 1, 2, 4, 8, 85 tokens).
  Its top frequency then sits on its grid's Nyquist bin, and the round trip keeps little of it: on the bundled VQ's
  latents of 1000 CIFAR-10 test images it loses 60% and 38% (relative L2) of bands 1 and 2's content, which the next
  bands must carry (``eval/band_roundtrip.py``, ``results/freqvq-band-roundtrip.json``).

``grids`` can raise either rule's sides. Everything else (codebook start on data, dead-code restart, ``init_from`` a
trained VQ, training) is the multi-scale VQ's.
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
    """The Nyquist rule of ``resample: area``: ceil(2 edge_k side), between 1 and side."""
    return [min(side, max(1, math.ceil(2 * e * side - 1e-9))) for e in edges]


def exact_grids(side: int, edges: tuple[float, ...]) -> list[int]:
    """The grids of ``resample: spectral``: band k's side holds every bin of bands 0..k, 2 m + 1 for m the largest
    per-axis integer frequency among them (at most side)."""
    k = (torch.fft.fftfreq(side) * side).round().abs()
    per_axis = torch.maximum(k[:, None], k[None, :])
    lowpass = band_masks(side, edges).cumsum(0).clamp(max=1).bool()
    return [min(side, 2 * int(per_axis[m].max()) + 1) for m in lowpass]


@dataclass
class FrequencyVQConfig(MultiScaleVQConfig):
    """Frequency-band VQ settings: those of ``MultiScaleVQConfig`` (autoencoder, codebook, ``phi_ratio``,
    ``init_from``, dead-code restart) but the scales, which follow from

    band_edges: upper edge of each band as a normalised frequency (cycles per latent sample), increasing, in
        (0, 0.5], the last 0.5 (the spectrum up to Nyquist; the corners above join the last band).
    latent_size: the latent's side (image side / downsample: 8 for 32 px at ``(1, 2, 2)``), which the bands and
        grids are computed for.
    resample: ``spectral`` (DFT resampling, exact grids) or ``area`` (area down, bicubic up, Nyquist grids); see
        the module docstring. ``area`` is the default so that folders saved before the option load as they were.
    grids: each band's token-grid side; empty: the resampling's rule (``exact_grids`` or ``nyquist_grids``); a grid
        smaller than the rule is an error.
    """

    band_edges: tuple[float, ...] = (0.0625, 0.125, 0.25, 0.5)
    latent_size: int = 8
    resample: str = "area"
    grids: tuple[int, ...] = ()

    def __post_init__(self):
        edges = self.band_edges = tuple(float(e) for e in self.band_edges)
        if not edges or any(not 0 < e <= 0.5 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ConfigError(f"model.band_edges must increase within (0, 0.5], got {list(edges)}")
        if edges[-1] != 0.5:
            raise ConfigError(
                f"model.band_edges must end at 0.5 (Nyquist) so the bands cover the spectrum; got {edges[-1]}"
            )
        if self.resample not in ("spectral", "area"):
            raise ConfigError(f"model.resample must be spectral or area, got {self.resample!r}")
        rule = exact_grids if self.resample == "spectral" else nyquist_grids
        need = rule(self.latent_size, edges)
        grids = tuple(self.grids) or tuple(need)
        if len(grids) != len(edges):
            raise ConfigError(f"model.grids gives {len(grids)} sides for {len(edges)} bands")
        for k, (g, n) in enumerate(zip(grids, need)):
            if not n <= g <= self.latent_size:
                raise ConfigError(
                    f"band {k} (up to {edges[k]:g} cycles/sample) needs a grid side of at least {n} (the "
                    f"{rule.__name__} rule of resample: {self.resample}) and at most the latent's "
                    f"{self.latent_size}; got {g}"
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
        if config.resample == "spectral":
            self.down_mode = self.up_mode = "spectral"
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
        """What band k quantises: what is left of the latent up to its edge, resampled to its grid."""
        return resize(self._filter(rest, self.lowpass[k]), side, self.down_mode)
