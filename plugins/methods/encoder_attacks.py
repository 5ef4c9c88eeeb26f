"""The FaceLock paper's baselines, each composed from an encoder and a loss (Alg. 2-4 of the paper).

- ``photoguard``: encoder attack towards a target latent, minimise ||E(x') - z_target||^2
  (Salman et al., "Raising the Cost of Malicious AI-Powered Image Editing", ICML 2023); the target is
  the VAE's zero latent, as in FaceLock's released code (``-O target_latent=image`` for the encoding of
  a flat grey image, ``-O target=0.5``).
- ``editshield``: maximise the latent distance to the clean latent, minus beta * ||x' - x||^2 (the
  perceptual-consistency term, beta = 0.1), with expectation over resizing and blurring (Chen et al.,
  "EditShield", arXiv 2311.12066).
- ``encoder``: the untargeted encoder attack, ascend ||E(x') - E(x)||^2 by signed steps (Alg. 2).
- ``vae``: descend ||D(E(x')) - x_target||^2 towards a flat grey target image (Alg. 3), on the
  unclamped decode.
- ``cw``: Carlini-Wagner L2 (Alg. 4): x' = (tanh(w) + 1) / 2 from w = 0, minimise
  ||x' - x||^2 - c * ||E(x') - E(x)|| with Adam (c = 0.03, lr = 0.03 as released), then clipped to the
  budget (the engine's projection).

Latent distances are in the VAE's own units (``latent_dist.mean``), as in the released code. Where
guardkit departs from the papers and the released code: docs/methods.md.

All protect a face-centred square at the encoder's resolution (``-O resolution=512``) and paste it
back; ``-O mask=face`` limits the change to the faces, ``-O eot=jpeg,resize,blur`` adds EOT.
Example: ``guardkit run --method photoguard --encoder sd-vae photo.jpg -o out/``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from guardkit import hookimpl
from guardkit.attack import project, report_step
from guardkit.config import Budget, RunConfig, build_config
from guardkit.errors import ConfigError
from guardkit.latent_attack import LatentAttackConfig, run_latent_attack
from guardkit.region import ModelSpace, group_faces
from guardkit.types import Encoder, Face, WeightedLoss


class _EncoderMethod:
    needs: ClassVar[frozenset[str]] = frozenset({"encoder"})
    needs_gradients: ClassVar[bool] = True
    default_steps: ClassVar[int] = 100
    config_class: ClassVar[type] = LatentAttackConfig

    def __init__(self, run: RunConfig, *, encoder: Encoder, losses: Sequence[WeightedLoss], **options: Any) -> None:
        self.run, self.encoder, self.losses = run, encoder, list(losses)
        self.config = build_config(self.config_class, options)

    def protect(self, images: torch.Tensor, faces: Sequence[Face], budget: Budget) -> torch.Tensor:
        return run_latent_attack(images, faces, budget, run=self.run, config=self.config, encoder=self.encoder,
                                 losses=self.losses)


@dataclass(frozen=True)
class PhotoGuardConfig(LatentAttackConfig):
    """PhotoGuard's options: as every encoder method's, its target the VAE's zero latent by default."""

    target_latent: str = "zero"


@dataclass(frozen=True)
class EditShieldConfig(LatentAttackConfig):
    """EditShield's options: as every encoder method's, with EOT over resizing and blurring by default
    (the released scripts' resize and Gaussian-blur variants; one draw a step)."""

    eot: str = "resize,blur"


class PhotoGuard(_EncoderMethod):
    """PhotoGuard's encoder attack: the latent of x' goes to the VAE's zero latent (or a grey image's)."""

    default_losses: ClassVar[dict[str, float]] = {"target-latent": 1.0}
    config_class: ClassVar[type] = PhotoGuardConfig


class EditShield(_EncoderMethod):
    """EditShield: the latent of x' goes away from the clean latent while x' stays close to x
    (perceptual consistency, beta = 0.1), in expectation over random resizing and blurring."""

    default_losses: ClassVar[dict[str, float]] = {"latent-l2": 1.0, "pixel-l2": 0.1}
    config_class: ClassVar[type] = EditShieldConfig


class UntargetedEncoder(_EncoderMethod):
    """The untargeted encoder attack of the FaceLock paper (Alg. 2)."""

    default_losses: ClassVar[dict[str, float]] = {"latent-l2": 1.0}


class VAEAttack(_EncoderMethod):
    """The VAE attack (Alg. 3): D(E(x')) goes to a flat grey target image."""

    default_losses: ClassVar[dict[str, float]] = {"decoder-target": 1.0}


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
        out = images
        for group in group_faces(faces):  # distant faces: one square each
            space = ModelSpace.around(images.shape[2], images.shape[3], group, self.config.resolution)
            region = space.crop(images).detach()
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


@hookimpl
def guardkit_register_methods(register):
    register("photoguard", PhotoGuard, summary="PhotoGuard encoder attack towards the VAE's zero latent")
    register("editshield", EditShield,
             summary="EditShield: latent distance from the clean photo, perceptual consistency, EOT (arXiv 2311.12066)")
    register("encoder", UntargetedEncoder, summary="untargeted encoder attack (FaceLock paper, Alg. 2)")
    register("vae", VAEAttack, summary="VAE attack: decoded image towards a grey target (Alg. 3)")
    register("cw", CW, summary="Carlini-Wagner L2 in tanh space with Adam from w = 0, clipped to the budget (Alg. 4)")
