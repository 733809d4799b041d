"""Metrics: reconstruction (PSNR, SSIM), and the FID/IS harness."""

from visgen.metrics.recon import psnr, ssim, to_uint8

__all__ = ["psnr", "ssim", "to_uint8"]
