"""Expectation over transformation (EOT): random purifications applied inside the protection loop.

Each draw applies one randomly chosen purification to the batch, differentiably: ``resize`` (down and
up again), ``blur`` (Gaussian) and ``jpeg`` (a real Pillow JPEG at a random quality in the forward
pass and, in the backward pass, the gradient of a differentiable JPEG, ``guardkit.jpeg_surrogate``: BPDA,
Athalye et al. 2018, with a surrogate that knows which changes a re-save keeps). Optimising the expected
objective over these makes a protection survive them (Athalye et al., "Synthesizing robust
adversarial examples", 2018).
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from guardkit.jpeg_surrogate import jpeg_surrogate

PURIFICATIONS = ("jpeg", "resize", "blur")


def parse_eot(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"jpeg,blur"`` -> ("jpeg", "blur"); empty or "none" -> (). Unknown names raise ValueError."""
    if spec is None:
        return ()
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    names = [n for n in names if n != "none"]
    unknown = sorted(set(names) - set(PURIFICATIONS))
    if unknown:
        raise ValueError(f"unknown EOT purification(s) {', '.join(unknown)}; choose from {', '.join(PURIFICATIONS)}")
    return tuple(names)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, device=generator.device))


def jpeg_bpda(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG round trip in the forward pass, identity gradient (straight-through)."""
    return x + (real_jpeg(x, quality) - x).detach()


def jpeg_through_surrogate(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG round trip in the forward pass, the gradient of ``guardkit.jpeg_surrogate`` (a step-by-step
    differentiable JPEG) in the backward pass: the optimiser learns which changes a re-save keeps."""
    approx = jpeg_surrogate(x, quality)
    return approx + (real_jpeg(x, quality) - approx).detach()


def real_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """``x`` [B,3,H,W] in [0, 1] saved by Pillow as JPEG at ``quality`` and decoded again (no gradient)."""
    from PIL import Image

    with torch.no_grad():
        out = []
        for image in x.detach().float().clamp(0, 1).cpu():
            array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(array).save(buf, format="JPEG", quality=quality)
            decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            out.append(torch.from_numpy(decoded.copy()).permute(2, 0, 1).float() / 255)
        return torch.stack(out).to(x.device, x.dtype)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def random_purification(x: torch.Tensor, kinds: Sequence[str], generator: torch.Generator) -> torch.Tensor:
    """One random purification from ``kinds`` applied to ``x`` [B,3,H,W] in [0, 1]."""
    if not kinds:
        return x
    kind = kinds[int(torch.randint(len(kinds), (), generator=generator, device=generator.device))]
    if kind == "jpeg":
        return jpeg_through_surrogate(x, int(round(_uniform(generator, 50, 95))))
    if kind == "blur":
        return gaussian_blur(x, _uniform(generator, 0.5, 1.5))
    height, width = x.shape[-2:]
    scale = _uniform(generator, 0.5, 0.9)
    small = F.interpolate(x, size=(max(8, int(height * scale)), max(8, int(width * scale))), mode="bilinear",
                          align_corners=False, antialias=True)
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
