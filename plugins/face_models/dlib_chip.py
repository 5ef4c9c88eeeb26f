"""dlib's 150 px face chip, differentiable: ``get_face_chip_details(shape5, 150, 0.25)`` and
``extract_image_chips`` (grown box crop, ``pyramid_down<2>`` levels, bilinear sampling, uint8
truncation), and dlib's ``jitter_image`` for EOT. The uint8 roundings and truncations are straight-through.

Sources: dlib's ``image_transforms/interpolation.h`` and ``image_transforms/image_pyramid.h``.
Example: ``extract_chip(image, plan_chip(*face_chip_details(face.landmarks), image.shape[1:]))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from guardkit.errors import ConfigError

CHIP_SIZE = 150
CHIP_PADDING = 0.25

# dlib's 5-point template (get_face_chip_details), in chip units before padding
_TEMPLATE5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)

Rect = tuple[float, float, float, float]  # dlib drectangle: left, top, right, bottom (inclusive)


def _lround(v: float) -> int:
    """``std::lround``: halves away from zero."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def _area(rect: Rect) -> float:
    left, top, right, bottom = rect
    return 0.0 if top > bottom or left > right else (right - left + 1) * (bottom - top + 1)


def _rect_down(rect: Rect) -> Rect:
    """``pyramid_down<2>::rect_down``: ``p / 2 - (1.25, 0.75)`` on both corners."""
    left, top, right, bottom = rect
    return (left / 2 - 1.25, top / 2 - 0.75, right / 2 - 1.25, bottom / 2 - 0.75)


def _rotated_corners(rect: Rect, angle: float) -> np.ndarray:
    """tl, tr, bl, br of ``rect`` rotated by ``angle`` about its centre (dlib's ``rotate_point``)."""
    left, top, right, bottom = rect
    cx, cy = (left + right) / 2, (top + bottom) / 2
    c, s = math.cos(angle), math.sin(angle)
    pts = np.array([[left, top], [right, top], [left, bottom], [right, bottom]], dtype=np.float64)
    d = pts - (cx, cy)
    return np.stack([c * d[:, 0] - s * d[:, 1] + cx, s * d[:, 0] + c * d[:, 1] + cy], axis=1)


def face_chip_details(
    landmarks: Sequence[tuple[float, float]], size: int = CHIP_SIZE, padding: float = CHIP_PADDING
) -> tuple[Rect, float]:
    """dlib's ``get_face_chip_details`` for 5 points: the chip's source rectangle and its angle."""
    to = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    frm = (padding + _TEMPLATE5) / (2 * padding + 1) * size
    # find_similarity_transform(from, to): Umeyama's least squares, as dlib writes it
    mf, mt = frm.mean(0), to.mean(0)
    sigma_from = ((frm - mf) ** 2).sum(1).mean()
    cov = (to - mt).T @ (frm - mf) / len(frm)
    u, d, vt = np.linalg.svd(cov)
    s = np.eye(2)
    if np.linalg.det(cov) < 0 or (np.linalg.det(cov) == 0 and np.linalg.det(u) * np.linalg.det(vt) < 0):
        flip = 1 if d[1] < d[0] else 0  # a reflection: flip the weaker axis
        s[flip, flip] = -1
    rot = u @ s @ vt
    c = float(np.trace(np.diag(d) @ s) / sigma_from) if sigma_from != 0 else 1.0
    m = c * rot
    t = mt - m @ mf
    p = m @ np.array([1.0, 0.0])
    angle = math.atan2(p[1], p[0])
    scale = math.hypot(p[0], p[1])
    cx, cy = m @ np.array([size / 2, size / 2]) + t
    w = size * scale - 1  # centered_drect(p, w, h) shrinks by one first
    return (cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2), angle


