"""Latent-space losses of the encoder attacks: per-sample objectives over a ``View``.

Latent distances are measured in the VAE's own units, its unscaled ``latent_dist.mean`` (the view's
scaled latent divided by the encoder's ``scaling_factor``, see ``guardkit.vae.latent_units``), as the
released FaceLock code does (``F.mse_loss(latent_dist.mean, clean_latent)``): FaceLock's lambda = 0.2
then weighs the term as it does there (on the scaled latent it was 0.18215^2 = 1/30 of that for SD).

``latent-l2``: mean squared distance between E(adv) and E(clean), maximised (EditShield, the
untargeted encoder attack, FaceLock's lambda term).
``latent-norm``: the released CW code's latent term, the L2 norm of E(adv) - E(clean) along the
latent's last axis, summed over the other axes, maximised.
``target-latent``: mean squared distance between E(adv) and a target latent, minimised (PhotoGuard's
encoder attack).
``decoder-target``: mean squared distance between D(E(adv)) and a target image, minimised (the VAE
attack); the decode is not clamped to [0, 1] first, as in the released code.
A target with batch size 1 serves every photo of the batch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from guardkit import hookimpl
from guardkit.errors import ConfigError
from guardkit.vae import latent_units
from guardkit.view import View


class _Options:
    """Built as every part is, ``Loss(run=None, **options)``; these losses need neither and take no options."""

    name: ClassVar[str] = ""

    def __init__(self, run: Any = None, **options: Any) -> None:
        if options:
            raise ConfigError(f"loss {self.name!r} takes no options, got {', '.join(sorted(options))}")


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(dim=1)


def _unscaled(view: View, difference: torch.Tensor) -> torch.Tensor:
    """A difference of (scaled) latents in the VAE's own units."""
    scale, _ = latent_units(view.encoder)
    return difference / scale


def _match_batch(target: torch.Tensor, like: torch.Tensor, what: str) -> torch.Tensor:
    target = target.to(device=like.device, dtype=like.dtype)
    if target.shape[0] == like.shape[0]:
        return target
    if target.shape[0] == 1:
        return target.expand(like.shape[0], *target.shape[1:])
    raise ValueError(f"{what} has batch size {target.shape[0]}, the batch has {like.shape[0]} (give 1 or the same)")


class LatentL2(_Options):
    """Mean squared distance of the protected latent from the clean latent (maximised)."""

    name: ClassVar[str] = "latent-l2"
    maximize: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset({"encoder"})

    def __call__(self, view: View) -> torch.Tensor:
        latent = view.latent
        difference = latent - view.clean_latent.to(device=latent.device, dtype=latent.dtype)
        return _unscaled(view, difference).pow(2).flatten(1).mean(dim=1)


class LatentNorm(_Options):
    """The released CW code's latent term (maximised): ``torch.norm(E(x') - E(x), p=2, dim=-1)`` summed,
    in the VAE's own units."""

    name: ClassVar[str] = "latent-norm"
    maximize: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset({"encoder"})

    def __call__(self, view: View) -> torch.Tensor:
        latent = view.latent
        difference = _unscaled(view, latent - view.clean_latent.to(device=latent.device, dtype=latent.dtype))
        # the norm's gradient is undefined at 0 (CW starting at the photo): a tiny floor keeps it finite
        rows = (difference.pow(2).sum(dim=-1) + 1e-20).sqrt()
        return rows.flatten(1).sum(dim=1)


class TargetLatent(_Options):
    """Mean squared distance of the protected latent from a target latent (minimised: PhotoGuard)."""

    name: ClassVar[str] = "target-latent"
    maximize: ClassVar[bool] = False
    needs: ClassVar[frozenset[str]] = frozenset({"encoder"})

    def __call__(self, view: View) -> torch.Tensor:
        if view.target_latent is None:
            raise ValueError("loss 'target-latent' needs a target latent (the encoding of a target image), "
                             "and the view has none")
        latent = view.latent
        target = _match_batch(view.target_latent, latent, "the target latent")
        if target.shape[1:] != latent.shape[1:]:
            raise ValueError(f"the target latent has shape {tuple(target.shape[1:])}, the encoder gives "
                             f"{tuple(latent.shape[1:])}")
        return _unscaled(view, latent - target).pow(2).flatten(1).mean(dim=1)


class DecoderTarget(_Options):
    """Mean squared distance of decode(encode(adv)) from a target image in [0, 1] (minimised: VAE attack).

    A target of another size is resized (bilinear, antialiased) to the decoded size.
    """

    name: ClassVar[str] = "decoder-target"
    maximize: ClassVar[bool] = False
    needs: ClassVar[frozenset[str]] = frozenset({"encoder"})

    def __call__(self, view: View) -> torch.Tensor:
        if view.target_image is None:
            raise ValueError("loss 'decoder-target' needs a target image, and the view has none")
        # unclamped, as the released VAE attack (``vae(x).sample``); View.decoded is clamped to [0, 1]
        decoded = (view._require_encoder().decode(view.latent) + 1) / 2
        target = _match_batch(view.target_image, decoded, "the target image")
        if target.shape[-2:] != decoded.shape[-2:]:
            target = F.interpolate(target, size=decoded.shape[-2:], mode="bilinear", align_corners=False,
                                   antialias=True)
        return _per_sample_mse(decoded, target)


@hookimpl
def guardkit_register_losses(register):
    register("latent-l2", LatentL2, summary="mean squared latent distance from the clean photo (maximised)")
    register("latent-norm", LatentNorm, summary="the released CW code's latent norm from the clean photo (maximised)")
    register("target-latent", TargetLatent, summary="mean squared distance to a target latent (PhotoGuard, minimised)")
    register("decoder-target", DecoderTarget,
             summary="mean squared distance of the VAE reconstruction to a target image (minimised)")
