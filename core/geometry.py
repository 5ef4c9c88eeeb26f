"""Differentiable geometry shared by parts: random similarity jitter of face chips (EOT)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def jitter_chips(
    chips: torch.Tensor,
    draws: int,
    generator: torch.Generator,
    *,
    max_shift: float = 0.02,
    max_rotation_deg: float = 3.0,
    scale: tuple[float, float] = (0.97, 0.99999),
    border: int = 3,
    mirror: bool = True,
) -> torch.Tensor:
    """``draws`` random similarity re-crops of each chip: [N,3,S,S] -> [draws*N,3,S,S] (K blocks of N).

    Each draw crops a square of side ``(S - 2*border) / U(scale)`` centred on the chip centre shifted
    by up to ``max_shift`` of the side, rotated by up to ``max_rotation_deg``, resamples it to S x S
    (bilinear) and mirrors it with probability 0.5. The defaults are dlib's ``jitter_image``, which
    ``compute_face_descriptor(num_jitters=N)`` averages over: optimising over these draws
    (expectation over transformation) makes a protection survive that averaging. Randomness comes from
    ``generator`` only, so a seed gives the same draws.
    """
    n, _, height, width = chips.shape
    total = draws * n
    dev, dtype = chips.device, chips.dtype

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(total, generator=generator, device=generator.device).to(dev, dtype)

    inner = (height - 2 * border) / height
    side = inner / uniform(*scale)  # crop side as a fraction of the chip side
    shift_x = uniform(-max_shift, max_shift) * inner
    shift_y = uniform(-max_shift, max_shift) * inner
    angle = uniform(-max_rotation_deg, max_rotation_deg) * (math.pi / 180)
    flip = (torch.rand(total, generator=generator, device=generator.device) > 0.5).to(dev, dtype) if mirror \
        else torch.zeros(total, device=dev, dtype=dtype)
    sign = 1 - 2 * flip
    cos, sin = torch.cos(angle) * side, torch.sin(angle) * side
    # Output (u, v) in [-1, 1] -> input coordinates: centre + R(angle) * side * (sign*u, v).
    theta = torch.stack([
        torch.stack([cos * sign, -sin, shift_x * 2], dim=1),
        torch.stack([sin * sign, cos, shift_y * 2], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, [total, chips.shape[1], height, width], align_corners=True)
    source = chips.repeat(draws, 1, 1, 1)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
