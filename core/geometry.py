"""Geometry shared by parts: random similarity jitter of face chips and of faces (EOT), moving faces."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import torch
import torch.nn.functional as F

from guardkit.types import Face


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


def shift_face(face: Face, dx: float, dy: float) -> Face:
    """``face`` with its box and landmarks moved by (dx, dy) photo pixels."""
    left, top, right, bottom = face.box
    points = tuple((x + dx, y + dy) for x, y in face.landmarks)
    return replace(face, box=(left + dx, top + dy, right + dx, bottom + dy), landmarks=points)  # type: ignore[arg-type]


def jitter_faces(faces: Sequence[Face], draws: int, generator: torch.Generator, *, scale: float = 0.08,
                 shift: float = 0.05, rotation_deg: float = 5.0) -> list[Face]:
    """``draws`` random similarity moves of every face's box and landmarks: ``draws * len(faces)`` faces
    (K blocks of N, the order of ``jitter_chips``).

    Each draw scales a face about its box centre by ``1 + U(-scale, scale)``, rotates its landmarks by
    ``U(-rotation_deg, rotation_deg)``, and shifts it by ``U(-shift, shift)`` of its box side in x and y.
    A face model's own ``align`` then cuts its chip from the photo at that place: expectation over the
    detectors, boxes and landmark fits of face recognition pipelines we cannot see (they all crop a little
    differently), read from the photo itself rather than from a resampled chip. The box stays upright
    (box-cropping models see the scale and shift; landmark-aligned ones also the rotation)."""
    out: list[Face] = []
    rand = torch.rand((draws, max(len(faces), 1), 4), generator=generator, device=generator.device).tolist()
    for k in range(draws):
        for i, face in enumerate(faces):
            u_scale, u_angle, u_x, u_y = (2 * v - 1 for v in rand[k][i])
            left, top, right, bottom = face.box
            cx, cy = (left + right) / 2, (top + bottom) / 2
            side = max(right - left, bottom - top)
            s = 1 + scale * u_scale
            a = math.radians(rotation_deg * u_angle)
            dx, dy = shift * side * u_x, shift * side * u_y
            cos, sin = s * math.cos(a), s * math.sin(a)
            points = tuple((cx + cos * (x - cx) - sin * (y - cy) + dx, cy + sin * (x - cx) + cos * (y - cy) + dy)
                           for x, y in face.landmarks)
            half_w, half_h = s * (right - left) / 2, s * (bottom - top) / 2
            box = (cx + dx - half_w, cy + dy - half_h, cx + dx + half_w, cy + dy + half_h)
            out.append(replace(face, box=box, landmarks=points))  # type: ignore[arg-type]
    return out
