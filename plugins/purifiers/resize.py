"""Purifier ``resize``: down to ``scale=0.5`` of each side (bilinear, antialiased) and back up (bilinear),
the FaceLock paper's setting. Shorthand: ``resize50`` is ``resize:scale=0.5``.

Example: ``Resize(RunConfig(), scale=0.25).purify(images)`` for images ``[B,3,H,W]`` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from guardkit.config import RunConfig, build_config
from guardkit.errors import ConfigError
from guardkit.specs import Shorthand

from .common import check_images


@dataclass(frozen=True)
class ResizeConfig:
    """``scale``: the intermediate size as a fraction of each side (0.5: half width, half height)."""

    scale: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not 0 < self.scale <= 4:
            raise ConfigError(f"resize scale must be in (0, 4], got {self.scale!r}")


class Resize:
    """Down to ``scale`` of each side (bilinear, antialiased) and back to the photo's size (bilinear)."""

    name: ClassVar[str] = "resize"
    differentiable: ClassVar[bool] = True
    shorthand: ClassVar[Shorthand] = Shorthand("scale", 100)  # resize50: scale=0.5

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config: ResizeConfig = build_config(ResizeConfig, options)

    def load(self) -> None:
        pass

    def purify(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_images(self.name, images)
        h, w = images.shape[-2:]
        size = (max(1, round(h * self.config.scale)), max(1, round(w * self.config.scale)))
        if size == (h, w):
            return images
        small = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        back = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return back.clamp(0, 1)
