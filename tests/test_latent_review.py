"""Review of the encoder methods (FaceLock and its baselines): defects found and fixed, each pinned by a test
on tiny real VAE architectures with random weights."""

from __future__ import annotations

import pytest
import torch

from guardkit.config import Budget, RunConfig
from guardkit.plugins.encoders.sd_vae import SDVAE
from guardkit.plugins.losses.face import FaceCosine
from guardkit.plugins.losses.latent import LatentL2, LatentNorm, TargetLatent
from guardkit.plugins.losses.lpips import LpipsLoss
from guardkit.plugins.methods.encoder_attacks import CW, PhotoGuard
from guardkit.plugins.methods.facelock import FaceLock
from guardkit.testing import TinyFaceModel, save_tiny_vae
from guardkit.types import Face, WeightedLoss

EPS = 8 / 255
RES = 32

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    enc = SDVAE(RunConfig(), path=str(save_tiny_vae(tmp_path_factory.mktemp("sd_vae") / "vae", "sd-vae")))
    enc.load()
    return enc


@pytest.fixture(scope="module")
def face_model():
    model = TinyFaceModel()
    model.load()
    return model


def face(index: int, cx: float, cy: float, s: float) -> Face:
    pts = ((cx - 0.35 * s, cy - 0.2 * s), (cx + 0.35 * s, cy - 0.2 * s), (cx, cy + 0.1 * s),
           (cx - 0.25 * s, cy + 0.35 * s), (cx + 0.25 * s, cy + 0.35 * s))
    return Face(index, (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2), pts, "arcface5")


def photos(n: int, seed: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 8, generator=gen)
    images = torch.nn.functional.interpolate(coarse, size=(48, 64), mode="bilinear", align_corners=False)
    return torch.round(images * 255) / 255


def build(name: str, encoder, face_model, **options):
    run, opts = RunConfig(seed=0), {"resolution": RES, **options}
    if name == "facelock":
        losses = [WeightedLoss(1.0, FaceCosine(), "face-cosine"),
                  WeightedLoss(1.0, LpipsLoss(random_backbone=True, random_heads=True), "lpips"),
                  WeightedLoss(0.2, LatentL2(), "latent-l2")]
        return FaceLock(run, encoder=encoder, face_model=face_model, losses=losses, **opts)
    if name == "photoguard":
        return PhotoGuard(run, encoder=encoder, losses=[WeightedLoss(1.0, TargetLatent(), "target-latent")], **opts)
    return CW(run, encoder=encoder, losses=[WeightedLoss(1.0, LatentNorm(), "latent-norm")], **opts)


@pytest.mark.parametrize("name", ["facelock", "photoguard", "cw"])
def test_a_photos_protection_does_not_depend_on_its_batch(name, encoder, face_model):
    """A photo protected alone and protected beside another photo (its face elsewhere, so another square and
    other random draws) comes out the same: the batch's other photos never move its square or its noise."""
    images = photos(2)
    own = face(0, 22, 20, 12)
    other = face(1, 46, 30, 10)
    budget = Budget(eps=EPS, steps=3)
    method = build(name, encoder, face_model)
    alone = method.protect(images[:1], [own], budget)
    together = method.protect(images, [own, other], budget)
    second_alone = method.protect(images[1:], [other.with_index(0)], budget)
    assert torch.allclose(together[:1], alone, atol=1e-5), (together[:1] - alone).abs().max()
    assert torch.allclose(together[1:], second_alone, atol=1e-5), (together[1:] - second_alone).abs().max()


def test_a_cost_on_the_perturbation_sees_the_photo_not_its_eot_purifications(encoder):
    """``lpips-pixel`` (LPIPS(protected, clean), minimised) is a cost on the perturbation, like ``pixel-l2``:
    under EOT it must compare the protected photo with the clean one, not a blurred copy with the clean one.
    From x' = x with no random start its gradient is exactly zero (LPIPS(x, x) is its minimum), so the photo
    stays as it is; measured on the blurred copy it was pushed away from the photo."""
    from guardkit.plugins.losses.lpips import LpipsPixelLoss
    from guardkit.plugins.methods.encoder_method import EncoderMethod

    images = torch.nn.functional.interpolate(photos(1), size=(32, 32), mode="bilinear", align_corners=False)
    images = torch.round(images * 255) / 255
    losses = [WeightedLoss(1.0, LpipsPixelLoss(random_backbone=True, random_heads=True), "lpips-pixel")]
    budget = Budget(eps=EPS, steps=3, random_start=False)
    plain = EncoderMethod(RunConfig(seed=0), encoder=encoder, losses=losses, resolution=32)
    assert torch.equal(plain.protect(images, [], budget), images)
    under_eot = EncoderMethod(RunConfig(seed=0), encoder=encoder, losses=losses, resolution=32, eot="blur")
    assert torch.equal(under_eot.protect(images, [], budget), images)


def test_random_vae_with_sample_draws_from_its_seeded_generator():
    """``DiffusersVAE.random(sample=True)`` samples from a generator seeded by the run's seed, as a loaded VAE
    does: two parts built alike encode alike, whatever the global RNG did in between."""
    from guardkit.testing import TINY_VAE, TINY_VAE_LATENTS

    config = {**TINY_VAE, **TINY_VAE_LATENTS["sd-vae"]}
    x = photos(1)[..., :32, :32] * 2 - 1
    first = SDVAE.random(RunConfig(seed=3), config=config, sample=True).encode(x)
    torch.manual_seed(123)
    second = SDVAE.random(RunConfig(seed=3), config=config, sample=True).encode(x)
    mean = SDVAE.random(RunConfig(seed=3), config=config).encode(x)
    assert not torch.equal(first, mean)  # it does sample
    assert torch.equal(first, second)
