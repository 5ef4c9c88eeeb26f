"""Method ``encoder``: the untargeted encoder attack of the FaceLock paper (Alg. 2), ascend
||E(x') - E(x)||^2 by signed steps, in the VAE's own units (``latent_dist.mean``).

Protects a face-centred square at the encoder's resolution (``-O resolution=512``) and pastes it back;
``-O mask=face`` limits the change to the faces, ``-O eot=jpeg,resize,blur`` adds EOT. Where guardkit
departs from the paper and the released code: docs/methods.md.

Example: ``guardkit run --method encoder --encoder sd-vae photo.jpg -o out/``
"""

from __future__ import annotations

from typing import ClassVar

from .encoder_method import EncoderMethod


class UntargetedEncoder(EncoderMethod):
    """The untargeted encoder attack of the FaceLock paper (Alg. 2)."""

    default_losses: ClassVar[dict[str, float]] = {"latent-l2": 1.0}
