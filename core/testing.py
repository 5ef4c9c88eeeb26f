"""Test helpers for guardkit and its plugins, loaded by pytest as the ``pytest11`` plugin ``guardkit``.

- ``guardkit_pm`` fixture: a fresh plugin manager that refuses entry-point discovery; register real
  tiny plugins on it for one test.
- ``TinyFaceModel``: a real (tiny, randomly initialised, seeded) differentiable face model that
  aligns by the 5-point similarity warp, for fast attack tests.
- ``FaceModelContract`` / ``EncoderContract``: test classes a face-model / encoder plugin subclasses
  (define ``make_model`` / ``make_encoder``) to check the contract every such part must keep.
- ``save_tiny_vae``: a tiny random ``AutoencoderKL`` folder for the encoder parts' real loading code.

This module is imported by pytest in every project where guardkit is installed, so it imports
torch only inside functions.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from guardkit import hookimpl
from guardkit.config import RunConfig


@pytest.fixture
def guardkit_pm():
    """A fresh ``(pm, errors)`` with no entry points loaded; built-ins and third parties stay out."""
    from guardkit.registry import make_plugin_manager

    pm, errors = make_plugin_manager(entry_points=False)
    yield pm
    for plugin in list(pm.get_plugins()):
        pm.unregister(plugin)


def _template(size: int):
    from guardkit.align import ARCFACE_TEMPLATE_112

    return ARCFACE_TEMPLATE_112 * (size / 112)


class TinyFaceModel:
    """A 2-conv face "recogniser" with seeded random weights: real, differentiable, fast (32x32 chips)."""

    metric: ClassVar[str] = "cosine"
    threshold: ClassVar[float] = 0.5
    input_size: ClassVar[int] = 32
    differentiable: ClassVar[bool] = True
    schemes: ClassVar[tuple[str, ...]] = ("dlib5", "arcface5")

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.net = None

    def load(self) -> None:
        import torch
        from torch import nn

        if self.net is not None:
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            self.net = nn.Sequential(
                nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                nn.Flatten(), nn.Linear(16 * 8 * 8, 16),
            )
        self.net.eval().requires_grad_(False).to(self.run.torch_device())

    def align(self, images, faces):
        from guardkit.align import similarity_align

        return similarity_align(images, faces, _template(self.input_size), self.input_size)

    def embed(self, chips):
        self.load()
        return self.net(chips * 2 - 1)

    def distance(self, a, b):
        import torch.nn.functional as F

        return 1 - F.cosine_similarity(a, b, dim=1)


class TinyFaceModelPlugin:
    """Registers ``TinyFaceModel`` as face model ``tiny``."""

    @hookimpl
    def guardkit_register_face_models(self, register):
        register("tiny", TinyFaceModel, summary="tiny random-weight test face model")


class FaceModelContract:
    """Subclass in a plugin's tests and define ``make_model(self)`` returning a loaded face model and
    ``make_batch(self) -> (images [B,3,H,W], faces)`` with at least one face."""

    def make_model(self):  # pragma: no cover - to be overridden
        raise NotImplementedError

    def make_batch(self):  # pragma: no cover - to be overridden
        raise NotImplementedError

    def test_declares_capabilities(self):
        model = self.make_model()
        assert model.metric in ("euclidean", "cosine")
        assert model.threshold > 0 and model.input_size > 0
        assert model.schemes

    def test_align_and_embed_shapes(self):
        images, faces = self.make_batch()
        model = self.make_model()
        chips = model.align(images, faces)
        assert chips.shape == (len(faces), 3, model.input_size, model.input_size)
        emb = model.embed(chips)
        assert emb.shape[0] == len(faces) and emb.ndim == 2

    def test_gradients_reach_the_photo(self):
        import torch

        images, faces = self.make_batch()
        model = self.make_model()
        if not model.differentiable:
            pytest.skip("model declares no gradients")
        x = images.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.embed(model.align(x, faces)).pow(2).sum(), x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0

    def test_distance_is_zero_to_itself_and_batch_consistent(self):
        import torch

        images, faces = self.make_batch()
        model = self.make_model()
        emb = model.embed(model.align(images, faces))
        assert torch.allclose(model.distance(emb, emb), torch.zeros(len(faces), dtype=emb.dtype), atol=1e-5)
        one = model.embed(model.align(images, faces[:1]))
        assert torch.allclose(one[0], emb[0], atol=1e-4)


class EncoderContract:
    """Subclass in an encoder plugin's tests and define ``make_encoder(self)`` returning a loaded encoder
    (a small configuration is fine) to check the contract every encoder must keep."""

    size: ClassVar[int] = 32

    def make_encoder(self):  # pragma: no cover - to be overridden
        raise NotImplementedError

    def test_declares_capabilities(self):
        encoder = self.make_encoder()
        assert encoder.latent_channels > 0 and encoder.downsample > 0
        assert isinstance(encoder.differentiable, bool)

    def test_latent_shape_and_round_trip_shape(self):
        import torch

        encoder = self.make_encoder()
        x = torch.rand(2, 3, self.size, self.size) * 2 - 1
        z = encoder.encode(x)
        side = self.size // encoder.downsample
        assert z.shape == (2, encoder.latent_channels, side, side)
        assert encoder.decode(z).shape == x.shape

    def test_gradients_flow_through_encode_and_decode(self):
        import torch

        encoder = self.make_encoder()
        if not encoder.differentiable:
            pytest.skip("encoder declares no gradients")
        x = (torch.rand(1, 3, self.size, self.size) * 2 - 1).requires_grad_(True)
        (grad,) = torch.autograd.grad(encoder.decode(encoder.encode(x)).square().sum(), x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0

    def test_batch_consistent(self):
        import torch

        encoder = self.make_encoder()
        x = torch.rand(2, 3, self.size, self.size) * 2 - 1
        assert torch.allclose(encoder.encode(x)[1:], encoder.encode(x[1:]), atol=1e-4)


#: A tiny ``AutoencoderKL`` with the real layout (4 down blocks: downsampling 8) per encoder part.
TINY_VAE = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=32,
)
TINY_VAE_LATENTS = {
    "sd-vae": dict(latent_channels=4, scaling_factor=0.18215),
    "flux": dict(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False),
}


def save_tiny_vae(folder, kind: str = "sd-vae", seed: int = 0):
    """Save a seeded random tiny ``AutoencoderKL`` for encoder ``kind`` to ``folder`` (diffusers layout),
    so tests load it through the part's real loading code. Returns the folder."""
    import diffusers
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = diffusers.AutoencoderKL(**TINY_VAE, **TINY_VAE_LATENTS[kind]).eval()
    model.save_pretrained(folder)
    return folder
