"""Video features for Frechet distances: FVD on the standard I3D, and an offline stand-in trained here.

- ``i3d``: FVD (Unterthiner et al. 2018) as StyleGAN-V and FAR compute it, on the TorchScript I3D
  (``i3d_torchscript.pt``; its 400 logits before the softmax): clips resized so the shorter side is 224, centre
  cropped, in [-1, 1]. The file is read from a local path (``weights``, or the torch hub checkpoint folder); offline,
  a clear message says where to get it. Reported as ``fvd``.
- ``mfmnistvid``: a small 3-D convolutional network trained here on Moving Fashion-MNIST to name the first item's
  class and the quadrant of its first motion (``eval/train_video_classifier.py``; bundled). The motion label makes
  its features depend on the frames' order, so clips that move wrongly score far off. Reported as
  ``fvd_mfmnistvid``, never as FVD.

Both take uint8 clips (N, T, H, W, C) and return pooled features (N, D); the statistics and the distance are the
image harness's (``visgen.metrics.fidelity``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visgen.checkpoint import CheckpointError, PretrainedMixin, register_model
from visgen.metrics.fidelity import weights_digest

ASSETS = Path(__file__).resolve().parent.parent / "assets"
VIDEO_CLASSIFIER_ASSETS = {"mfmnistvid": "moving-fmnist-video-classifier"}
I3D = "i3d"
I3D_FILE = "i3d_torchscript.pt"
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"


@dataclass
class VideoClassifierConfig:
    """Video classifier settings.

    num_classes: item classes; num_motions: motion classes (4: the quadrant of the first velocity).
    widths: channels of the 3-D convolution stages; the first halves height and width, each later one halves time,
        height and width.
    image_size: frame side; other sizes are resized (bilinear) before the network.
    class_names: names in label order.
    """

    num_classes: int = 10
    num_motions: int = 4
    widths: tuple[int, ...] = (16, 32, 64, 128)
    image_size: int = 64
    class_names: list[str] | None = None


def motion_labels(velocities: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The quadrant (0..3) of each clip's first item's first velocity (N, items, 2) as (row, column): 2 x (down) +
    (right)."""
    v = torch.as_tensor(np.asarray(velocities))[:, 0]
    return (v[:, 0] >= 0).long() * 2 + (v[:, 1] >= 0).long()


