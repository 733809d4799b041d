"""A small ResNet classifier trained on the data set itself, as an offline feature extractor for FD / IS.

Inception weights cannot be downloaded on every machine; a classifier visgen trains on CIFAR-10 (or Fashion-MNIST)
gives features that run anywhere. Its numbers are reported under its own name (``fd_cifar10cls``), never as FID.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from visgen.checkpoint import PretrainedMixin, register_model


@dataclass
class ClassifierConfig:
    """Classifier settings.

    num_classes: output classes.
    widths: channels of the three stages (stride 1, 2, 2).
    blocks: residual blocks per stage.
    image_size: input side; other sizes are resized (bilinear) before the network.
    class_names: names in label order.
    """

    num_classes: int = 10
    widths: tuple[int, ...] = (64, 128, 256)
    blocks: int = 2
    image_size: int = 32
    class_names: list[str] | None = None


class _Basic(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


@register_model("classifier")
class Classifier(PretrainedMixin, nn.Module):
    """ResNet (He et al. 2016, the CIFAR variant) returning pooled features and logits."""

    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        config.widths = tuple(config.widths)
        self.config = c = config
        layers: list[nn.Module] = [
            nn.Conv2d(3, c.widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(c.widths[0]),
            nn.ReLU(),
        ]
        c_in = c.widths[0]
        for i, w in enumerate(c.widths):
            for b in range(c.blocks):
                layers.append(_Basic(c_in, w, 2 if (i > 0 and b == 0) else 1))
                c_in = w
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, c.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.fc.in_features

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] (B, 1 or 3, H, W) -> (pooled features (B, D), logits (B, num_classes))."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        s = self.config.image_size
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        pooled = self.body(images).mean(dim=(2, 3))
        return pooled, self.fc(pooled)
