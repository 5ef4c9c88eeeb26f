"""Face-centred regions at a model's resolution, for methods whose models need a fixed input size.

A photo of any size and aspect ratio: the method protects a square around its faces, seen by the
model resized to ``size`` x ``size`` (512 for Stable Diffusion), and the perturbation, computed at
the photo's own resolution (so the budget holds in photo pixels), is pasted back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F

from guardkit.types import Face


@dataclass(frozen=True)
class ModelSpace:
    """A square ``box`` (x0, y0, side) of the photo and the model resolution ``size`` it maps to."""

    x0: int
    y0: int
    side: int
    size: int

    @classmethod
    def around(cls, height: int, width: int, faces: Sequence[Face], size: int, *, scale: float = 2.2) -> "ModelSpace":
        """The square around all ``faces`` grown ``scale`` times (the centre square when there is no
        face), as large as fits in the photo and never smaller than the faces' union."""
        if faces:
            left = min(f.box[0] for f in faces)
            top = min(f.box[1] for f in faces)
            right = max(f.box[2] for f in faces)
            bottom = max(f.box[3] for f in faces)
            cx, cy = (left + right) / 2, (top + bottom) / 2
            side = max(right - left, bottom - top) * scale
        else:
            cx, cy, side = width / 2, height / 2, min(height, width)
        side = int(round(min(max(side, 8), height, width)))
        x0 = int(round(min(max(cx - side / 2, 0), width - side)))
        y0 = int(round(min(max(cy - side / 2, 0), height - side)))
        return cls(x0, y0, side, size)

    def crop(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, :, self.y0:self.y0 + self.side, self.x0:self.x0 + self.side]

    def to_model(self, region: torch.Tensor) -> torch.Tensor:
        """[B,3,side,side] -> [B,3,size,size], differentiable (antialiased when shrinking)."""
        if self.side == self.size:
            return region
        return F.interpolate(region, size=(self.size, self.size), mode="bilinear", align_corners=False,
                             antialias=self.side > self.size).clamp(0, 1)

    def faces(self, faces: Sequence[Face]) -> list[Face]:
        """``faces`` in model coordinates."""
        k = self.size / self.side

        def move(x: float, y: float) -> tuple[float, float]:
            return ((x - self.x0 + 0.5) * k - 0.5, (y - self.y0 + 0.5) * k - 0.5)

        out = []
        for f in faces:
            (l, t), (r, b) = move(f.box[0], f.box[1]), move(f.box[2], f.box[3])
            points = tuple(move(x, y) for x, y in f.landmarks)
            out.append(replace(f, box=(l, t, r, b), landmarks=points))  # type: ignore[arg-type]
        return out

    def face_mask(self, faces: Sequence[Face], batch: int, *, grow: float = 1.3) -> torch.Tensor:
        """0/1 mask [B,1,side,side] over each image's face boxes grown ``grow`` times."""
        mask = torch.zeros(batch, 1, self.side, self.side)
        for f in faces:
            cx, cy = (f.box[0] + f.box[2]) / 2 - self.x0, (f.box[1] + f.box[3]) / 2 - self.y0
            half_w, half_h = (f.box[2] - f.box[0]) * grow / 2, (f.box[3] - f.box[1]) * grow / 2
            x0, x1 = max(int(cx - half_w), 0), min(int(cx + half_w) + 1, self.side)
            y0, y1 = max(int(cy - half_h), 0), min(int(cy + half_h) + 1, self.side)
            mask[f.image_index, :, y0:y1, x0:x1] = 1
        return mask

    def paste(self, images: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        out[:, :, self.y0:self.y0 + self.side, self.x0:self.x0 + self.side] = region
        return out


def group_faces(faces: Sequence[Face], *, together: float = 1.6) -> list[list[Face]]:
    """Faces that can share one model square: a face joins a group when the union of their boxes is at
    most ``together`` times the largest face's side, so a group photo's distant faces each get their own
    square at a useful resolution instead of one shrunken square (or one that cannot hold them all)."""
    groups: list[list[Face]] = []

    def side(members: Sequence[Face]) -> float:
        return max(max(f.box[2] for f in members) - min(f.box[0] for f in members),
                   max(f.box[3] for f in members) - min(f.box[1] for f in members))

    for face in sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1])):
        for group in groups:
            largest = max(side([f]) for f in [*group, face])
            if side([*group, face]) <= together * largest:
                group.append(face)
                break
        else:
            groups.append([face])
    return groups or [[]]
