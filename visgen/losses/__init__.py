"""Losses for tokenizer training: patch discriminator and an LPIPS-style perceptual loss."""

from visgen.losses.adversarial import PatchDiscriminator, hinge_d_loss
from visgen.losses.perceptual import PerceptualLoss

__all__ = ["PatchDiscriminator", "hinge_d_loss", "PerceptualLoss"]
