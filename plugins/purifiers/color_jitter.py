"""Purifier ``color-jitter``: torchvision ``ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2,
hue=0.0)`` semantics, written in torch: factors uniform in ``[max(0, 1 - s), 1 + s]`` (hue: ``[-h, h]``,
``h <= 0.5``), applied in a random order; a zero strength skips that adjustment. Every photo of a
batch gets its own draw. No number shorthand (``color-jitter:hue=0.1``).

Example: ``ColorJitter(RunConfig(), hue=0.1).purify(images, torch.Generator().manual_seed(0))``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from guardkit.config import RunConfig, build_config
from guardkit.errors import ConfigError

from .common import check_images, uniform

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)


@dataclass(frozen=True)
class ColorJitterConfig:
    """Strengths as torchvision's ``ColorJitter``: factors uniform in ``[max(0, 1 - s), 1 + s]`` for
    brightness, contrast and saturation; a hue shift uniform in ``[-hue, hue]`` (``hue <= 0.5``, in turns)."""

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.0

    def __post_init__(self) -> None:
        for key in ("brightness", "contrast", "saturation", "hue"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"color-jitter {key} must be a number >= 0, got {value!r}")
        if self.hue > 0.5:
            raise ConfigError(f"color-jitter hue must be in [0, 0.5], got {self.hue!r}")


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def _blend(x: torch.Tensor, other: torch.Tensor | float, factor: float) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def adjust_brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(x, 0.0, factor)


def adjust_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(x, _gray(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(x, _gray(x), factor)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_rgb2hsv`` (h, s, v all in [0, 1])."""
    r, g, b = x.unbind(dim=-3)
    maxc = x.max(dim=-3).values
    minc = x.min(dim=-3).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc = (maxc - r) / cr_divisor
    gc = (maxc - g) / cr_divisor
    bc = (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_hsv2rgb``."""
    h, s, v = x.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    mask = i.unsqueeze(dim=-3) == torch.arange(6, device=i.device).view(-1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), dim=-3)
    a2 = torch.stack((t, v, v, q, p, p), dim=-3)
    a3 = torch.stack((p, p, t, v, v, q), dim=-3)
    a4 = torch.stack((a1, a2, a3), dim=-4)
    return torch.einsum("...ijk, ...xijk -> ...xjk", mask.to(x.dtype), a4)


def adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (in [-0.5, 0.5])."""
    hsv = _rgb_to_hsv(x)
    h = torch.remainder(hsv[..., 0, :, :] + shift, 1.0)
    return _hsv_to_rgb(torch.stack((h, hsv[..., 1, :, :], hsv[..., 2, :, :]), dim=-3))


class ColorJitter:
    """torchvision ``ColorJitter`` in torch: random brightness, contrast, saturation and hue, random order."""

    name: ClassVar[str] = "color-jitter"
    differentiable: ClassVar[bool] = True

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config: ColorJitterConfig = build_config(ColorJitterConfig, options)

    def load(self) -> None:
        pass

    def draw(self, generator: torch.Generator) -> tuple[list[int], float, float, float, float]:
        """One photo's draw: the order of the four adjustments and their factors (torchvision's get_params).
        The same number of draws is made whatever the strengths, so options never shift the stream."""
        cfg = self.config
        order = torch.randperm(4, generator=generator, device=generator.device).tolist()
        factors = [float(uniform(generator, 1, max(0.0, 1 - s), 1 + s))
                   for s in (cfg.brightness, cfg.contrast, cfg.saturation)]
        hue = float(uniform(generator, 1, -cfg.hue, cfg.hue))
        return order, factors[0], factors[1], factors[2], hue

    def jitter(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        order, brightness, contrast, saturation, hue = self.draw(generator)
        for index in order:
            if index == 0 and cfg.brightness > 0:
                image = adjust_brightness(image, brightness)
            elif index == 1 and cfg.contrast > 0:
                image = adjust_contrast(image, contrast)
            elif index == 2 and cfg.saturation > 0:
                image = adjust_saturation(image, saturation)
            elif index == 3 and cfg.hue > 0:
                image = adjust_hue(image, hue)
        return image

    def purify(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        check_images(self.name, images)
        return torch.stack([self.jitter(image, generator) for image in images])
