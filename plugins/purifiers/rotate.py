"""Purifier ``rotate``: a random angle uniform in ``(-degrees, degrees)``, ``degrees=10`` (the FaceLock
paper's setting), one angle per photo, about the photo's centre, bilinear. Positive angles turn
counter-clockwise (as torchvision). Pixels the rotation brings in from outside the photo are filled by
``padding``: ``"reflection"`` (default: mirror the photo, so no black corners for a face model to key
on), ``"border"`` (repeat the edge pixel) or ``"zeros"`` (black, torchvision's default fill).
Shorthand: ``rotate5`` is ``rotate:degrees=5``.

Example: ``Rotate(RunConfig(), degrees=5).purify(images, torch.Generator().manual_seed(0))``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from guardkit.config import RunConfig, build_config
from guardkit.errors import ConfigError
from guardkit.specs import Shorthand

from .common import check_images, uniform


PADDINGS = ("reflection", "border", "zeros")


@dataclass(frozen=True)
class RotateConfig:
    """``degrees``: angles are uniform in ``(-degrees, degrees)``; ``padding``: how pixels from outside
    the photo are filled, ``"reflection"`` (mirror), ``"border"`` (edge pixel) or ``"zeros"`` (black)."""

    degrees: float = 10.0
    padding: str = "reflection"

    def __post_init__(self) -> None:
        if isinstance(self.degrees, bool) or not isinstance(self.degrees, (int, float)) or not 0 <= self.degrees <= 180:
            raise ConfigError(f"rotate degrees must be in [0, 180], got {self.degrees!r}")
        if self.padding not in PADDINGS:
            raise ConfigError(f"rotate padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}")


def rotate(images: torch.Tensor, angles_deg: torch.Tensor, padding: str = "reflection") -> torch.Tensor:
    """Rotate each photo of ``images`` [B,3,H,W] about its centre by ``angles_deg`` [B] (counter-clockwise),
    bilinear, in pixel space (right angles stay right on non-square photos)."""
    b, _, h, w = images.shape
    a = torch.deg2rad(angles_deg.to(device=images.device, dtype=images.dtype))
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    # output pixel (x, y) samples the input at R(x, y); normalised coordinates scale x by w/2 and y by h/2
    theta = torch.stack([
        torch.stack([cos, -sin * (h / w), zero], dim=1),
        torch.stack([sin * (w / h), cos, zero], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    return out.clamp(0, 1)


class Rotate:
    """Random rotation in ``(-degrees, degrees)``, one angle per photo, bilinear (affine_grid/grid_sample)."""

    name: ClassVar[str] = "rotate"
    differentiable: ClassVar[bool] = True
    shorthand: ClassVar[Shorthand] = Shorthand("degrees")  # rotate5: degrees=5

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config: RotateConfig = build_config(RotateConfig, options)

    def load(self) -> None:
        pass

    def angles(self, n: int, generator: torch.Generator) -> torch.Tensor:
        d = float(self.config.degrees)
        return uniform(generator, n, -d, d)

    def purify(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        check_images(self.name, images)
        return rotate(images, self.angles(images.shape[0], generator), self.config.padding)
