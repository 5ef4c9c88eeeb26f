"""The transfer machinery: ensembles of face models each read through its own finder, the momentum loop
under a per-pixel bound and an L2 cap, the visibility-aware budget, crop EOT, and strength presets."""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch

from guardkit import hookimpl
from guardkit.config import Budget, RunConfig
from guardkit.engine import Engine
from guardkit.ensemble import Member, parse_models
from guardkit.errors import CapabilityError, ConfigError
from guardkit.align import ARCFACE_TEMPLATE_112, similarity_align, template_aligner
from guardkit.geometry import jitter_faces
from guardkit.view import View
from guardkit.plugins.losses.face import FaceDistance
from guardkit.plugins.methods.fr_cloak import FrCloak, decoy_directions, member_term, per_model
from guardkit.strength import Strength, apply_strength
from guardkit.testing import TinyFaceModel
from guardkit.transfer import transfer_pgd
from guardkit.types import Face, WeightedLoss
from guardkit.visibility import l2_cap, texture_bound

pytestmark = pytest.mark.usefixtures("one_thread")


class OtherTinyFaceModel(TinyFaceModel):
    """A second tiny family: other random weights, Euclidean metric, its own finder."""

    metric: ClassVar[str] = "euclidean"
    threshold: ClassVar[float] = 0.6
    default_finder: ClassVar[str] = "insightface"

    def load(self):
        super().load()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(4321)
            for layer in self.net:
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()

    def embed(self, chips):
        return torch.nn.functional.normalize(super().embed(chips), dim=1)

    def distance(self, a, b):
        return (a - b).norm(dim=1)


class TwoModelsPlugin:
    @hookimpl
    def guardkit_register_face_models(self, register):
        register("tiny", TinyFaceModel, summary="tiny")
        register("tiny-other", OtherTinyFaceModel, summary="tiny, other family")


def face_at(cx: float, cy: float, s: float, finder: str) -> Face:
    pts = ((cx - 0.4 * s, cy - 0.3 * s), (cx + 0.4 * s, cy - 0.3 * s), (cx, cy + 0.1 * s),
           (cx - 0.3 * s, cy + 0.5 * s), (cx + 0.3 * s, cy + 0.5 * s))
    return Face(0, (cx - s, cy - s, cx + s, cy + s), pts, "arcface5", finder=finder)


@pytest.fixture(scope="module")
def models():
    a, b = TinyFaceModel(RunConfig()), OtherTinyFaceModel(RunConfig())
    a.load(), b.load()
    return a, b


@pytest.fixture
def photo():
    gen = torch.Generator().manual_seed(5)
    coarse = torch.rand(1, 3, 10, 12, generator=gen)
    image = torch.nn.functional.interpolate(coarse, size=(80, 96), mode="bilinear", align_corners=False)
    return torch.round(image * 255) / 255


def distance(model, clean, adv, faces):
    return model.distance(model.embed(model.align(adv, faces)), model.embed(model.align(clean, faces)))


def test_parse_models_keeps_order_and_drops_repeats():
    assert parse_models("dlib, facenet,,dlib") == ("dlib", "facenet")
    assert parse_models(["facenet"]) == ("facenet",) and parse_models(None) == ()


def test_member_reads_its_own_finders_faces_and_untagged_ones():
    mine, theirs, untagged = face_at(20, 20, 8, "dlib"), face_at(40, 40, 8, "mtcnn"), face_at(60, 20, 8, "")
    member = Member("dlib", TinyFaceModel(), "dlib")
    assert member.faces([mine, theirs, untagged]) == [mine, untagged]


