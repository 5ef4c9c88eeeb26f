"""The shared shape of the encoder methods (``photoguard``, ``editshield``, ``encoder``, ``vae``): parts
injected at construction, options parsed into ``config_class``, the latent attack run by
``guardkit.latent_attack.run_latent_attack``. Each method is its own file; ``encoder_attacks.py`` registers them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch

from guardkit.config import Budget, RunConfig, build_config
from guardkit.latent_attack import LatentAttackConfig, run_latent_attack
from guardkit.types import Encoder, Face, WeightedLoss


class EncoderMethod:
    """What the encoder methods share: an encoder and losses injected, options in ``config_class``, and
    ``protect`` = ``run_latent_attack`` on a face-centred square at the encoder's resolution."""

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
