"""Method ``cw``: Carlini-Wagner L2 (FaceLock paper, Alg. 4): x' = (tanh(w) + 1) / 2 from w = 0, minimise
||x' - x||^2 - c * ||E(x') - E(x)|| with Adam (c = 0.03, lr = 0.03 as released), then clipped to the
budget (the engine's projection). Latent distances are in the VAE's own units. Protects a face-centred
square at ``-O resolution=512`` and pastes it back. Where guardkit departs from the paper and the
released code: docs/methods.md.

Example: ``guardkit run --method cw --encoder sd-vae photo.jpg -o out/``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from guardkit.attack import project, report_step
from guardkit.config import Budget, RunConfig, build_config
from guardkit.errors import ConfigError
from guardkit.latent_attack import per_photo
from guardkit.region import ModelSpace, group_faces
from guardkit.types import Encoder, Face, WeightedLoss


@dataclass(frozen=True)
class CWConfig:
    """c: weight of the latent term; lr: Adam's learning rate (both as FaceLock's released
    ``main_defend.py``); start: "zero" (w = 0, x' starts as flat grey: Alg. 4 and the released code) or
    "photo" (w = atanh(2x - 1)); resolution as for the other methods."""

    c: float = 0.03
    lr: float = 0.03
    start: str = "zero"
    resolution: int = 512

    def __post_init__(self) -> None:
        if self.resolution % 8 or self.resolution < 8:
            raise ConfigError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        if self.start not in ("zero", "photo"):
            raise ConfigError(f"start must be 'zero' or 'photo', got {self.start!r}")


class CW:
    """Carlini-Wagner L2 in tanh space with Adam (Alg. 4), then clipped to the L-inf budget.

    Minimises ``||x' - x||^2 (summed) - c * objective`` over w, x' = (tanh(w) + 1) / 2, from w = 0; the
    default objective is the released code's latent norm (``latent-norm``, in the VAE's own units).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"encoder"})
    needs_gradients: ClassVar[bool] = True
    default_losses: ClassVar[dict[str, float]] = {"latent-norm": 1.0}
    default_steps: ClassVar[int] = 100
    config_class: ClassVar[type] = CWConfig

    def __init__(self, run: RunConfig, *, encoder: Encoder, losses: Sequence[WeightedLoss], **options: Any) -> None:
        self.run, self.encoder, self.losses = run, encoder, list(losses)
        self.config = build_config(CWConfig, options)

    def protect(self, images: torch.Tensor, faces: Sequence[Face], budget: Budget) -> torch.Tensor:
        return per_photo(images, faces, lambda image, own: self._protect_photo(image, own, budget))

    def _protect_photo(self, image: torch.Tensor, faces: Sequence[Face], budget: Budget) -> torch.Tensor:
        """One photo [1,3,H,W] and its faces: its squares never depend on the batch's other photos."""
        out = image
        for group in group_faces(faces):  # distant faces: one square each
            space = ModelSpace.around(image.shape[2], image.shape[3], group, self.config.resolution)
            region = space.crop(image).detach()
            out = space.paste(out, project(self._optimise(space, region, budget), region, budget))
        return out

    def _optimise(self, space: ModelSpace, region: torch.Tensor, budget: Budget) -> torch.Tensor:
        """Adam on w, with x' = (tanh(w) + 1) / 2, minimising ||x' - x||^2 - c * objective."""
        from guardkit.attack import combine
        from guardkit.view import View

        with torch.no_grad():
            clean = space.to_model(region)
            clean_latent = self.encoder.encode(clean * 2 - 1)
        if self.config.start == "zero":
            w = torch.zeros_like(region, requires_grad=True)
        else:
            w = torch.atanh((region * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)).requires_grad_(True)
        optimiser = torch.optim.Adam([w], lr=self.config.lr)
        for step in range(budget.steps):
            adv = (torch.tanh(w) + 1) / 2
            view = View(clean, space.to_model(adv), encoder=self.encoder, clean_latent=clean_latent)
            distortion = (adv - region).pow(2).flatten(1).sum(1)
            loss = (distortion - self.config.c * combine(self.losses, view)).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            report_step(step + 1, budget.steps)
        return (torch.tanh(w.detach()) + 1) / 2
