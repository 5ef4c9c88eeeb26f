"""Attack invariants on a tiny real face model: input untouched, in budget and [0, 1],
batch-consistent, better than clean, seed-deterministic; and the engine's projection."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from guardkit.attack import cosine_step, pgd, project, quantize_ste
from guardkit.config import Budget, RunConfig
from guardkit.plugins.losses.face import FaceCosine
from guardkit.geometry import shift_face
from guardkit.plugins.face_models.facenet import FaceNetModel
from guardkit.plugins.methods.fr_cloak import CROP_REACH, FrCloak, surroundings
from guardkit.testing import TinyFaceModel
from guardkit.types import Face, WeightedLoss
from guardkit.view import View

EPS = 8 / 255


def face_at(index: int, cx: float, cy: float, s: float = 12.0) -> Face:
    pts = ((cx + 0.6 * s, cy - 0.4 * s), (cx + 0.2 * s, cy - 0.4 * s), (cx - 0.6 * s, cy - 0.4 * s),
           (cx - 0.2 * s, cy - 0.4 * s), (cx, cy + 0.5 * s))
    return Face(index, (cx - s, cy - s, cx + s, cy + s), pts, "dlib5")


@pytest.fixture(scope="module")
def model():
    m = TinyFaceModel(RunConfig())
    m.load()
    return m


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(3)
    coarse = torch.rand(2, 3, 8, 10, generator=gen)  # a smooth photo-like batch, on the 8-bit grid
    images = torch.nn.functional.interpolate(coarse, size=(64, 80), mode="bilinear", align_corners=False)
    images = torch.round(images * 255) / 255
    faces = [face_at(0, 30, 30), face_at(1, 50, 34, 14.0), face_at(1, 20, 20, 8.0)]
    return images, faces


def cloak(model, seed=0, steps=12, eot=2, purify="", **options) -> FrCloak:
    """fr-cloak on the tiny model, without decoys and chip mirroring (a random 2-conv net is not mirror
    symmetric, as face models are, so mirrored chips would pull it elsewhere): the loop's invariants."""
    return FrCloak(RunConfig(seed=seed), face_model=model, losses=[WeightedLoss(1.0, FaceCosine(), "face-cosine")],
                   eot_draws=eot, eot=purify, **{"decoy": 0.0, "chip_jitter": False, **options})


def dissimilarity(model, clean, adv, faces):
    return 1 - torch.nn.functional.cosine_similarity(
        model.embed(model.align(adv, faces)), model.embed(model.align(clean, faces)), dim=1)


def test_input_untouched_in_budget_and_range(model, batch):
    images, faces = batch
    before = images.clone()
    budget = Budget(eps=EPS, steps=12)
    out = cloak(model).protect(images, faces, budget)
    assert torch.equal(images, before)
    assert out.shape == images.shape
    assert (out - images).abs().max() <= EPS + 1e-6
    assert out.min() >= 0 and out.max() <= 1


def test_objective_beats_clean_for_every_face(model, batch):
    images, faces = batch
    out = cloak(model, eot=6).protect(images, faces, Budget(eps=EPS, steps=12))  # 2 jitter draws per face
    moved = dissimilarity(model, images, out, faces)
    gen = torch.Generator().manual_seed(0)
    noise = project(images + (torch.rand(images.shape, generator=gen) * 2 - 1) * EPS, images, Budget(eps=EPS))
    baseline = dissimilarity(model, images, noise, faces)
    assert (moved > 2 * baseline).all() and (moved > 0).all(), (moved, baseline)


