"""One test per hook: a real tiny part registered through it is found, built and used."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from guardkit import hookimpl
from guardkit.config import Budget, RunConfig
from guardkit.registry import Registry
from guardkit.testing import TinyFaceModel
from guardkit.types import Face
from guardkit.view import View


def registry(pm) -> Registry:
    return Registry.from_plugin_manager(pm)


class TinyEncoder:
    differentiable: ClassVar[bool] = True
    latent_channels: ClassVar[int] = 4
    downsample: ClassVar[int] = 2

    def __init__(self, run=None, **options):
        torch.manual_seed(0)
        self.enc = torch.nn.Conv2d(3, 4, 2, stride=2)
        self.dec = torch.nn.ConvTranspose2d(4, 3, 2, stride=2)

    def load(self):
        pass

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return torch.tanh(self.dec(z))


def test_hook_guardkit_register_encoders(guardkit_pm):
    class Plugin:
        @hookimpl
        def guardkit_register_encoders(self, register):
            register("tiny-vae", TinyEncoder, summary="tiny")

    guardkit_pm.register(Plugin(), name="p")
    spec = registry(guardkit_pm).get("encoder", "tiny-vae")
    assert spec.capabilities == {"differentiable": True, "latent_channels": 4, "downsample": 2}
    enc = spec.factory(RunConfig())
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert enc.encode(x).shape == (2, 4, 4, 4) and enc.decode(enc.encode(x)).shape == x.shape


def test_hook_guardkit_register_face_models(guardkit_pm):
    class Plugin:
        @hookimpl
        def guardkit_register_face_models(self, register):
            register("tiny", TinyFaceModel)

    guardkit_pm.register(Plugin(), name="p")
    model = registry(guardkit_pm).get("face_model", "tiny").factory(RunConfig())
    model.load()
    face = Face(0, (8, 8, 56, 56), ((40, 25), (34, 25), (22, 25), (28, 25), (32, 40)), "dlib5")
    emb = model.embed(model.align(torch.rand(1, 3, 64, 64), [face]))
    assert emb.shape == (1, 16)


class CentreFinder:
    """A real (trivial) finder: one face box over the centre of the photo with fixed landmarks."""

    scheme: ClassVar[str] = "dlib5"

    def __init__(self, run=None, **options):
        pass

    def load(self):
        pass

    def find(self, image):
        h, w, _ = image.shape
        pts = ((0.62 * w, 0.4 * h), (0.55 * w, 0.4 * h), (0.38 * w, 0.4 * h), (0.45 * w, 0.4 * h), (0.5 * w, 0.6 * h))
        return [Face(0, (0.25 * w, 0.25 * h, 0.75 * w, 0.75 * h), pts, "dlib5")]


def test_hook_guardkit_register_face_finders(guardkit_pm):
    class Plugin:
        @hookimpl
        def guardkit_register_face_finders(self, register):
            register("centre", CentreFinder)

    guardkit_pm.register(Plugin(), name="p")
    spec = registry(guardkit_pm).get("face_finder", "centre")
    assert spec.capabilities["scheme"] == "dlib5"
    faces = spec.factory(RunConfig()).find(np.zeros((40, 60, 3), np.uint8))
    assert len(faces) == 1 and faces[0].box == (15.0, 10.0, 45.0, 30.0)


class GammaEditor:
    def __init__(self, run=None, **options):
        pass

    def load(self):
        pass

    def edit(self, images, prompt, *, seed):
        return images.clamp(0, 1) ** (0.5 if "brighter" in prompt else 2.0)


def test_hook_guardkit_register_editors(guardkit_pm):
    class Plugin:
        @hookimpl
        def guardkit_register_editors(self, register):
            register("gamma", GammaEditor)

    guardkit_pm.register(Plugin(), name="p")
    editor = registry(guardkit_pm).get("editor", "gamma").factory(RunConfig())
    x = torch.full((1, 3, 4, 4), 0.25)
    assert torch.allclose(editor.edit(x, "make it brighter", seed=0), torch.full_like(x, 0.5))


def test_hook_guardkit_register_losses(guardkit_pm):
    class Plugin:
        @hookimpl
        def guardkit_register_losses(self, register):
            from guardkit.plugins.losses.face import PixelL2

            register("l2-again", PixelL2)

    guardkit_pm.register(Plugin(), name="p")
    loss = registry(guardkit_pm).get("loss", "l2-again").factory()
    clean = torch.zeros(2, 3, 4, 4)
    adv = clean.clone()
    adv[1] += 0.1
    assert torch.allclose(loss(View(clean, adv)), torch.tensor([0.0, 0.01]))


def test_hook_guardkit_register_methods(guardkit_pm):
    class Flip:
        needs = frozenset()
        needs_gradients = False

        def __init__(self, run, *, losses, **options):
            pass

        def protect(self, images, faces, budget):
            return 1 - images  # far outside any budget: the engine must project it

    class Plugin:
        @hookimpl
        def guardkit_register_methods(self, register):
            register("flip", Flip)

    guardkit_pm.register(Plugin(), name="p")
    spec = registry(guardkit_pm).get("method", "flip")
    assert spec.capabilities == {"needs": [], "needs_gradients": False}
    from guardkit.attack import project

    x = torch.rand(1, 3, 5, 5)
    budget = Budget(eps=2 / 255)
    out = project(spec.factory(RunConfig(), losses=[]).protect(x, [], budget), x, budget)
    assert (out - x).abs().max() <= budget.eps + 1e-7


class Invert:
    differentiable: ClassVar[bool] = True

    def __init__(self, run=None, **options):
        pass

    def load(self):
        pass

    def purify(self, images, generator):
        return 1 - images


def test_hook_guardkit_register_purifiers(guardkit_pm):
    class Plugin:
        @hookimpl
        def guardkit_register_purifiers(self, register):
            register("invert", Invert)

    guardkit_pm.register(Plugin(), name="p")
    spec = registry(guardkit_pm).get("purifier", "invert")
    assert spec.capabilities == {"differentiable": True}
    x = torch.rand(1, 3, 4, 4)
    assert torch.allclose(spec.factory(RunConfig()).purify(x, torch.Generator()), 1 - x)


class MeanAbsEdit:
    higher_is_better: ClassVar[bool] = True

    def __init__(self, run=None, **options):
        pass

    def load(self):
        pass

    def score(self, batch):
        return (batch.edited - batch.edited_clean).abs().flatten(1).mean(1)


def test_hook_guardkit_register_metrics(guardkit_pm):
    from guardkit.types import EvalBatch

    class Plugin:
        @hookimpl
        def guardkit_register_metrics(self, register):
            register("mean-abs-edit", MeanAbsEdit)

    guardkit_pm.register(Plugin(), name="p")
    metric = registry(guardkit_pm).get("metric", "mean-abs-edit").factory(RunConfig())
    x = torch.zeros(2, 3, 4, 4)
    batch = EvalBatch(source=x, protected=x, edited=x + 0.25, edited_clean=x, prompt="p")
    assert torch.allclose(metric.score(batch), torch.tensor([0.25, 0.25]))


class BoxParser:
    def __init__(self, run=None, **options):
        pass

    def load(self):
        pass

    def parse(self, image, faces):
        mask = torch.zeros_like(image[:, :1])
        for f in faces:
            mask[..., int(f.box[1]):int(f.box[3]), int(f.box[0]):int(f.box[2])] = 1
        return {"skin": mask, "background": 1 - mask}


def test_hook_guardkit_register_face_parsers(guardkit_pm):
    class Plugin:
        @hookimpl
        def guardkit_register_face_parsers(self, register):
            register("box", BoxParser)

    guardkit_pm.register(Plugin(), name="p")
    parser = registry(guardkit_pm).get("face_parser", "box").factory(RunConfig())
    regions = parser.parse(torch.zeros(1, 3, 8, 8), [Face(0, (2, 2, 6, 6), ((0, 0),) * 5, "dlib5")])
    assert regions["skin"].sum() == 16 and regions["background"].sum() == 48


class ScaleVelocity:
    """An edit method's control: scales the editor's velocity at every step (a real, trivial control)."""

    def __init__(self, run=None, **options):
        self.factor = options.get("factor", 0.5)

    def load(self):
        pass

    def __call__(self, step, latent, velocity):
        return latent, velocity * self.factor


def test_hook_guardkit_register_edit_methods(guardkit_pm):
    class Plugin:
        @hookimpl
        def guardkit_register_edit_methods(self, register):
            register("half-speed", ScaleVelocity)

    guardkit_pm.register(Plugin(), name="p")
    control = registry(guardkit_pm).get("edit_method", "half-speed").factory(RunConfig(), factor=0.25)
    latent, velocity = control(0, torch.zeros(1, 4), torch.ones(1, 4))
    assert torch.equal(velocity, torch.full((1, 4), 0.25))
