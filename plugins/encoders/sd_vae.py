"""Encoder ``sd-vae``: the Stable Diffusion 1.x/2.x VAE as InstructPix2Pix uses it (4 latent channels,
scaling factor 0.18215, no shift). Loading and the encode/decode contract: ``guardkit.vae``.

Example: ``z = SDVAE(RunConfig(), path="weights/ip2p/vae").encode(x)``
"""

from __future__ import annotations

from typing import ClassVar

from guardkit import hookimpl
from guardkit.vae import DiffusersVAE, VAEConfig
from guardkit.weights import KnownWeight

SDVAEConfig = VAEConfig


class SDVAE(DiffusersVAE):
    """SD 1.x/2.x ``AutoencoderKL``: x [B,3,H,W] in [-1,1] <-> z [B,4,H/8,W/8] (scaled latents)."""

    name: ClassVar[str] = "sd-vae"
    latent_channels: ClassVar[int] = 4
    HUB_ID: ClassVar[str] = "timbrooks/instruct-pix2pix"
    SCALING_FACTOR: ClassVar[float] = 0.18215
    SHIFT_FACTOR: ClassVar[float] = 0.0


@hookimpl
def guardkit_register_encoders(register):
    register("sd-vae", SDVAE, summary="Stable Diffusion 1.x/2.x VAE as in InstructPix2Pix, 4 latent channels "
                                      "(local weights)", weights=(KnownWeight.hub(SDVAE.HUB_ID),))
