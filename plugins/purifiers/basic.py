"""Simple purifications: what an adversary (or a careless re-save) does to a protected photo.

The paper's settings (FaceLock, Tab. 3 / A6) are the defaults:

- ``jpeg``: a real Pillow JPEG round trip at ``quality=75`` (the paper reports 60, 75 and 90).
  Differentiable by BPDA (Athalye et al. 2018): the JPEG in the forward pass, the identity backward.
- ``blur``: Gaussian blur with an exact ``kernel=5``-tap kernel, ``sigma=1.5``, reflect padding.
- ``rotate``: a random angle uniform in ``(-degrees, degrees)``, ``degrees=10``, one angle per photo,
  about the photo's centre, bilinear. Positive angles turn counter-clockwise (as torchvision). Pixels
  the rotation brings in from outside the photo are filled by ``padding``: ``"reflection"`` (default:
  mirror the photo, so no black corners for a face model to key on), ``"border"`` (repeat the edge
  pixel) or ``"zeros"`` (black, torchvision's default fill).
- ``resize``: down to ``scale=0.5`` of each side (bilinear, antialiased) and back up (bilinear).
- ``color-jitter``: torchvision ``ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0)``
  semantics, written in torch: factors uniform in ``[max(0, 1 - s), 1 + s]`` (hue: ``[-h, h]``,
  ``h <= 0.5``), applied in a random order; a zero strength skips that adjustment. Every photo of a
  batch gets its own draw.

All take and return ``[B,3,H,W]`` in ``[0, 1]``; random draws come only from the ``generator`` passed
to ``purify``, so a seeded generator gives the same result. ``guardkit.specs.parse_spec`` turns the CLI's
shorthands (``jpeg75``, ``rotate10``, ``resize50``, ``blur15``, ``jpeg:quality=60``) into ``(name, options)``.

Example: ``Jpeg(RunConfig(), quality=60).purify(images, torch.Generator().manual_seed(0))``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from guardkit import hookimpl
from guardkit.config import RunConfig, build_config
from guardkit.eot import jpeg_bpda
from guardkit.errors import ConfigError

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    """``n`` draws uniform in ``[low, high]`` on the generator's device (CPU floats for scalars)."""
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device)


def _check_images(name: str, images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"purifier {name!r} expects images [B,3,H,W], got shape {tuple(images.shape)}")


# ----------------------------------------------------------------------------------------- jpeg
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

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config: JpegConfig = build_config(JpegConfig, options)

    def load(self) -> None:
        pass

    def purify(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(self.name, images)
        return jpeg_bpda(images, self.config.quality)


# ----------------------------------------------------------------------------------------- blur
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

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config: BlurConfig = build_config(BlurConfig, options)

    def load(self) -> None:
        pass

    def kernel1d(self, images: torch.Tensor) -> torch.Tensor:
        return gaussian_kernel1d(self.config.kernel, float(self.config.sigma), dtype=images.dtype,
                                 device=images.device)

    def purify(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(self.name, images)
        pad = self.config.kernel // 2
        if pad == 0:
            return images
        k = self.kernel1d(images)
        c = images.shape[1]
        mode = "reflect" if pad < min(images.shape[-2:]) else "replicate"
        x = F.pad(images, (pad, pad, pad, pad), mode=mode)
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c).clamp(0, 1)


# --------------------------------------------------------------------------------------- rotate
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

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config: RotateConfig = build_config(RotateConfig, options)

    def load(self) -> None:
        pass

    def angles(self, n: int, generator: torch.Generator) -> torch.Tensor:
        d = float(self.config.degrees)
        return _uniform(generator, n, -d, d)

    def purify(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_images(self.name, images)
        return rotate(images, self.angles(images.shape[0], generator), self.config.padding)


# --------------------------------------------------------------------------------------- resize
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

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config: ResizeConfig = build_config(ResizeConfig, options)

    def load(self) -> None:
        pass

    def purify(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(self.name, images)
        h, w = images.shape[-2:]
        size = (max(1, round(h * self.config.scale)), max(1, round(w * self.config.scale)))
        if size == (h, w):
            return images
        small = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        back = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return back.clamp(0, 1)


# --------------------------------------------------------------------------------- color-jitter
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
        factors = [float(_uniform(generator, 1, max(0.0, 1 - s), 1 + s))
                   for s in (cfg.brightness, cfg.contrast, cfg.saturation)]
        hue = float(_uniform(generator, 1, -cfg.hue, cfg.hue))
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
        _check_images(self.name, images)
        return torch.stack([self.jitter(image, generator) for image in images])


# ----------------------------------------------------------------------------- parse_purifier
@hookimpl
def guardkit_register_purifiers(register):
    register("jpeg", Jpeg, summary="Pillow JPEG round trip, quality=75 (straight-through gradient)")
    register("blur", Blur, summary="Gaussian blur, kernel=5 sigma=1.5")
    register("rotate", Rotate, summary="random rotation in (-degrees, degrees), degrees=10, reflection fill")
    register("resize", Resize, summary="down to scale=0.5 and back up (bilinear, antialiased)")
    register("color-jitter", ColorJitter, summary="torchvision ColorJitter: brightness/contrast/saturation=0.2, "
                                                  "hue=0")