def test_seed_deterministic_and_seed_sensitive(model, batch):
    images, faces = batch
    budget = Budget(eps=EPS, steps=6)
    a = cloak(model, seed=1).protect(images, faces, budget)
    b = cloak(model, seed=1).protect(images, faces, budget)
    c = cloak(model, seed=2).protect(images, faces, budget)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_batch_consistent(model, batch):
    """Without random start or EOT (no shared randomness), a photo's result does not depend on its batch."""
    images, faces = batch
    budget = Budget(eps=EPS, steps=6, random_start=False)
    together = cloak(model, eot=0, chip_jitter=False).protect(images, faces, budget)
    alone = cloak(model, eot=0, chip_jitter=False).protect(
        images[1:], [f.with_index(0) for f in faces if f.image_index == 1], budget)
    region = together[1:]
    assert torch.allclose(region, alone, atol=1e-6)


def test_a_photos_protection_does_not_depend_on_its_batch(model, batch):
    """With a random start, EOT draws, a JPEG and decoys, photo 1 protected beside photo 0 is photo 1 protected
    alone (its region, draws and decoy used to follow the batch's union box and face count)."""
    images, faces = batch
    budget = Budget(eps=EPS, steps=4)
    options = dict(eot=4, purify="jpeg", decoy=0.5)
    together = cloak(model, **options).protect(images, faces, budget)
    alone = cloak(model, **options).protect(images[1:], [f.with_index(0) for f in faces if f.image_index == 1], budget)
    assert torch.equal(together[1:], alone)


def test_the_region_holds_facenets_margin_around_a_small_face():
    """FaceNet cuts its box grown by 22 px per side: read from the region the optimisation sees, a small face's
    chip must be the chip of the whole photo (a region of the face box + 20 % clipped it)."""
    gen = torch.Generator().manual_seed(0)
    photo = torch.nn.functional.interpolate(torch.rand(1, 3, 20, 20, generator=gen), size=(200, 200), mode="bilinear")
    face = Face(0, (84.0, 80.0, 124.0, 124.0), ((96.0, 96.0), (112.0, 96.0), (104.0, 104.0), (98.0, 114.0),
                                                 (110.0, 114.0)), "arcface5", finder="mtcnn")
    facenet = FaceNetModel()
    x0, y0, x1, y1, mask = surroundings(photo, [face], 0.2, reach=CROP_REACH)
    region_chip = facenet.align(photo[:, :, y0:y1, x0:x1], [shift_face(face, -x0, -y0)])
    assert torch.allclose(region_chip, facenet.align(photo, [face]), atol=1e-6)
    # the context is read, not moved: the mask covers the face box grown by 20 % only
    moving = (mask[0, 0] > 0).nonzero()
    assert moving[:, 1].min() + x0 >= 84 - 8 - 1 and moving[:, 1].max() + x0 <= 124 + 8 + 1


def test_only_the_faces_and_their_surroundings_move(model, batch):
    images, faces = batch
    out = cloak(model, surround=0.25).protect(images, faces, Budget(eps=EPS, steps=4))
    x0, y0, x1, y1, mask = surroundings(images, faces, 0.25)
    changed = (out - images).abs().sum(dim=1) > 0
    outside = changed.clone()
    outside[:, y0:y1, x0:x1] &= ~(mask[:, 0] > 0)
    assert changed.any() and not outside.any()
    # each photo moves only around its own faces: photo 0's face sits at (30, 30), side 24
    assert not changed[0, :, 50:].any() and changed[0, 25:35, 25:35].any()


def test_the_moving_region_starts_on_the_jpeg_grid(batch):
    """The EOT's JPEG re-saves the region: its 16 px blocks must be the saved photo's."""
    images, faces = batch
    moved = [dataclasses.replace(f, box=(f.box[0] + 5, f.box[1] + 3, f.box[2] + 5, f.box[3] + 3)) for f in faces]
    x0, y0, *_ = surroundings(images, moved, 0.25)
    assert x0 % 16 == 0 and y0 % 16 == 0


def test_no_faces_returns_the_photo(model, batch):
    images, _ = batch
    assert torch.equal(cloak(model).protect(images, [], Budget(eps=EPS)), images)


