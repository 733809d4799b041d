"""Schedules: token grid <-> sequence of units, positions, masks, and the input for the next unit."""

from __future__ import annotations

from visgen.config import ConfigError
from visgen.schedules.base import Schedule
from visgen.schedules.next_frame import NextFrameSchedule
from visgen.schedules.next_scale import ContinuousScaleSchedule, NextScaleSchedule
from visgen.schedules.parallel import ParallelSchedule
from visgen.schedules.pixel import PIXEL_UNITS, PixelSchedule
from visgen.schedules.raster import RasterSchedule

SCHEDULES = ("raster", "parallel", "next_scale", "next_frequency", "flow_scale", "pixel", "next_frame")


def build_schedule(
    name: str, tokenizer, image_size: int, scales: list[int] | None = None, unit_size: int = 1,
    unit: str = "subpixel", frames: int = 0, regions: int = 4,
) -> Schedule:  # fmt: skip
    """The schedule ``name`` over ``tokenizer``'s tokens for images of side ``image_size`` (or clips of ``frames``
    frames of that side)."""
    if (name == "next_frame") != (frames > 0):
        raise ConfigError(
            "video models (model.frames > 0) take schedule: next_frame, and next_frame needs model.frames, the clip "
            f"length; got schedule {name!r} with frames {frames}"
        )
    if name == "parallel" and (hasattr(tokenizer, "scales") or hasattr(tokenizer, "band_edges")):
        raise ConfigError(
            "the parallel schedule reads one token grid; a multi-scale or frequency-band tokenizer goes with "
            "schedule: next_scale or next_frequency"
        )
    if name == "next_frame":
        if tokenizer.discrete:
            raise ConfigError("the next_frame schedule predicts continuous frame latents: use a kl tokenizer")
        return NextFrameSchedule(frames, tokenizer.grid_shape(image_size), tokenizer.latent_channels)
    if unit_size != 1 and name != "raster":
        raise ConfigError(f"unit_size applies to the raster schedule; {name!r} fixes its own units")
    if unit != "subpixel" and name != "pixel":
        raise ConfigError(f"unit: {unit} applies to the pixel schedule; {name!r} fixes its own units")
    if name == "pixel":
        if type(tokenizer).__name__ != "PixelTokenizer":
            raise ConfigError("the pixel schedule reads raw sub-pixels: model.tokenizer must be pixel (or pixel:grey)")
        if unit not in PIXEL_UNITS:
            raise ConfigError(f"unknown unit {unit!r} of the pixel schedule; known: {', '.join(PIXEL_UNITS)}")
        side, _ = tokenizer.grid_shape(image_size)
        return PixelSchedule(side, tokenizer.config.channels, unit)
    if type(tokenizer).__name__ == "PixelTokenizer":
        raise ConfigError(f"the pixel tokenizer's sub-pixels go through schedule: pixel, not {name!r}")
    if name == "raster":
        grid = tokenizer.grid_shape(image_size)
        if unit_size < 1 or (grid[0] * grid[1]) % unit_size:
            raise ConfigError(
                f"unit_size must be at least 1 and divide the {grid[0]} x {grid[1]} = {grid[0] * grid[1]} tokens, "
                f"got {unit_size}"
            )
        return RasterSchedule(grid, not tokenizer.discrete, tokenizer.latent_channels, unit_size)
    if name == "parallel":  # PAR (Wang et al. 2024)
        return ParallelSchedule(tokenizer.grid_shape(image_size), regions, not tokenizer.discrete,
                                tokenizer.latent_channels)  # fmt: skip
    bands = hasattr(tokenizer, "band_edges")
    if name == "next_frequency":  # NFIG (Huang et al. 2025): VAR's machinery over frequency bands
        if not bands:
            raise ConfigError("the next_frequency schedule needs a frequency-band tokenizer (type: freqvq)")
        tokenizer.grid_shape(image_size)
        return NextScaleSchedule(tokenizer)
    if name == "next_scale":
        if bands:
            raise ConfigError("a frequency-band tokenizer (freqvq) goes with schedule: next_frequency")
        if not hasattr(tokenizer, "scales"):
            raise ConfigError("the next_scale schedule needs a multi-scale tokenizer (type: msvq)")
        tokenizer.grid_shape(image_size)  # checks the last scale against the image size
        return NextScaleSchedule(tokenizer)
    if name == "flow_scale":
        if tokenizer.discrete:
            raise ConfigError("the flow_scale schedule needs a continuous tokenizer (type: kl or diffusers-kl)")
        grid = tokenizer.grid_shape(image_size)
        return ContinuousScaleSchedule(grid, tokenizer.latent_channels, scales or _doubling(grid[0]))
    raise ConfigError(f"unknown schedule {name!r}; known: {list(SCHEDULES)}")


def _doubling(side: int) -> list[int]:
    out = [side]
    while out[0] > 1:
        out.insert(0, out[0] // 2)
    return out


__all__ = [
    "Schedule",
    "RasterSchedule",
    "ParallelSchedule",
    "PixelSchedule",
    "NextScaleSchedule",
    "ContinuousScaleSchedule",
    "SCHEDULES",
    "build_schedule",
]
