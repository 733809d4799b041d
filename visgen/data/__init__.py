"""Data sets in the formats users have; see ``images.py``."""

from visgen.data.config import DataConfig, DataError
from visgen.data.images import ImageDataset, batch_size_of, build_dataset, collate

__all__ = ["DataConfig", "DataError", "ImageDataset", "batch_size_of", "build_dataset", "collate"]