@dataclass(frozen=True)
class ChipPlan:
    """How ``extract_image_chips`` pulls one chip: crop ``box`` (inclusive, in the source image; ``None``
    when nothing of it lies in the image), ``downs`` passes of ``pyramid_down<2>``, then bilinear
    sampling of chip pixel (col, row) at ``affine @ (col, row, 1)`` in the downsampled crop."""

    box: tuple[int, int, int, int] | None
    downs: int
    affine: np.ndarray  # 2x3, float64


def plan_chip(rect: Rect, angle: float, image_hw: tuple[int, int], size: int = CHIP_SIZE) -> ChipPlan:
    """The geometry of dlib's ``extract_image_chips`` (bilinear) for one square chip of ``size``."""
    area = float(size * size)
    height, width = image_hw
    # pyramid depth and the border it needs (dlib computes both on the untranslated rectangle)
    depth, grow, down = 0, 2.0, _rect_down(rect)
    while _area(down) > area:
        down, depth, grow = _rect_down(down), depth + 1, grow * 2 + 2
    rot = _rotated_corners(rect, angle)
    grown = (rot[:, 0].min() - grow, rot[:, 1].min() - grow, rot[:, 0].max() + grow, rot[:, 1].max() + grow)
    clipped = (max(grown[0], 0.0), max(grown[1], 0.0), min(grown[2], width - 1.0), min(grown[3], height - 1.0))
    box = tuple(_lround(v) for v in clipped)
    if box[0] > box[2] or box[1] > box[3]:
        return ChipPlan(None, 0, np.zeros((2, 3)))
    # the pyramid level to sample from, found on the rectangle translated into the crop
    level_rect: Rect = (rect[0] - box[0], rect[1] - box[1], rect[2] - box[0], rect[3] - box[1])
    downs = 0
    while _area(_rect_down(level_rect)) > area:
        level_rect, downs = _rect_down(level_rect), downs + 1
    corners = _rotated_corners(level_rect, angle)  # tl, tr, bl, br
    # find_affine_transform from chip corners (0,0), (size-1,0), (0,size-1): exact for three points
    ex, ey = (corners[1] - corners[0]) / (size - 1), (corners[2] - corners[0]) / (size - 1)
    affine = np.stack([ex, ey, corners[0]], axis=1)
    return ChipPlan(box, downs, affine)  # type: ignore[arg-type]


def _ste(x: Tensor, y: Tensor) -> Tensor:
    """Forward ``y``, backward identity through ``x``."""
    return x + (y - x).detach()


_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


def pyramid_down(x255: Tensor) -> Tensor:
    """dlib's ``pyramid_down<2>`` on ``[C,H,W]`` integer-valued 0..255: 5x5 binomial, stride 2, no
    padding, output ``((H-3)//2, (W-3)//2)``, integer truncation (straight-through)."""
    c, h, w = x255.shape
    if h <= 8 or w <= 8:
        return x255.new_zeros((c, 0, 0))
    k = torch.outer(_BINOMIAL, _BINOMIAL).to(x255)  # integer weights: float32 sums stay exact
    out = F.conv2d(x255[None], k.expand(c, 1, 5, 5), stride=2, groups=c)[0] / 256.0
    return _ste(out, out.floor())


