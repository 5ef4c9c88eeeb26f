"""A visibility-aware budget: stronger change where the eye does not notice it, within an L-inf cap
and a whole-photo PSNR floor.

L-inf treats a pixel of flat cheek and a pixel of hair alike, but noise shows on smooth skin and hides
in texture (contrast masking; the same idea as Fawkes' DSSIM bound and JND models). ``texture_bound``
gives every pixel its own bound, ``eps * (floor + (1 - floor) * t)`` where ``t`` in [0, 1] is the local
luminance contrast (standard deviation in a small window, relative to the photo's busier pixels), so
flat regions get ``floor * eps`` and textured ones the full ``eps``. ``l2_cap`` turns a PSNR floor
(over the whole photo) into the L2 norm the perturbation may have. The engine still enforces the L-inf
cap on whatever a method returns; both are reported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)


def local_contrast(x: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Standard deviation of the luminance in a (2r+1)^2 window: [B,3,H,W] -> [B,1,H,W]."""
    luma = (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    size = 2 * radius + 1
    padded = F.pad(luma, (radius,) * 4, mode="replicate")
    mean = F.avg_pool2d(padded, size, stride=1)
    mean_sq = F.avg_pool2d(padded * padded, size, stride=1)
    return (mean_sq - mean * mean).clamp_min(0).sqrt()


def texture_bound(x: torch.Tensor, eps: float, *, floor: float = 0.5, busy_quantile: float = 0.8,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel L-inf bound [B,1,H,W] in ``[floor * eps, eps]``, larger where ``x`` has texture.

    ``t = min(1, contrast / q)`` with ``q`` the ``busy_quantile`` of the contrast over the pixels of
    ``mask`` (the region that may move; all pixels if None), so each photo is judged against itself."""
    if not 0 <= floor <= 1:
        raise ValueError(f"texture floor must be in [0, 1], got {floor}")
    contrast = local_contrast(x.detach().float())
    bounds = []
    for i in range(x.shape[0]):
        values = contrast[i].flatten()
        if mask is not None:
            values = values[mask[min(i, mask.shape[0] - 1)].flatten() > 0]
        q = torch.quantile(values[:1_000_000], busy_quantile) if values.numel() else contrast.new_tensor(1.0)
        t = (contrast[i] / q.clamp_min(1e-4)).clamp(max=1.0)
        bounds.append(eps * (floor + (1 - floor) * t))
    return torch.stack(bounds).to(x.dtype)


def l2_cap(psnr_floor: float, pixels: int) -> float:
    """The largest L2 norm (in [0, 1] units) a perturbation of a photo of ``pixels`` values (H*W*3) may
    have for the photo's PSNR to stay at or above ``psnr_floor`` dB."""
    return math.sqrt(pixels * 10 ** (-psnr_floor / 10))


def project_l2(delta: torch.Tensor, cap: torch.Tensor | float) -> torch.Tensor:
    """``delta`` [B,...] scaled down per image to an L2 norm of at most ``cap`` (a float or [B])."""
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    cap = torch.as_tensor(cap, dtype=delta.dtype, device=delta.device)
    return delta * (cap / norms).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
