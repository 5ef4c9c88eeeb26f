"""Method ``vae``: the VAE attack of the FaceLock paper (Alg. 3), descend ||D(E(x')) - x_target||^2 towards
a flat grey target image, on the unclamped decode.

Protects a face-centred square at the encoder's resolution (``-O resolution=512``) and pastes it back;
``-O mask=face`` limits the change to the faces, ``-O eot=jpeg,resize,blur`` adds EOT. Where guardkit
departs from the paper and the released code: docs/methods.md.

Example: ``guardkit run --method vae --encoder sd-vae photo.jpg -o out/``
"""

from __future__ import annotations

from typing import ClassVar

from .encoder_method import EncoderMethod


class VAEAttack(EncoderMethod):
    """The VAE attack (Alg. 3): D(E(x')) goes to a flat grey target image."""

    default_losses: ClassVar[dict[str, float]] = {"decoder-target": 1.0}
