"""Schedules: token grid <-> sequence of units, positions, masks, and the input for the next unit."""

from __future__ import annotations

from visgen.config import ConfigError
from visgen.schedules.base import Schedule
from visgen.schedules.next_scale import NextScaleSchedule
from visgen.schedules.raster import RasterSchedule

SCHEDULES = ("raster", "next_scale")


def build_schedule(name: str, tokenizer, image_size: int) -> Schedule:
    """The schedule ``name`` over ``tokenizer``'s tokens for images of side ``image_size``."""
    if name == "raster":
        return RasterSchedule(tokenizer.grid_shape(image_size), not tokenizer.discrete, tokenizer.latent_channels)
    if name == "next_scale":
        if not hasattr(tokenizer, "scales"):
            raise ConfigError("the next_scale schedule needs a multi-scale tokenizer (type: msvq)")
        tokenizer.grid_shape(image_size)  # checks the last scale against the image size
        return NextScaleSchedule(tokenizer)
    raise ConfigError(f"unknown schedule {name!r}; known: {list(SCHEDULES)}")


__all__ = ["Schedule", "RasterSchedule", "NextScaleSchedule", "SCHEDULES", "build_schedule"]
