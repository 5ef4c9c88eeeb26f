"""Encoder ``flux``: the FLUX.1 VAE (16 latent channels, ``scaling_factor`` 0.3611, ``shift_factor`` 0.1159).

``encode`` gives the tensor the FLUX transformer sees (before 2x2 packing). FLUX.1-dev is a gated
repository: accept its licence before downloading. Loading and the contract: ``guardkit.vae``.

Example: ``z = FluxVAE(RunConfig(dtype="bfloat16"), path="weights/flux/vae").encode(x)``
"""

from __future__ import annotations

from typing import Any, ClassVar

from guardkit import hookimpl
from guardkit.vae import DiffusersVAE, VAEConfig
from guardkit.weights import KnownWeight

FluxVAEConfig = VAEConfig


class FluxVAE(DiffusersVAE):
    """FLUX.1 ``AutoencoderKL``: x [B,3,H,W] in [-1,1] <-> z [B,16,H/8,W/8] (scaled, shifted latents)."""

    name: ClassVar[str] = "flux"
    latent_channels: ClassVar[int] = 16
    HUB_ID: ClassVar[str] = "black-forest-labs/FLUX.1-dev"
    SCALING_FACTOR: ClassVar[float] = 0.3611
    SHIFT_FACTOR: ClassVar[float] = 0.1159
    LATENT_CONFIG: ClassVar[dict[str, Any]] = {"use_quant_conv": False, "use_post_quant_conv": False}


@hookimpl
def guardkit_register_encoders(register):
    register("flux", FluxVAE, summary="FLUX.1 16-channel VAE (local weights)",
             weights=(KnownWeight.hub(FluxVAE.HUB_ID,
                                      note=f"accept the licence at https://huggingface.co/{FluxVAE.HUB_ID}"),))
