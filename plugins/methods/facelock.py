"""Method ``facelock``: FaceLock (Wang et al., "Edit Away and My Face Will not Stay", CVPR 2025,
https://arxiv.org/abs/2411.16832; released code github taco-group/FaceLock).

The protected photo x' is pushed so that what a latent-diffusion editor reconstructs from it,
``x_d = D(E(x'))``, loses the person's identity and drifts perceptually from the photo:

    maximise  face-cosine(x_d, x) + lpips(x_d, x) + 0.2 * ||E(x') - E(x)||^2   by sign-PGD

with the released code's schedule: the face term switched on from 35% of the steps, the LPIPS term
from 25%, and a linearly decaying step. Parts: an encoder (``sd-vae`` for InstructPix2Pix, ``flux``)
and a differentiable face model (the paper uses AdaFace; ``arcface``/``adaface``/``dlib`` here).

Defaults, paper vs guardkit ([0, 1] pixel units; the paper's [-1, 1] numbers halved):

| | paper (Alg. 1) | released code | guardkit |
|---|---|---|---|
| eps (L-inf) | 0.02 -> 0.01 | 0.03 -> 0.015 | 4/255 = 0.0157 (the run's budget) |
| step | 0.003 -> 0.0015, constant | 0.01 -> 0.005, linear decay | eps/4 = 0.0039, linear decay to 0 |
| steps | 100 | 100 | 100 |
| lambda (latent term) | 0.2 | 0.2 | 0.2 |
| schedule | all terms from step 0 | FR from 35%, LPIPS from 25% | as the released code |

Example: ``guardkit run --method facelock --encoder sd-vae --fr arcface photos/ -o out/``
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch

from guardkit import hookimpl
from guardkit.config import Budget, RunConfig, build_config
from guardkit.latent_attack import LatentAttackConfig, run_latent_attack
from guardkit.types import Encoder, Face, FaceModel, WeightedLoss


class FaceLock:
    needs: ClassVar[frozenset[str]] = frozenset({"encoder", "face_model"})
    needs_gradients: ClassVar[bool] = True
    default_losses: ClassVar[dict[str, float]] = {"face-cosine": 1.0, "lpips": 1.0, "latent-l2": 0.2}
    default_steps: ClassVar[int] = 100
    config_class: ClassVar[type] = LatentAttackConfig
    #: fraction of the steps from which each term is on (released code: FR from ``i >= 0.35 * iters``,
    #: LPIPS from ``i > 0.25 * iters``, strictly: the names in ``starts_after``)
    starts: ClassVar[dict[str, float]] = {"face-cosine": 0.35, "lpips": 0.25}
    starts_after: ClassVar[frozenset[str]] = frozenset({"lpips"})

    def __init__(self, run: RunConfig, *, encoder: Encoder, face_model: FaceModel,
                 losses: Sequence[WeightedLoss], **options: Any) -> None:
        self.run, self.encoder, self.face_model, self.losses = run, encoder, face_model, list(losses)
        self.config = build_config(LatentAttackConfig, options)

    def protect(self, images: torch.Tensor, faces: Sequence[Face], budget: Budget) -> torch.Tensor:
        return run_latent_attack(images, faces, budget, run=self.run, config=self.config, encoder=self.encoder,
                                 losses=self.losses, face_model=self.face_model, starts=self.starts,
                                 after=self.starts_after)


@hookimpl
def guardkit_register_methods(register):
    register("facelock", FaceLock, summary="FaceLock: decoded face loses identity + LPIPS + latent term (CVPR 2025)")