@register_model("video-classifier")
class VideoClassifier(PretrainedMixin, nn.Module):
    """3-D CNN over grey clips returning pooled features, class logits and motion logits."""

    config_class = VideoClassifierConfig

    def __init__(self, config: VideoClassifierConfig):
        super().__init__()
        config.widths = tuple(config.widths)
        self.config = c = config
        layers: list[nn.Module] = []
        c_in = 1
        for i, w in enumerate(c.widths):
            stride = (1, 2, 2) if i == 0 else (2, 2, 2)
            layers += [nn.Conv3d(c_in, w, 3, stride, 1, bias=False), nn.BatchNorm3d(w), nn.ReLU()]
            c_in = w
        self.body = nn.Sequential(*layers)
        self.classes = nn.Linear(c_in, c.num_classes)
        self.motions = nn.Linear(c_in, c.num_motions)

    @property
    def feature_dim(self) -> int:
        return self.classes.in_features

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clips in [-1, 1] (B, T, C, H, W) -> (features (B, D), class logits, motion logits)."""
        x = clips.float().mean(2, keepdim=True).transpose(1, 2)  # grey (B, 1, T, H, W)
        s = self.config.image_size
        if x.shape[-2:] != (s, s):
            B, _, T = x.shape[:3]
            x = F.interpolate(x.transpose(1, 2).flatten(0, 1), size=(s, s), mode="bilinear", antialias=True)
            x = x.view(B, T, 1, s, s).transpose(1, 2)
        pooled = self.body(x).mean(dim=(2, 3, 4))
        return pooled, self.classes(pooled), self.motions(pooled)


def _to_float(clips_NTHWC: torch.Tensor) -> torch.Tensor:
    """uint8 (N, T, H, W, C) -> float (N, T, C, H, W) in [-1, 1]."""
    return clips_NTHWC.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0


def i3d_input(clips_NTHWC: torch.Tensor, resolution: int = 224) -> torch.Tensor:
    """uint8 clips -> the I3D's input (N, 3, T, 224, 224) in [-1, 1]: the shorter side resized to 224 (bilinear),
    centre crop, grey repeated to RGB."""
    x = _to_float(clips_NTHWC)
    N, T, C, H, W = x.shape
    if C == 1:
        x = x.expand(-1, -1, 3, -1, -1)
    scale = resolution / min(H, W)
    size = (resolution, math.ceil(W * scale)) if H <= W else (math.ceil(H * scale), resolution)
    x = F.interpolate(x.flatten(0, 1), size=size, mode="bilinear", align_corners=False).view(N, T, 3, *size)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    x = x[..., top : top + resolution, left : left + resolution]
    return x.transpose(1, 2).contiguous()


def i3d_path(weights: str | Path | None) -> Path:
    """The local I3D file: ``weights`` when given (it must exist), else the torch hub checkpoint folder's, fetched
    there once when the network allows; offline, an error that says what to do."""
    hint = (
        f"FVD needs the TorchScript I3D that StyleGAN-V and FAR use ({I3D_FILE}): download it from {I3D_URL} and "
        f"pass --i3d-weights PATH, or put it at {Path(torch.hub.get_dir()) / 'checkpoints' / I3D_FILE}; "
        "or score with --video-extractor mfmnistvid (fvd_mfmnistvid, offline)"
    )
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointError(f"no I3D weights at {path}. {hint}")
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / I3D_FILE
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(I3D_URL, str(path), progress=False)
        except Exception as e:  # no network, a proxy, a moved file: all end in the same instructions
            raise CheckpointError(f"could not download the I3D weights ({e}). {hint}") from e
    return path


@dataclass
class VideoExtractor:
    """A clip feature extractor (``i3d`` or a bundled video classifier), duck-typed like the image harness's
    ``Extractor`` (``name``, ``weights_hash``, ``features``) so its reference statistics cache the same way."""

    name: str
    weights: str | None = None

    @property
    def metric_name(self) -> str:
        return "fvd" if self.name == I3D else f"fvd_{self.name}"

    def resolved_weights(self) -> Path:
        if self.name == I3D:
            return i3d_path(self.weights)
        if self.weights:
            return Path(self.weights)
        if self.name not in VIDEO_CLASSIFIER_ASSETS:
            known = sorted({I3D, *VIDEO_CLASSIFIER_ASSETS})
            raise CheckpointError(f"unknown video feature extractor {self.name!r}; known: {known}")
        path = ASSETS / VIDEO_CLASSIFIER_ASSETS[self.name]
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"no weights for {self.name} at {path}: train them with eval/train_video_classifier.py "
                "or pass --video-extractor-weights DIR"
            )
        return path

    def weights_hash(self) -> str:
        return weights_digest(self.resolved_weights())

    def build(self, device: str):
        path = self.resolved_weights()
        if self.name == I3D:
            try:
                net = torch.jit.load(str(path), map_location=device).eval()
            except (RuntimeError, ValueError) as e:
                raise CheckpointError(f"{path} is not a TorchScript I3D: {e}") from e
            return lambda x: net(i3d_input(x).to(device), rescale=False, resize=False, return_features=True)
        net = VideoClassifier.from_pretrained(path).to(device).eval()
        return lambda x: net(_to_float(x).to(device))[0]

    @torch.no_grad()
    def features(self, clips_NTHWC: torch.Tensor, device: str, batch_size: int = 32) -> dict[str, torch.Tensor]:
        """{"fd": pooled features (N, D) float32} of uint8 clips (N, T, H, W, C)."""
        if clips_NTHWC.dtype != torch.uint8 or clips_NTHWC.dim() != 5:
            raise ValueError(
                f"expected uint8 clips N x T x H x W x C, got {clips_NTHWC.dtype} {tuple(clips_NTHWC.shape)}"
            )
        net = self.build(device)
        out = [net(clips_NTHWC[i : i + batch_size]).float().cpu() for i in range(0, len(clips_NTHWC), batch_size)]
        return {"fd": torch.cat(out)}
