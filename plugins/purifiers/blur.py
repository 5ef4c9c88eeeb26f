"""Purifier ``blur``: Gaussian blur with an exact ``kernel=5``-tap kernel, ``sigma=1.5``, reflect padding
(the FaceLock paper's setting). Shorthand: ``blur15`` is ``blur:sigma=1.5``.

Example: ``Blur(RunConfig(), sigma=2.0).purify(images)`` for images ``[B,3,H,W]`` in [0, 1].
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
class BlurConfig:
    """``kernel``: odd kernel size in pixels; ``sigma``: standard deviation in pixels."""

    kernel: int = 5
    sigma: float = 1.5

    def __post_init__(self) -> None:
        if isinstance(self.kernel, bool) or not isinstance(self.kernel, int) or self.kernel < 1 or self.kernel % 2 == 0:
            raise ConfigError(f"blur kernel must be an odd integer >= 1, got {self.kernel!r}")
        if not isinstance(self.sigma, (int, float)) or not self.sigma > 0:
            raise ConfigError(f"blur sigma must be > 0, got {self.sigma!r}")


def gaussian_kernel1d(kernel: int, sigma: float, *, dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """The exact ``kernel``-tap Gaussian (torchvision's ``_get_gaussian_kernel1d``), summing to 1."""
    half = (kernel - 1) / 2
    t = torch.linspace(-half, half, kernel, dtype=torch.float64)
    weights = torch.exp(-0.5 * (t / sigma) ** 2)
    return (weights / weights.sum()).to(device=device, dtype=dtype)


class Blur:
    """Separable Gaussian blur with an exact ``kernel``-tap kernel; reflect padding (edge for tiny images)."""

    name: ClassVar[str] = "blur"
    differentiable: ClassVar[bool] = True
    shorthand: ClassVar[Shorthand] = Shorthand("sigma", 10)  # blur15: sigma=1.5

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config: BlurConfig = build_config(BlurConfig, options)

    def load(self) -> None:
        pass

    def kernel1d(self, images: torch.Tensor) -> torch.Tensor:
        return gaussian_kernel1d(self.config.kernel, float(self.config.sigma), dtype=images.dtype,
                                 device=images.device)

    def purify(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_images(self.name, images)
        pad = self.config.kernel // 2
        if pad == 0:
            return images
        k = self.kernel1d(images)
        c = images.shape[1]
        mode = "reflect" if pad < min(images.shape[-2:]) else "replicate"
        x = F.pad(images, (pad, pad, pad, pad), mode=mode)
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c).clamp(0, 1)
