"""Resizing feature maps by the matrix of ``F.interpolate``'s linear map.

Every interpolation mode is linear in its input, so resizing (B, C, h, w) to (H, W) is one product with an
(h * w, H * W) matrix, built once per (sizes, mode, device, dtype) by interpolating the identity in fp64 and applied
in fp32 (or fp64). It gives what ``F.interpolate`` gives (to rounding) and runs as one batched matmul: PyTorch's CUDA
bicubic kernel runs one thread per output pixel over all B x C planes, about 5 ms a call for the 16 x 16 maps of a
VAR batch of 256 (18 calls to sample and decode one). Maps of up to 32 x 32 a side go through the matrix; larger
ones (whose matrix would outgrow the work it saves) through ``F.interpolate``.

Mode ``"spectral"`` is not ``F.interpolate``'s: it resamples through the 2-D DFT (``spectral_matrix``), keeping the
frequencies both grids hold and no others, so a map whose spectrum fits the smaller grid comes back exactly from a
round trip, and downsampling after upsampling is the identity (what a frequency-band tokenizer needs: each band's
content survives its grid exactly).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

MAX_MATRIX_SIDE = 32


def _frequencies(n: int) -> list[int]:
    """The integer frequencies of an n-sample DFT, as ``fftfreq(n) * n`` lists them (n even: -n/2 once)."""
    return list(range(-(n // 2), (n + 1) // 2))


@functools.lru_cache(maxsize=64)
def spectral_matrix(n: int, m: int) -> torch.Tensor:
    """(n, m) fp64 matrix that resamples a length-n signal (a row) to m samples through the DFT: the frequencies
    |k| < min(n, m) / 2 carry over with their amplitude; at an even side's Nyquist frequency (k = +-side/2, one bin)
    downsampling folds +m/2 onto -m/2, as sampling would, and upsampling splits an even n's Nyquist bin between
    +-n/2, so the result is real and downsampling it back returns the input exactly."""
    spectrum = torch.fft.fft(torch.eye(n, dtype=torch.float64), dim=-1)  # row i: the DFT of the i-th unit signal
    out = torch.zeros(n, m, dtype=torch.complex128)
    if m <= n:
        for k in _frequencies(m):
            out[:, k % m] += spectrum[:, k % n]
        if m % 2 == 0 and m < n:
            out[:, m // 2] += spectrum[:, (m // 2) % n]  # +m/2 aliases onto -m/2 (the same bin of the m grid)
    else:
        for k in _frequencies(n):
            if n % 2 == 0 and k == -(n // 2):  # the Nyquist bin, shared by +-n/2 on the larger grid
                out[:, k % m] += spectrum[:, k % n] / 2
                out[:, (-k) % m] += spectrum[:, k % n] / 2
            else:
                out[:, k % m] += spectrum[:, k % n]
    return torch.fft.ifft(out, dim=-1).real * (m / n)


def _spectral(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    rows, cols = (spectral_matrix(a, b).to(x.device, x.dtype) for a, b in zip(x.shape[-2:], size))
    return torch.einsum("...hw,hH,wW->...HW", x, rows, cols)


def _interpolate(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "spectral":
        return _spectral(x, size)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x, size=size, mode=mode, **kwargs)


@functools.lru_cache(maxsize=256)
def _matrix(src: tuple[int, int], dst: tuple[int, int], mode: str, device: torch.device, dtype: torch.dtype):
    basis = torch.eye(src[0] * src[1], dtype=torch.float64).view(-1, 1, *src)
    return _interpolate(basis, dst, mode).reshape(len(basis), -1).to(device, dtype)


def resize(x: torch.Tensor, size: int | tuple[int, int], mode: str) -> torch.Tensor:
    """``F.interpolate(x, size, mode=mode)`` (align_corners=False) of (B, C, h, w), or the DFT resampling of
    ``mode="spectral"``; ``x`` itself at its own size."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    src = tuple(x.shape[-2:])
    if src == size:
        return x
    if max(*src, *size) > MAX_MATRIX_SIDE:
        return _interpolate(x, size, mode)
    # weights and sums in fp32 (as F.interpolate accumulates), the result in x's dtype, whatever the autocast
    dtype = torch.promote_types(x.dtype, torch.float32)
    m = _matrix(src, size, mode, x.device, dtype)
    with torch.autocast(x.device.type, enabled=False):
        y = x.reshape(*x.shape[:-2], -1).to(dtype) @ m
    return y.view(*x.shape[:-2], *size).to(x.dtype)
