"""A personal cloak: one perturbation per person, learnt once in a canonical face frame (``guardkit enroll``)
and warped onto every new photo of that person through the face's landmarks (``guardkit run --cloak``).

The frame is a ``frame`` x ``frame`` square in which insightface's 5-point ArcFace template (eyes, nose,
mouth corners) fills the middle ``fill`` of the side: the 112-px chip every face model reads sits in the
centre and the rest covers the hair, ears and jaw that other detectors' crops reach. A cloak holds ``variants``
perturbations of that frame, each within L-inf ``eps``; a photo gets the variant its own pixels choose, so
two photos of one person usually carry different variants, pushed towards different decoy identities
(so that protected photos of one person link less to each other; measured in benchmarks/README.md). Placing costs one ``grid_sample`` of the
face's neighbourhood, independent of the photo's size.

A cloak holds no photo data and no embedding of the person: only the perturbations and how they were made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from guardkit.align import ARCFACE_TEMPLATE_112, correspondences, similarity_transform
from guardkit.types import Face
from guardkit.visibility import l2_cap

@dataclass(frozen=True)
class Cloak:
    """``perturbations`` [K,3,F,F] in [-eps, eps]: the K variants in the canonical frame (F = ``frame``).

    ``finder``: the face finder whose landmarks place it (the same at enrolment and when applied);
    ``face_models``: what it was optimised against; ``psnr_floor``: the whole-photo PSNR a placement keeps
    (0 = none); ``fill``: the share of the frame's side the 112-px ArcFace chip spans; ``kind``: the method that applies it; ``info``: how it was made (strength, steps, photo count)."""

    perturbations: torch.Tensor
    eps: float
    finder: str
    face_models: tuple[str, ...]
    psnr_floor: float = 0.0
    fill: float = 0.5
    kind: str = ""  # the method that places it ("": the engine's DEFAULT_CLOAK_METHOD)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def frame(self) -> int:
        return int(self.perturbations.shape[-1])

    @property
    def variants(self) -> int:
        return int(self.perturbations.shape[0])


def frame_template(frame: int, fill: float = 0.5) -> np.ndarray:
    """The canonical landmarks [5,2] (arcface5 order) in a ``frame`` x ``frame`` square: ArcFace's 112-px
    template scaled to ``fill`` of the frame and centred (0.5: the frame reaches half a chip beyond it)."""
    return ARCFACE_TEMPLATE_112 * (frame * fill / 112) + frame * (1 - fill) / 2


def feather(frame: int, band: float = 0.15, device: torch.device | str = "cpu") -> torch.Tensor:
    """[1,1,F,F] weights: 1 inside, a cosine ramp to 0 over the outer ``band`` of each side (no hard edge)."""
    ramp = max(1, int(round(band * frame)))
    position = torch.arange(frame, dtype=torch.float32, device=device)
    to_edge = torch.minimum(position, frame - 1 - position)
    profile = 0.5 - 0.5 * torch.cos(math.pi * (to_edge / ramp).clamp(max=1.0))
    return (profile[:, None] * profile[None, :])[None, None]


def frame_to_photo(face: Face, frame: int, fill: float = 0.5) -> np.ndarray:
    """The 3x3 similarity mapping photo pixel coordinates to canonical frame coordinates for ``face``."""
    src, dst = correspondences(face, frame_template(frame, fill))
    return np.vstack([similarity_transform(src, dst), [0.0, 0.0, 1.0]])


