"""Method ``photoguard``: encoder attack towards a target latent, minimise ||E(x') - z_target||^2
(Salman et al., "Raising the Cost of Malicious AI-Powered Image Editing", ICML 2023). The target is
the VAE's zero latent, as in FaceLock's released code (``-O target_latent=image`` for the encoding of
a flat grey image, ``-O target=0.5``).

Protects a face-centred square at the encoder's resolution (``-O resolution=512``) and pastes it back;
``-O mask=face`` limits the change to the faces, ``-O eot=jpeg,resize,blur`` adds EOT. Where guardkit
departs from the paper and the released code: docs/methods.md.

Example: ``guardkit run --method photoguard --encoder sd-vae photo.jpg -o out/``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from guardkit.latent_attack import LatentAttackConfig

from .encoder_method import EncoderMethod


@dataclass(frozen=True)
class PhotoGuardConfig(LatentAttackConfig):
    """PhotoGuard's options: as every encoder method's, its target the VAE's zero latent by default."""

    target_latent: str = "zero"


class PhotoGuard(EncoderMethod):
    """PhotoGuard's encoder attack: the latent of x' goes to the VAE's zero latent (or a grey image's)."""

    default_losses: ClassVar[dict[str, float]] = {"target-latent": 1.0}
    config_class: ClassVar[type] = PhotoGuardConfig