def sample_bilinear(src: Tensor, affine: np.ndarray, size: int) -> Tensor:
    """dlib's ``transform_image`` with ``interpolate_bilinear`` and a black background.

    ``src`` [C,H,W]; chip pixel (col, row) reads ``src`` at ``affine @ (col, row, 1)``; a point whose
    2x2 neighbourhood is not wholly inside ``src`` gives 0. Interpolated in float64, as dlib does,
    then truncated to an integer (straight-through). Returns [C,size,size] (dtype of ``src``).
    """
    c, h, w = src.shape
    if h == 0 or w == 0:
        return src.new_zeros((c, size, size))
    grid = np.arange(size, dtype=np.float64)
    cols, rows = np.meshgrid(grid, grid)  # rows[i, j] = i, cols[i, j] = j
    px = affine[0, 0] * cols + affine[0, 1] * rows + affine[0, 2]
    py = affine[1, 0] * cols + affine[1, 1] * rows + affine[1, 2]
    left, top = np.floor(px), np.floor(py)
    valid = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
    fx, fy = px - left, py - top
    li = np.where(valid, left, 0).astype(np.int64)
    ti = np.where(valid, top, 0).astype(np.int64)
    idx = ti * w + li
    dev = src.device
    flat = src.reshape(c, h * w).double()
    idx_t = torch.from_numpy(idx.reshape(-1)).to(dev)
    tl, tr = flat[:, idx_t], flat[:, idx_t + 1]
    bl, br = flat[:, idx_t + w], flat[:, idx_t + w + 1]
    fx_t = torch.from_numpy(fx.reshape(-1)).to(dev)
    fy_t = torch.from_numpy(fy.reshape(-1)).to(dev)
    mask = torch.from_numpy(valid.reshape(-1).astype(np.float64)).to(dev)
    out = ((1 - fy_t) * ((1 - fx_t) * tl + fx_t * tr) + fy_t * ((1 - fx_t) * bl + fx_t * br)) * mask
    out = _ste(out, out.floor())
    return out.reshape(c, size, size).to(src.dtype)


def _to255(x: Tensor) -> Tensor:
    """[0,1] -> 0..255 rounded to the uint8 grid dlib sees (straight-through)."""
    x = x * 255.0
    return _ste(x, x.round().clamp(0, 255))


def extract_chip(image: Tensor, plan: ChipPlan, size: int = CHIP_SIZE) -> Tensor:
    """One chip [3,size,size] in [0,1] (on the uint8 grid) from ``image`` [3,H,W] in [0,1] along ``plan``.

    Only the crop is touched (rounded to uint8, downsampled, sampled), so the cost follows the face.
    """
    if plan.box is None:
        return image.new_zeros((image.shape[0], size, size))
    left, top, right, bottom = plan.box
    level = _to255(image[:, top : bottom + 1, left : right + 1])
    for _ in range(plan.downs):
        level = pyramid_down(level)
    return sample_bilinear(level, plan.affine, size) / 255.0


def dlib_jitter(chips: Tensor, generator: torch.Generator) -> Tensor:
    """dlib's ``jitter_image``, differentiable: one random re-crop of each chip.

    A box of ``floor(144 / U(0.97, 0.99999))`` px centred on the chip centre shifted by
    ``round(U(-0.02, 0.02) * 144)`` px in x and y, rotated by ``U(-3, 3)`` degrees, re-extracted
    bilinearly to the chip size and mirrored left-right when ``U(0, 1) > 0.5``. The five numbers per
    chip come from ``generator`` (seed-deterministic), not from dlib's generator.
    ``chips`` [N,3,150,150] in [0,1] -> [N,3,150,150] in [0,1] (uint8 grid, straight-through).
    """
    n, _, size, size_w = chips.shape
    if size != size_w:
        raise ConfigError(f"dlib_jitter needs square chips, got {tuple(chips.shape)}")
    draws = torch.rand((n, 5), generator=generator, device=generator.device, dtype=torch.float64).cpu().numpy()
    inner = size - 6  # shrink_rect(get_rect(img), 3)
    centre = (3 + (size - 4) + 1) // 2  # dlib's integer center() of that rectangle
    out = []
    for i in range(n):
        u = draws[i]
        shift_x = math.floor((-0.02 + u[0] * 0.04) * inner + 0.5)
        shift_y = math.floor((-0.02 + u[1] * 0.04) * inner + 0.5)
        box = int(inner / (0.97 + u[2] * (0.99999 - 0.97)))
        angle = (-3 + u[3] * 6) * math.pi / 180
        left, top = centre + shift_x - box // 2, centre + shift_y - box // 2
        rect = (float(left), float(top), float(left + box - 1), float(top + box - 1))
        chip = extract_chip(chips[i], plan_chip(rect, angle, (size, size), size), size)
        if u[4] > 0.5:
            chip = chip.flip(-1)
        out.append(chip)
    return torch.stack(out)
