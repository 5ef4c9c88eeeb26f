"""A differentiable stand-in for a baseline JPEG round trip, for the gradient of a real one.

A real JPEG has no useful gradient, and the identity (BPDA) tells the optimiser nothing about what JPEG
keeps: a perturbation spent on coefficients that quantise back to where they were (the high frequencies of
a smooth patch, most of the chroma) is lost on the first re-save. This module follows a baseline libjpeg
encode and decode step by step (Shin and Song, "JPEG-resistant adversarial images", NIPS MLSec 2017;
Reich et al., "Differentiable JPEG: the devil is in the details", WACV 2024): RGB -> YCbCr, 4:2:0 chroma
(2x2 mean), level shift, 8x8 DCT, the standard tables scaled by the quality as libjpeg scales them,
rounding replaced by ``round(u) + (u - round(u))**3`` (the right value at every integer, a slope that
vanishes where a coefficient sits on its quantisation level, as an unmoving coefficient does), and back.
``guardkit.eot.jpeg_through_surrogate`` takes the value from Pillow's real JPEG and the gradient from this.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU-T T.81 Annex K tables (luminance, chrominance), row-major by frequency.
_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
           47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32


def quant_table(base: tuple[int, ...], quality: int) -> torch.Tensor:
    """libjpeg's ``jpeg_quality_scaling`` applied to ``base``: an [8, 8] table of steps in 1..255."""
    quality = min(100, max(1, int(quality)))
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    table = torch.tensor([min(255, max(1, (q * scale + 50) // 100)) for q in base], dtype=torch.float32)
    return table.view(8, 8)


def dct_matrix(device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The orthonormal 8-point DCT-II as a matrix D: ``D @ block @ D.T`` is JPEG's forward transform."""
    n = torch.arange(8, dtype=torch.float64)
    matrix = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    matrix[0] /= math.sqrt(2)
    return matrix.to(device=device, dtype=dtype)


def soft_round(u: torch.Tensor) -> torch.Tensor:
    """``round(u) + (u - round(u))**3``: exact at integers, with a slope of 0 there and 3/4 half-way."""
    rounded = torch.round(u).detach()
    return rounded + (u - rounded) ** 3


_TO_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


def _blockwise(planes: torch.Tensor, table: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Level-shifted planes [N, 1, H, W] (H, W multiples of 8) through DCT, quantisation and back: the 64
    basis images as a stride-8 convolution (``basis`` [64, 1, 8, 8]), ``table`` [64]."""
    steps = table.view(1, 64, 1, 1)
    coefficients = F.conv2d(planes, basis, stride=8) / steps
    return F.conv_transpose2d(soft_round(coefficients) * steps, basis, stride=8)


def jpeg_surrogate(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Differentiable approximation of a JPEG round trip of ``x`` [B, 3, H, W] in [0, 1] at ``quality``
    (4:2:0, as Pillow saves by default), in [0, 1] up to the final clipping (the value is the real JPEG's;
    this is for its gradient)."""
    batch, _, height, width = x.shape
    pad_h, pad_w = (-height) % 16, (-width) % 16
    rgb = F.pad(x * 255 - 128, (0, pad_w, 0, pad_h), mode="replicate")  # level-shifted: Y - 128, Cb and Cr at 0
    to_ycc, to_rgb = (torch.tensor(m, device=x.device, dtype=x.dtype) for m in (_TO_YCC, _TO_RGB))
    ycc = torch.einsum("ij,bjhw->bihw", to_ycc, rgb)
    dct = dct_matrix(x.device, x.dtype)
    basis = (dct[:, None, :, None] * dct[None, :, None, :]).reshape(64, 1, 8, 8)  # basis[u*8+v] = outer(D[u], D[v])
    luma, chroma = (quant_table(t, quality).to(x.device, x.dtype).flatten() for t in (_LUMA, _CHROMA))
    y = _blockwise(ycc[:, :1], luma, basis)
    small = F.avg_pool2d(ycc[:, 1:], 2)
    restored = _blockwise(small.reshape(batch * 2, 1, *small.shape[-2:]), chroma, basis)
    chroma_planes = F.interpolate(restored.view(batch, 2, *small.shape[-2:]), scale_factor=2, mode="bilinear",
                                  align_corners=False)
    out = torch.einsum("ij,bjhw->bihw", to_rgb, torch.cat([y, chroma_planes], 1))
    return (out[..., :height, :width] + 128) / 255
