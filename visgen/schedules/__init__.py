"""Schedules: token grid <-> sequence of units, positions, masks, and the input for the next unit."""

from __future__ import annotations

from visgen.config import ConfigError
from visgen.schedules.base import Schedule
from visgen.schedules.raster import RasterSchedule

SCHEDULES = {"raster": RasterSchedule}


def build_schedule(name: str, grid: tuple[int, int], continuous: bool = False, channels: int = 0) -> Schedule:
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; known: {sorted(SCHEDULES)}")
    return SCHEDULES[name](grid, continuous=continuous, channels=channels)


__all__ = ["Schedule", "RasterSchedule", "SCHEDULES", "build_schedule"]
