"""What the simple purifiers share: the input check and uniform draws from the caller's generator."""

from __future__ import annotations

import torch

from guardkit.errors import ConfigError


def uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    """``n`` draws uniform in ``[low, high]`` on the generator's device (CPU floats for scalars)."""
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device)


def check_images(name: str, images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"purifier {name!r} expects images [B,3,H,W], got shape {tuple(images.shape)}")