def footprint(face: Face, frame: int, height: int, width: int, fill: float = 0.5) -> tuple[int, int, int, int] | None:
    """The photo rectangle (x0, y0, x1, y1) the frame covers for ``face``, clipped to the photo; None
    when it lies outside."""
    to_photo = np.linalg.inv(frame_to_photo(face, frame, fill))
    corners = np.array([[0, 0, 1], [frame - 1, 0, 1], [0, frame - 1, 1], [frame - 1, frame - 1, 1]], dtype=np.float64)
    points = corners @ to_photo.T
    x0, y0 = max(0, int(math.floor(points[:, 0].min()))), max(0, int(math.floor(points[:, 1].min())))
    x1, y1 = min(width, int(math.ceil(points[:, 0].max())) + 1), min(height, int(math.ceil(points[:, 1].max())) + 1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def placement_theta(face: Face, frame: int, box: tuple[int, int, int, int], fill: float = 0.5) -> torch.Tensor:
    """grid_sample theta [2,3] that reads the frame for every pixel of the photo rectangle ``box``."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    region_to_photo = np.array([[max(w - 1, 1) / 2, 0, x0 + max(w - 1, 1) / 2],
                                [0, max(h - 1, 1) / 2, y0 + max(h - 1, 1) / 2], [0, 0, 1]])
    frame_norm = np.array([[2 / (frame - 1), 0, -1], [0, 2 / (frame - 1), -1], [0, 0, 1]])
    return torch.tensor((frame_norm @ frame_to_photo(face, frame, fill) @ region_to_photo)[:2], dtype=torch.float32)


def warp(perturbations: torch.Tensor, thetas: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Differentiable: frame perturbations [N,3,F,F] (feathered by the caller) read through ``thetas`` [N,2,3]
    into [N,3,h,w]; zero outside the frame."""
    grid = F.affine_grid(thetas.to(perturbations), [perturbations.shape[0], 3, *size], align_corners=True)
    return F.grid_sample(perturbations, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def choose_variant(image: torch.Tensor, variants: int) -> int:
    """The variant a photo [3,H,W] gets, from its own pixels: the same photo always gets the same one, and
    different photos of one person spread over the variants."""
    if variants <= 1:
        return 0
    pixels = torch.round(image.detach().float().flatten()[::101] * 255).to(torch.int64)
    digest = int((pixels * torch.arange(1, pixels.numel() + 1, dtype=torch.int64) % 1_000_003).sum())
    return digest % variants


def choose_faces(faces: Sequence[Face], which: str) -> list[Face]:
    """The faces of one photo the cloak goes on: ``largest`` (default), ``all``, or ``N`` (the N-th largest,
    1-based)."""
    ordered = sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    if which == "all":
        return ordered
    if which == "largest":
        return ordered[:1]
    if which.isdigit() and int(which) >= 1:
        return ordered[int(which) - 1:int(which)]
    raise ValueError(f"--face takes largest, all or a face number (1 = largest), got {which!r}")


def placeable(cloak: Cloak, faces: Sequence[Face], height: int, width: int) -> list[Face]:
    """The ``faces`` the cloak can go on in a ``height`` x ``width`` photo: those whose frame reaches into it
    (``place`` skips the others, so a photo with none of them is left unchanged)."""
    return [face for face in faces if footprint(face, cloak.frame, height, width, cloak.fill) is not None]


def place(cloak: Cloak, image: torch.Tensor, faces: Sequence[Face], variant: int | None = None) -> torch.Tensor:
    """The perturbation [3,H,W] the cloak puts on ``image`` [3,H,W] at ``faces`` (of this photo), within
    L-inf ``eps`` and, when the cloak has one, the whole-photo PSNR floor (scaled down to meet it). A face whose
    frame lies outside the photo gets nothing (see ``placeable``)."""
    height, width = image.shape[-2:]
    k = choose_variant(image, cloak.variants) if variant is None else variant
    source = (cloak.perturbations[k:k + 1].to(image) * feather(cloak.frame, device=image.device))
    delta = torch.zeros_like(image)
    for face in faces:
        box = footprint(face, cloak.frame, height, width, cloak.fill)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        patch = warp(source, placement_theta(face, cloak.frame, box, cloak.fill)[None], (y1 - y0, x1 - x0))[0]
        region = delta[:, y0:y1, x0:x1]
        delta[:, y0:y1, x0:x1] = torch.where(patch.abs() > region.abs(), patch, region)  # overlaps: the stronger
    delta = delta.clamp(-cloak.eps, cloak.eps)
    delta = (image + delta).clamp(0, 1) - image
    if cloak.psnr_floor > 0:
        cap = l2_cap(cloak.psnr_floor, delta.numel())
        norm = float(delta.norm())
        if norm > cap:
            delta = delta * (0.999 * cap / norm)
    return delta
