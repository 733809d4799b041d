"""What the image and video data sets share: the ``data`` section of a recipe, the error a data path raises, the
file extensions of images, and the conversion of one image to a tensor."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


class DataError(ValueError):
    """A data path or format that cannot be read."""


@dataclass
class DataConfig:
    """Where the images are and how to prepare them.

    path: an image folder (class subfolders give labels; a flat folder is unlabelled), a folder holding CIFAR-10's
        ``cifar-10-batches-py`` (or that folder itself), or a folder of MNIST / Fashion-MNIST IDX files.
    format: ``auto`` (detect from the folder), ``folder``, ``cifar10`` or ``idx``.
    split: ``train`` or ``test`` for CIFAR-10 batches and IDX files (image folders are split by their path).
    image_size: output side; images are resized (shorter side) and centre-cropped to it.
    channels: 3 turns grey images to RGB; 1 turns colour images to grey.
    random_flip: horizontal flips, chosen per (seed, epoch, index) so a resumed run sees the same flips.
    limit: use only the first ``limit`` images (after a fixed shuffle, so every class appears); clips for video.
    frames: clip length for video data (``visgen.data.video``: frame folders, .npy / .npz arrays, video files);
        0 reads images.
    frame_stride: take every ``frame_stride``-th frame of a video for a clip.
    layout: axes of a 4-D video array: ``auto``, ``NT`` (clips, frames, H, W) or ``TN`` (Moving MNIST's file).
    """

    path: str = ""
    format: str = "auto"
    split: str = "train"
    image_size: int = 32
    channels: int = 3
    random_flip: bool = False
    limit: int | None = None
    frames: int = 0
    frame_stride: int = 1
    layout: str = "auto"


def to_tensor(img: Image.Image, cfg: DataConfig) -> torch.Tensor:
    """``img`` resized (shorter side) and centre-cropped to ``cfg.image_size``, as float CHW in [-1, 1]."""
    img = img.convert("RGB" if cfg.channels == 3 else "L")
    w, h = img.size
    s = cfg.image_size
    if (w, h) != (s, s):
        scale = s / min(w, h)
        img = img.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)