def test_ensemble_cloak_moves_every_model_further_than_noise(models, photo):
    a, b = models
    faces = [face_at(40, 38, 16, "one"), face_at(42, 40, 17, "two")]  # one face, as two finders see it
    members = [Member("tiny", a, "one"), Member("tiny-other", b, "two")]
    budget = Budget(eps=8 / 255, steps=15)
    loss = [WeightedLoss(1.0, FaceDistance(), "face-distance")]
    out = FrCloak(RunConfig(), face_models=members, losses=loss, eot="").protect(photo, faces, budget)
    assert (out - photo).abs().max() <= 8 / 255 + 1e-6 and out.min() >= 0 and out.max() <= 1
    noise = (photo + (torch.rand(photo.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 8 / 255).clamp(0, 1)
    for model, face in ((a, faces[0]), (b, faces[1])):
        moved, baseline = distance(model, photo, out, [face]), distance(model, photo, noise, [face])
        assert (moved > 2 * baseline).all(), (type(model).__name__, moved, baseline)


def test_ensemble_term_is_scaled_by_each_models_threshold(models, photo):
    """A model whose threshold is twice as large counts half as much per unit of its distance."""
    a, _ = models
    faces = [face_at(40, 38, 16, "one")]
    loss = [WeightedLoss(1.0, FaceDistance(), "face-distance")]
    seen = []

    class Halved(TinyFaceModel):
        threshold: ClassVar[float] = 1.0

    halved = Halved(RunConfig())
    halved.load()
    for model in (a, halved):
        cloak = FrCloak(RunConfig(), face_model=model, losses=loss, eot="", eot_draws=0, chip_jitter=False)
        values = []
        original = cloak.members[0].model.distance

        def spy(x, y, original=original, values=values):
            d = original(x, y)
            values.append(float(d.detach().mean()))
            return d
        cloak.members[0].model.distance = spy
        try:
            cloak.protect(photo, faces, Budget(eps=4 / 255, steps=1, random_start=False))
        finally:
            del cloak.members[0].model.distance
        seen.append(values[0] / model.threshold)
    assert a.threshold == 0.5 and seen[0] == pytest.approx(2 * seen[1], rel=1e-5)


def test_transfer_loop_respects_a_per_pixel_bound_and_the_l2_cap_after_rounding(photo):
    bound = torch.full_like(photo[:, :1], 8 / 255)
    bound[..., :40, :] = 2 / 255  # the top half may move only a quarter as much
    cap = torch.tensor([l2_cap(40.0, photo[0].numel())])
    target = torch.rand(photo.shape, generator=torch.Generator().manual_seed(1))
    out = transfer_pgd(photo, lambda x, t: -(x - target).pow(2).flatten(1).sum(1), bound=bound, steps=20,
                       step_size=0.5, generator=torch.Generator().manual_seed(0), l2=cap)
    delta = out - photo
    assert torch.equal(out, torch.round(out * 255) / 255)  # 8-bit, as saved
    assert (delta[..., :40, :].abs() <= 2 / 255 + 1e-6).all() and (delta.abs() <= 8 / 255 + 1e-6).all()
    psnr = 10 * math.log10(1 / delta.pow(2).mean().item())
    assert 40.0 <= psnr < 40.5, psnr  # the cap binds and is spent, not exceeded
    assert (out - target).pow(2).sum() < (photo - target).pow(2).sum()


def test_texture_bound_gives_flat_pixels_the_floor_and_busy_ones_eps():
    flat = torch.full((1, 3, 32, 32), 0.5)
    busy = flat.clone()
    busy[..., :, 16:] = torch.rand(1, 3, 32, 16, generator=torch.Generator().manual_seed(2))
    bound = texture_bound(busy, 8 / 255, floor=0.25)
    assert bound[..., 8:24, :8].max() == pytest.approx(2 / 255)
    assert bound[..., 8:24, 20:].median() > 0.9 * 8 / 255 and bound.max() == pytest.approx(8 / 255)
    assert (bound <= 8 / 255 + 1e-7).all() and (bound >= 2 / 255 - 1e-7).all()
    with pytest.raises(ValueError):
        texture_bound(flat, 8 / 255, floor=1.5)


def test_l2_cap_is_the_psnr_floor():
    cap = l2_cap(42.0, 3 * 100 * 100)
    mse = cap**2 / (3 * 100 * 100)
    assert 10 * math.log10(1 / mse) == pytest.approx(42.0)


def test_jitter_faces_moves_each_face_in_k_blocks_and_is_seeded():
    faces = [face_at(20, 20, 8, "a"), face_at(60, 30, 10, "b")]
    one = jitter_faces(faces, 3, torch.Generator().manual_seed(4), scale=0.1, shift=0.05, rotation_deg=5)
    two = jitter_faces(faces, 3, torch.Generator().manual_seed(4), scale=0.1, shift=0.05, rotation_deg=5)
    assert one == two and len(one) == 6
    assert [f.finder for f in one] == ["a", "b"] * 3
    for k in range(3):
        for i, face in enumerate(faces):
            moved = one[k * 2 + i]
            side = face.box[2] - face.box[0]
            assert abs((moved.box[2] - moved.box[0]) / side - 1) <= 0.1 + 1e-9
            assert moved.box != face.box
    still = jitter_faces(faces, 1, torch.Generator(), scale=0, shift=0, rotation_deg=0)
    assert all(math.isclose(a, b, abs_tol=1e-9) for f, g in zip(still, faces) for a, b in zip(f.box, g.box))


def test_engine_builds_an_ensemble_each_model_with_its_own_finder():
    engine = Engine(plugins=[TwoModelsPlugin()])
    specs = engine.check("fr-cloak", face_model=["tiny", "tiny-other"])
    assert [(m.name, f.name) for m, f in specs["face_models"]] == [("tiny", "dlib"), ("tiny-other", "insightface")]
    with pytest.raises(CapabilityError, match="takes one face model"):
        engine.check("photoguard", face_model=["tiny", "tiny-other"], encoder="sd-vae")


def test_the_default_ensemble_is_dlib_and_facenet_through_their_own_finders():
    specs = Engine().check("fr-cloak", face_model=["dlib", "facenet"])
    assert [(m.name, f.name) for m, f in specs["face_models"]] == [("dlib", "dlib"), ("facenet", "mtcnn")]
    with pytest.raises(CapabilityError, match="face finder 'dlib' gives dlib5.*'facenet'"):
        Engine().check("fr-cloak", face_model=["dlib", "facenet"], face_finder="dlib")


def test_strength_presets_and_explicit_values_win():
    class Method:
        strengths = {"low": Strength(4 / 255, 10, {"a": 1, "b": 2}), "mid": Strength(8 / 255, 20, {"a": 3})}

    budget, options = apply_strength(Method, "mid", Budget(step_size=0.01), {"b": 5})
    assert (budget.eps, budget.steps, budget.step_size, options) == (8 / 255, 20, 0.01, {"a": 3, "b": 5})
    budget, options = apply_strength(Method, "low", None, {"a": 9}, eps=2 / 255, steps=3)
    assert (budget.eps, budget.steps, options) == (2 / 255, 3, {"a": 9, "b": 2})
    with pytest.raises(ConfigError, match="unknown strength 'max'; this method has: low, mid"):
        apply_strength(Method, "max", None, None)


def test_engine_runs_a_methods_low_preset_unless_told_otherwise():
    engine = Engine()
    run, options = engine.resolve_strength("fr-cloak", None, None, None)
    low = FrCloak.strengths["low"]
    assert (run.budget.eps, run.budget.steps) == (low.eps, low.steps) and options == dict(low.options)
    run, options = engine.resolve_strength("fr-cloak", RunConfig(budget=Budget(eps=2 / 255, steps=7)), None, {"x": 1})
    assert (run.budget.eps, run.budget.steps, options) == (2 / 255, 7, {"x": 1})  # a chosen run is kept
    run, _ = engine.resolve_strength("fr-cloak", None, "mid", None)
    assert run.budget.eps == 8 / 255 and FrCloak.strengths["mid"].options["psnr_floor"] >= 38


def test_decoys_differ_between_photos_and_seeds_and_repeat_for_the_same(photo):
    face = [face_at(40, 38, 16, "one")]
    a = decoy_directions(photo, face, 16, seed=0)
    assert torch.equal(a, decoy_directions(photo.clone(), face, 16, seed=0))
    assert a.shape == (1, 16) and torch.allclose(a.norm(dim=1), torch.ones(1))
    other = torch.flip(photo, dims=[-1])
    assert not torch.allclose(a, decoy_directions(other, face, 16, seed=0))
    assert not torch.allclose(a, decoy_directions(photo, face, 16, seed=1))


def test_decoys_push_two_photos_of_one_face_apart(models, photo):
    """Unlinkability: two protected copies of a face end up further from each other with decoys than
    without (without, both are pushed the same way, away from the same identity)."""
    a, _ = models
    face = [face_at(40, 38, 16, "")]
    twin = (photo + 1 / 255).clamp(0, 1)  # the same face, another "photo"
    loss = [WeightedLoss(1.0, FaceDistance(), "face-distance")]
    apart = []
    for decoy in (0.0, 2.0):
        outs = [FrCloak(RunConfig(), face_model=a, losses=loss, eot="", decoy=decoy).protect(x, face, Budget(eps=8 / 255, steps=10))
                for x in (photo, twin)]
        apart.append(float(distance(a, outs[0], outs[1], face)))
    assert apart[1] > apart[0], apart


def test_the_cap_saturates_dodging_and_decoy_together():
    """A fooled model (its term far past ``cap``) hands the gradient to the others: its dodging and its decoy
    pull fade together, so the pull keeps its ratio to the dodging gradient."""
    dodge = torch.tensor([0.1, 8.0], requires_grad=True)
    pull = torch.tensor([0.2, 0.2], requires_grad=True)
    member_term(dodge, pull, cap=1.5, decoy=2.0).sum().backward()
    assert dodge.grad[0] > 0.8 and dodge.grad[1] < 1e-3
    assert torch.allclose(pull.grad, 2.0 * dodge.grad)
    assert torch.equal(member_term(dodge, None, cap=0.0, decoy=2.0), dodge)


def test_template_aligner_cuts_the_arcface_template():
    """A face whose five points already sit on the template (scaled to the chip) comes out as the photo itself."""
    size = 64
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    points = tuple(map(tuple, (ARCFACE_TEMPLATE_112 * size / 112).tolist()))
    face = Face(0, (0.0, 0.0, float(size), float(size)), points, "arcface5")
    chip = template_aligner(size)(image, [face])
    assert chip.shape == (1, 3, size, size)
    assert torch.allclose(chip, image, atol=1e-4)


class LooseCropTinyModel(TinyFaceModel):
    """The tiny model reading a looser crop than the ArcFace template (the face in the middle 60 % of the
    chip, as dlib's padded chip or FaceNet's margin leave it)."""

    def align(self, images, faces):
        template = (ARCFACE_TEMPLATE_112 * 0.6 + 0.2 * 112) * self.input_size / 112
        return similarity_align(images, faces, template, self.input_size)


@pytest.fixture(scope="module")
def loose():
    model = LooseCropTinyModel(RunConfig())
    model.load()
    return model


def test_view_reads_chips_and_its_reference_through_the_given_aligner(loose, photo):
    face = [face_at(40, 38, 16, "")]
    align = template_aligner(32)
    view = View(photo, photo, face, face_model=loose, aligner=align)
    assert torch.equal(view.chips, align(photo, face))
    with torch.no_grad():
        assert torch.allclose(view.reference_embeddings, loose.embed(align(photo, face)))
        assert not torch.allclose(view.reference_embeddings, loose.embed(loose.align(photo, face)))


def test_template_steps_protect_the_face_as_the_template_cuts_it(loose, photo):
    """Reading the faces through the ArcFace template on every step moves the face further as that crop sees
    it than optimising through the model's own (looser) crop alone."""
    a = loose
    face = [face_at(40, 38, 16, "")]
    loss = [WeightedLoss(1.0, FaceDistance(), "face-distance")]
    align = template_aligner(32)
    moved = []
    for every in (0, 1):
        out = FrCloak(RunConfig(), face_model=a, losses=loss, eot="", decoy=0.0, eot_draws=0, chip_jitter=False,
                      template_every=every).protect(
            photo, face, Budget(eps=8 / 255, steps=10))
        assert (out - photo).abs().max() <= 8 / 255 + 1e-6
        with torch.no_grad():
            moved.append(float(a.distance(a.embed(align(out, face)), a.embed(align(photo, face)))))
    assert moved[1] > 2 * moved[0], moved


def test_chip_jitter_models_mirror_and_jitter_only_the_named_models_chips(models, photo):
    """``chip_jitter_models``: the named model reads jittered chips, the other one its own aligned chips as they are."""
    a, b = models
    faces = [face_at(40, 38, 16, "one"), face_at(42, 40, 17, "two")]
    members = [Member("tiny", a, "one"), Member("tiny-other", b, "two")]
    loss = [WeightedLoss(1.0, FaceDistance(), "face-distance")]
    as_cut = {}
    for name, model in (("tiny", a), ("tiny-other", b)):
        seen = as_cut[name] = []
        align, embed = model.align, model.embed

        def spy_align(images, fs, align=align, seen=seen):
            chips = align(images, fs)
            seen.append(["aligned", chips])
            return chips

        def spy_embed(chips, embed=embed, seen=seen):
            if chips.requires_grad:
                seen.append(["embedded", chips])
            return embed(chips)
        model.align, model.embed = spy_align, spy_embed
    try:
        FrCloak(RunConfig(), face_models=members, losses=loss, eot="", eot_draws=0, decoy=0.0,
                chip_jitter_models="tiny-other").protect(photo, faces, Budget(eps=4 / 255, steps=2))
    finally:
        for model in (a, b):
            del model.align, model.embed

    def read_as_cut(events):
        pairs = [(events[i][1], events[i + 1][1]) for i in range(len(events) - 1)
                 if events[i][0] == "aligned" and events[i + 1][0] == "embedded"]
        return len(pairs) > 0 and all(cut is read for cut, read in pairs)

    assert read_as_cut(as_cut["tiny"]), "the model left out of chip_jitter_models must read its chips as cut"
    embedded_other = [e for e in as_cut["tiny-other"] if e[0] == "embedded"]
    aligned_other = [e[1] for e in as_cut["tiny-other"] if e[0] == "aligned"]
    assert embedded_other and not any(any(chips is cut for cut in aligned_other) for _, chips in embedded_other)


def test_decoys_away_from_the_faces_own_embeddings_are_orthogonal_to_them(photo):
    faces = [face_at(40, 38, 16, "one"), face_at(60, 40, 12, "one")]
    plain = decoy_directions(photo, faces, 8, seed=0)
    own = plain + 0.5 * torch.randn(2, 8, generator=torch.Generator().manual_seed(3))  # leaning towards the draw
    away = decoy_directions(photo, faces, 8, seed=0, away_from=own)
    unit = torch.nn.functional.normalize(own, dim=1)
    assert (plain * unit).sum(1).abs().min() > 0.3
    assert torch.allclose((away * unit).sum(1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(away.norm(dim=1), torch.ones(2)) and (away * plain).sum(1).min() > 0


def test_model_weights_scale_each_models_share_of_the_objective(models, photo):
    """``model_weights``: a model weighted 0 no longer steers the cloak (a model of other weights in its place gives
    the same photo), while at its default weight 1 it does."""
    a, b = models
    other = TinyFaceModel(RunConfig())  # other weights (and metric) in the second model's place
    faces = [face_at(40, 38, 16, "one"), face_at(42, 40, 17, "two")]
    loss = [WeightedLoss(1.0, FaceDistance(), "face-distance")]

    def protect(second, **options):
        members = [Member("tiny", a, "one"), Member("tiny-other", second, "two")]
        return FrCloak(RunConfig(), face_models=members, losses=loss, eot="", **options).protect(
            photo, faces, Budget(eps=4 / 255, steps=3))

    assert torch.equal(protect(b, model_weights="tiny-other=0"), protect(other, model_weights="tiny-other=0"))
    assert not torch.equal(protect(b), protect(other))
    assert per_model(" dlib=1.3, facenet = 2 ,", "model_weights") == {"dlib": 1.3, "facenet": 2.0}
    for bad in ("dlib=abc", "dlib", "=2", "dlib=-1"):
        with pytest.raises(ConfigError, match="model_weights takes name=number"):
            FrCloak(RunConfig(), face_model=a, losses=loss, model_weights=bad)