def test_project_linf_l2_and_mask():
    x = torch.full((2, 3, 4, 4), 0.5)
    far = x + torch.randn(2, 3, 4, 4)
    linf = project(far, x, Budget(eps=0.1))
    assert (linf - x).abs().max() <= 0.1 + 1e-7 and linf.min() >= 0 and linf.max() <= 1
    l2 = project(far, x, Budget(eps=0.3, norm="l2"))
    assert ((l2 - x).flatten(1).norm(dim=1) <= 0.3 + 1e-5).all()
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    masked = project(far, x, Budget(eps=0.1), mask)
    assert torch.equal(masked[..., 2:, :], x[..., 2:, :])


def test_pgd_maximises_a_simple_objective_and_quantizes():
    x = torch.full((1, 3, 6, 6), 0.5)
    out = pgd(x, lambda xa, t: xa.flatten(1).sum(1), Budget(eps=4 / 255, steps=10, random_start=False),
              generator=torch.Generator())
    assert torch.allclose(out, x + 4 / 255, atol=1e-6)
    q = quantize_ste(torch.tensor([0.5 + 0.3 / 255], requires_grad=True))
    assert torch.isclose(q * 255, torch.tensor([128.0])).all() or torch.isclose(q * 255, torch.tensor([127.0])).all()
    assert cosine_step(0, 10, 1.0, 0.1) == 1.0 and abs(cosine_step(9, 10, 1.0, 0.1) - 0.1) < 1e-12


def test_view_caches_forward_terms(model, batch):
    images, faces = batch
    calls = []
    original = model.embed

    class Counting:
        def __getattr__(self, name):
            return getattr(model, name)

        def embed(self, chips):
            calls.append(len(chips))
            return original(chips)

    view = View(images, images.clone(), faces, face_model=Counting())
    FaceCosine()(view), FaceCosine()(view)
    assert calls == [3, 3]  # adv embeddings once, clean reference once


def test_jpeg_eot_runs_every_other_step_within_budget(model, batch):
    images, faces = batch
    budget = Budget(eps=EPS, steps=4)
    with_jpeg = cloak(model, purify="jpeg").protect(images, faces, budget)
    without = cloak(model).protect(images, faces, budget)
    assert not torch.equal(with_jpeg, without)
    assert (with_jpeg - images).abs().max() <= EPS + 1e-6
    assert torch.equal(with_jpeg, cloak(model, purify="jpeg").protect(images, faces, budget))


def test_every_pgd_step_moves():
    """The decay reaches the final step size after the last step (as FaceLock's released code), so even a
    final step size of 0 never wastes the last forward and backward."""
    seen = []

    def objective(xa, step):
        seen.append(xa.detach().clone())
        return xa.flatten(1).sum(1)

    x = torch.full((1, 3, 4, 4), 0.5)
    for schedule in ("linear", "cosine"):
        seen.clear()
        out = pgd(x, objective, Budget(eps=0.2, steps=3, random_start=False), generator=torch.Generator(),
                  step_size=0.03, final_step_size=0.0, schedule=schedule, quantize=False)
        assert len(seen) == 3 and (out > seen[-1] + 1e-4).all(), schedule
    # old callers keep working: positional budget, keyword-only options
    pgd(x, objective, Budget(eps=0.1, steps=2), generator=torch.Generator().manual_seed(0))


def test_a_cost_on_the_perturbation_reads_the_protected_photo_not_its_jpeg(model, batch):
    """pixel-l2 (minimised) alone, from the clean photo without a random start, under the JPEG EOT: its gradient at
    the clean photo is zero, so nothing moves. Read through the JPEG (as it was) the re-save's own error had a
    gradient, and the photo moved to undo it."""
    from guardkit.plugins.losses.face import PixelL2

    images, faces = batch
    method = FrCloak(RunConfig(seed=0), face_model=model, losses=[WeightedLoss(1.0, PixelL2(), "pixel-l2")],
                     eot="jpeg", eot_every=1, decoy=0.0, chip_jitter=False)
    out = method.protect(images, faces, Budget(eps=EPS, steps=3, random_start=False))
    assert torch.equal(out, images)
