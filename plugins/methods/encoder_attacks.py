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

Each method is its own file (``photoguard.py``, ``editshield.py``, ``untargeted_encoder.py``,
``vae_attack.py``, ``cw.py``); this module registers them. Latent distances are in the VAE's own
units (``latent_dist.mean``), as in the released code. Where guardkit departs from the papers and the
released code: docs/methods.md.

All protect a face-centred square at the encoder's resolution (``-O resolution=512``) and paste it
back; ``-O mask=face`` limits the change to the faces, ``-O eot=jpeg,resize,blur`` adds EOT.
Example: ``guardkit run --method photoguard --encoder sd-vae photo.jpg -o out/``
"""

from __future__ import annotations

from guardkit import hookimpl

from .cw import CW, CWConfig
from .editshield import EditShield, EditShieldConfig
from .photoguard import PhotoGuard, PhotoGuardConfig
from .untargeted_encoder import UntargetedEncoder
from .vae_attack import VAEAttack

__all__ = ["CW", "CWConfig", "EditShield", "EditShieldConfig", "PhotoGuard", "PhotoGuardConfig",
           "UntargetedEncoder", "VAEAttack"]


@hookimpl
def guardkit_register_methods(register):
    register("photoguard", PhotoGuard, summary="PhotoGuard encoder attack towards the VAE's zero latent")
    register("editshield", EditShield,
             summary="EditShield: latent distance from the clean photo, perceptual consistency, EOT (arXiv 2311.12066)")
    register("encoder", UntargetedEncoder, summary="untargeted encoder attack (FaceLock paper, Alg. 2)")
    register("vae", VAEAttack, summary="VAE attack: decoded image towards a grey target (Alg. 3)")
    register("cw", CW, summary="Carlini-Wagner L2 in tanh space with Adam from w = 0, clipped to the budget (Alg. 4)")
