"""Purifier ``jpeg``: a real Pillow JPEG round trip at ``quality=75`` (the FaceLock paper reports 60, 75
and 90; Tab. 3 / A6). Differentiable by BPDA (Athalye et al. 2018): the JPEG in the forward pass, the
identity backward. Shorthand: ``jpeg60`` is ``jpeg:quality=60``.

Example: ``Jpeg(RunConfig(), quality=60).purify(images)`` for images ``[B,3,H,W]`` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from guardkit.config import RunConfig, build_config
from guardkit.eot import jpeg_bpda
from guardkit.errors import ConfigError
from guardkit.specs import Shorthand

from .common import check_images


@dataclass(frozen=True)
class JpegConfig:
    """``quality``: Pillow JPEG quality, 1-100 (the paper: 60, 75, 90)."""

    quality: int = 75

    def __post_init__(self) -> None:
        if isinstance(self.quality, bool) or not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise ConfigError(f"jpeg quality must be an integer in 1..100, got {self.quality!r}")


class Jpeg:
    """Real JPEG round trip (Pillow, 4:2:0 chroma as Pillow's default); straight-through gradient."""

    name: ClassVar[str] = "jpeg"
    differentiable: ClassVar[bool] = True
    shorthand: ClassVar[Shorthand] = Shorthand("quality")  # jpeg60: quality=60

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config: JpegConfig = build_config(JpegConfig, options)

    def load(self) -> None:
        pass

    def purify(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_images(self.name, images)
        return jpeg_bpda(images, self.config.quality)
