"""Method ``editshield``: maximise the latent distance to the clean latent, minus beta * ||x' - x||^2 (the
perceptual-consistency term, beta = 0.1), with expectation over resizing and blurring (Chen et al.,
"EditShield", arXiv 2311.12066).

Protects a face-centred square at the encoder's resolution (``-O resolution=512``) and pastes it back;
``-O mask=face`` limits the change to the faces, ``-O eot=jpeg,resize,blur`` adds EOT. Where guardkit
departs from the paper and the released code: docs/methods.md.

Example: ``guardkit run --method editshield --encoder sd-vae photo.jpg -o out/``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from guardkit.latent_attack import LatentAttackConfig

from .encoder_method import EncoderMethod


@dataclass(frozen=True)
class EditShieldConfig(LatentAttackConfig):
    """EditShield's options: as every encoder method's, with EOT over resizing and blurring by default
    (the released scripts' resize and Gaussian-blur variants; one draw a step)."""

    eot: str = "resize,blur"


class EditShield(EncoderMethod):
    """EditShield: the latent of x' goes away from the clean latent while x' stays close to x
    (perceptual consistency, beta = 0.1), in expectation over random resizing and blurring."""

    default_losses: ClassVar[dict[str, float]] = {"latent-l2": 1.0, "pixel-l2": 0.1}
    config_class: ClassVar[type] = EditShieldConfig
