"""Video data: clips of ``data.frames`` frames from the formats users have, and Moving Fashion-MNIST.

Formats (``data.path``):

- frame folders: ``root/<class>/<video>/<frame>.png|jpg`` (labels from the class folders) or ``root/<video>/<frame>``
  (unlabelled), frames in sorted name order;
- arrays: a ``.npy`` / ``.npz`` file of uint8 frames, or a folder holding ``train.npz`` / ``test.npz`` (``data.split``;
  what ``moving_fashion_mnist`` writes: ``clips`` (N, T, H, W[, C]) and ``labels``). A 4-D array without a layout
  is read as (N, T, H, W) unless its first axis is the shorter of the two leading ones and the file is a ``.npy``:
  the standard Moving MNIST file is (T, N, H, W) = (20, 10000, 64, 64); ``data.layout`` (``NT`` or ``TN``) says so
  explicitly;
- video files (``.gif`` through Pillow; ``.mp4`` / ``.webm`` through PyAV, the optional extra ``video``).

A video yields non-overlapping clips of ``frames`` frames taken every ``frame_stride`` frames; each frame is resized
and converted like an image (``data.image_size``, ``data.channels``); ``random_flip`` flips a whole clip. A clip
with a corrupt frame or an unreadable file is skipped and counted, as images are.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from visgen.data.config import IMAGE_EXTENSIONS, DataError, to_tensor

VIDEO_EXTENSIONS = {".mp4", ".webm", ".gif", ".avi", ".mov", ".mkv"}
FRAME_EXTENSIONS = IMAGE_EXTENSIONS - {".gif"}  # a .gif is a whole video
ARRAY_EXTENSIONS = {".npy", ".npz"}


def _pyav():
    try:
        import av
    except ImportError:
        raise DataError('reading .mp4 / .webm needs PyAV: pip install "visgen[video]" (or pip install av)') from None
    return av


def read_video_file(path: Path) -> list[Image.Image]:
    """Every frame of a video file as PIL images (GIF through Pillow, the rest through PyAV)."""
    if path.suffix.lower() == ".gif":
        with Image.open(path) as im:
            frames = []
            for i in range(getattr(im, "n_frames", 1)):
                im.seek(i)
                frames.append(im.convert("RGB"))
            return frames
    av = _pyav()
    with av.open(str(path)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]


class VideoDataset(torch.utils.data.Dataset):
    """Clips (T, C, H, W) in [-1, 1] with labels; see the module docstring. ``classes``: the label names."""

    classes: list[str] = []

    def __init__(self, cfg, seed: int = 0):
        self.cfg, self.seed, self.epoch = cfg, seed, 0
        if cfg.frames < 1 or cfg.frame_stride < 1:
            raise DataError(
                f"data.frames and data.frame_stride must be at least 1, got {cfg.frames}, {cfg.frame_stride}"
            )
        self.span = (cfg.frames - 1) * cfg.frame_stride + 1
        path = Path(cfg.path).expanduser()
        self.videos: list = []  # per video: a list of frame paths, an array (T, H, W[, C]), or a video file path
        self.labels: list[int] = []
        self.lengths: list[int] = []
        if path.is_file() and path.suffix.lower() in ARRAY_EXTENSIONS:
            self._from_array(path)
        elif path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            self._add_file(path, -1)
        elif path.is_dir() and (path / f"{cfg.split}.npz").is_file():
            self._from_array(path / f"{cfg.split}.npz")
        elif path.is_dir():
            self._from_folder(path)
        else:
            raise DataError(f"{path} is no video data (frame folders, .npy / .npz arrays or video files)")
        self.index = [
            (v, c) for v, n in enumerate(self.lengths) for c in range(max(0, (n - self.span) // self.span + 1))
        ]
        if not self.index:
            raise DataError(f"{path}: no video holds {cfg.frames} frames at stride {cfg.frame_stride}")
        if cfg.limit is not None and cfg.limit < len(self.index):
            random.Random(seed).shuffle(self.index)
            self.index = sorted(self.index[: cfg.limit])

    # ---- sources ---------------------------------------------------------------------------------------------------

    def _from_array(self, path: Path):
        try:
            if path.suffix.lower() == ".npz":
                with np.load(path, allow_pickle=False) as f:
                    key = "clips" if "clips" in f else f.files[0]
                    clips = f[key]
                    labels = f["labels"] if "labels" in f else None
                    self.classes = [str(c) for c in f["classes"]] if "classes" in f else []
            else:
                clips, labels = np.load(path, allow_pickle=False), None
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read the video array {path}: {e}") from None
        if clips.dtype != np.uint8 or clips.ndim not in (4, 5):
            raise DataError(f"{path}: expected uint8 frames (N, T, H, W[, C]), got {clips.dtype} {clips.shape}")
        layout = self.cfg.layout
        if layout == "auto":
            layout = "TN" if path.suffix.lower() == ".npy" and clips.shape[0] < clips.shape[1] else "NT"
        if layout == "TN":
            clips = np.swapaxes(clips, 0, 1)
        elif layout != "NT":
            raise DataError(f"data.layout must be auto, NT or TN, got {self.cfg.layout!r}")
        self.videos = list(clips)
        self.lengths = [len(v) for v in clips]
        self.labels = [int(x) for x in labels] if labels is not None else [-1] * len(clips)

    def _from_folder(self, root: Path):
        subdirs = sorted(d for d in root.iterdir() if d.is_dir())
        has_frames = lambda d: any(f.suffix.lower() in FRAME_EXTENSIONS for f in d.iterdir())
        if subdirs and not any(has_frames(d) for d in subdirs):  # root/<class>/<video>/<frame>
            self.classes = [d.name for d in subdirs]
            for label, d in enumerate(subdirs):
                for item in sorted(d.iterdir()):
                    self._add(item, label)
        else:
            for item in sorted(root.iterdir()):
                self._add(item, -1)

    def _add(self, item: Path, label: int):
        if item.is_dir():
            frames = sorted(f for f in item.iterdir() if f.suffix.lower() in FRAME_EXTENSIONS)
            if frames:
                self.videos.append(frames)
                self.lengths.append(len(frames))
                self.labels.append(label)
        elif item.suffix.lower() in VIDEO_EXTENSIONS:
            self._add_file(item, label)

    def _add_file(self, path: Path, label: int):
        if path.suffix.lower() != ".gif":
            _pyav()  # a clear message before anything else when PyAV is missing
        try:
            n = len(read_video_file(path))
        except (OSError, UnidentifiedImageError, ValueError, DataError) as e:
            if isinstance(e, DataError):
                raise
            n = 0  # unreadable: no clips from it, counted below
            self.unreadable = getattr(self, "unreadable", 0) + 1
        self.videos.append(path)
        self.lengths.append(n)
        self.labels.append(label)

    # ---- items -------------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _frames(self, v: int, start: int) -> list:
        video = self.videos[v]
        picks = range(start, start + self.span, self.cfg.frame_stride)
        if isinstance(video, np.ndarray):
            return [Image.fromarray(video[t]) for t in picks]
        if isinstance(video, list):
            out = []
            for t in picks:
                img = Image.open(video[t])
                img.load()
                out.append(img)
            return out
        frames = read_video_file(video)
        return [frames[t] for t in picks]

    def __getitem__(self, i: int) -> dict | None:
        v, c = self.index[i]
        try:
            clip = torch.stack([to_tensor(f, self.cfg) for f in self._frames(v, c * self.span)])
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, IndexError):
            return None  # a corrupt frame or file: counted by collate, reported by the trainer
        if self.cfg.random_flip and random.Random(hash((self.seed, self.epoch, v, c))).random() < 0.5:
            clip = clip.flip(-1)
        return {"image": clip, "label": self.labels[v]}


# ---- Moving Fashion-MNIST --------------------------------------------------------------------------------------------


def bounce(p0: np.ndarray, v: np.ndarray, t: np.ndarray, limit: float) -> np.ndarray:
    """Positions at times ``t`` of a point starting at ``p0`` with velocity ``v`` between walls at 0 and ``limit``,
    reflected elastically: the triangle wave limit - |((p0 + v t) mod 2 limit) - limit|."""
    x = p0 + v * t[..., None]
    return limit - np.abs(np.mod(x, 2 * limit) - limit)


def moving_fashion_mnist(items: np.ndarray, item_labels: np.ndarray, num_clips: int, frames: int = 16, size: int = 64,
                         max_items: int = 2, seed: int = 0,
                         speed: tuple[float, float] = (2.0, 4.0)) -> dict[str, np.ndarray]:  # fmt: skip
    """Clips of one or two Fashion-MNIST items (``items`` (M, 28, 28) uint8) moving at constant velocity inside a
    ``size`` x ``size`` frame and bouncing off its walls (Srivastava et al. 2015's Moving MNIST, with clothes).
    Returns ``clips`` (N, T, size, size) uint8 (items composited by maximum), ``labels`` (the first item's class),
    ``positions`` (N, T, max_items, 2) top-left corners (row, column) before rounding to pixels, ``velocities``
    (N, max_items, 2) at the first frame (pixels per frame, ``speed`` (2 to 4) in any direction), ``counts`` (items per
    clip). Seeded: the same arguments give the same clips."""
    rng = np.random.default_rng(seed)
    side = items.shape[-1]
    limit = float(size - side)
    t = np.arange(frames, dtype=np.float64)
    clips = np.zeros((num_clips, frames, size, size), dtype=np.uint8)
    positions = np.full((num_clips, frames, max_items, 2), np.nan)
    velocities = np.full((num_clips, max_items, 2), np.nan)
    labels = np.zeros(num_clips, dtype=np.int64)
    counts = rng.integers(1, max_items + 1, num_clips)
    for n in range(num_clips):
        for k in range(counts[n]):
            j = rng.integers(len(items))
            if k == 0:
                labels[n] = item_labels[j]
            p0 = rng.uniform(0, limit, 2)
            angle, v = rng.uniform(0, 2 * math.pi), rng.uniform(*speed)
            velocities[n, k] = v * np.array([math.sin(angle), math.cos(angle)])
            path = bounce(p0, velocities[n, k], t, limit)
            positions[n, :, k] = path
            for f, (r, c) in enumerate(np.rint(path).astype(int)):
                np.maximum(
                    clips[n, f, r : r + side, c : c + side], items[j], out=clips[n, f, r : r + side, c : c + side]
                )
    return {"clips": clips, "labels": labels, "positions": positions, "velocities": velocities, "counts": counts}
