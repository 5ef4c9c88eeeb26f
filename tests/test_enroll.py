"""Enrolment of a personal cloak on real photos with the real dlib model and MTCNN (issue 14)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from guardkit import Engine
from guardkit.cloak import choose_faces, place
from guardkit.config import RunConfig
from guardkit.ensemble import Member
from guardkit.enroll import EnrollSettings, enroll_samples, make_sample
from guardkit.enrolment import find_all, mirrored, pick_person
from guardkit.imageio import load_rgb

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
pytestmark = pytest.mark.skipif(not FACES.is_dir(), reason="needs ../shared/data/faces")


@pytest.fixture(scope="module")
def parts():
    engine = Engine()
    run = RunConfig()
    finders = {name: engine.load_part("face_finder", name, run) for name in ("mtcnn", "dlib")}
    member = Member("dlib", engine.load_part("face_model", "dlib", run), "dlib")
    return finders, member


def samples_of(names, finders, member, settings):
    out = []
    for name in names:
        image = load_rgb(FACES / name)
        found = find_all(image, finders)
        face = choose_faces(found["mtcnn"], "largest")[0]
        out.append(make_sample(image, name, face, found, [member], settings))
        flipped, twin, twin_found = mirrored(image, face, finders)
        out.append(make_sample(flipped, name, twin, twin_found, [member], settings))
    return out


class Interrupt(Exception):
    pass


def test_an_interrupted_enrolment_resumes_to_the_same_cloak(parts, tmp_path: Path) -> None:
    finders, member = parts
    settings = EnrollSettings(steps=4, variants=2, frame=96, checkpoint_every=2, jpeg_every=2)
    samples = samples_of(["obama_small.jpg"], finders, member, settings)
    whole = enroll_samples(samples, [member], settings, anchor_finder="mtcnn")
    checkpoint = tmp_path / ".me.cloak.partial"

    def stop_at_three(step: int, steps: int) -> None:
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        enroll_samples(samples, [member], settings, anchor_finder="mtcnn", checkpoint=checkpoint, on_step=stop_at_three)
    assert checkpoint.is_file()
    seen = []
    resumed = enroll_samples(samples, [member], settings, anchor_finder="mtcnn", checkpoint=checkpoint,
                             on_step=lambda step, steps: seen.append(step))
    assert seen == [3, 4]  # went on from step 2, did not start again
    assert torch.equal(resumed.perturbations, whole.perturbations)
    other = enroll_samples(samples, [member], replace(settings, seed=1), anchor_finder="mtcnn", checkpoint=checkpoint)
    assert not torch.equal(other.perturbations, whole.perturbations)  # another enrolment ignores that checkpoint


def test_enrolment_cloak_fools_dlib_on_its_own_photo(parts) -> None:
    """White-box sanity: a cloak learnt on one photo pushes that photo past dlib's threshold."""
    finders, member = parts
    settings = EnrollSettings(steps=30, variants=1, draws=2, frame=128, psnr_floor=0.0, jpeg_every=0)
    samples = samples_of(["obama_small.jpg"], finders, member, settings)
    cloak = enroll_samples(samples, [member], settings, anchor_finder="mtcnn")
    image = load_rgb(FACES / "obama_small.jpg")
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
    face = choose_faces(finders["mtcnn"].find(image), "largest")[0]
    protected = torch.round((x + place(cloak, x, [face])) * 255) / 255
    own = finders["dlib"].find(image)[0]
    with torch.no_grad():
        before = member.model.embed(member.model.align(x[None], [own]))
        after = member.model.embed(member.model.align(protected[None], [own]))
    assert float(protected.sub(x).abs().max()) <= 8 / 255 + 1e-6
    assert float(member.model.distance(before, after)) > 0.6


def test_the_person_is_picked_in_a_group_photo(parts) -> None:
    finders, member = parts
    photos = []
    for name in ("obama.jpg", "two_people.jpg"):
        image = load_rgb(FACES / name)
        found = {k: [replace(f, finder=k) for f in v] for k, v in find_all(image, finders).items()}
        photos.append((Path(name), image, found))
    chosen = pick_person(photos, "mtcnn", member)
    assert len(photos[1][2]["mtcnn"]) == 2
    assert chosen[Path("two_people.jpg")].box[0] < 600  # Obama stands on the left of two_people.jpg, Biden right


def test_decoys_made_orthogonal_to_the_person_stay_opposite_pairs() -> None:
    """Enrolment's decoys come in opposite pairs; one of each pair used to lean towards the person's centroid.
    Made orthogonal to it, neither does, and the pair stays opposite."""
    from guardkit.enroll import decoys, orthogonal_to

    targets = decoys(4, {"m": 16}, seed=0)["m"]
    centroid = targets[:1] * 0.8 + torch.randn(1, 16, generator=torch.Generator().manual_seed(1)) * 0.2
    unit = torch.nn.functional.normalize(centroid, dim=1)
    assert (targets * unit).sum(1).abs().max() > 0.3  # a draw leaning towards the person, and its opposite away
    away = orthogonal_to(targets, centroid)
    assert torch.allclose((away * unit).sum(1), torch.zeros(4), atol=1e-6)
    assert torch.allclose(away[1], -away[0], atol=1e-6) and torch.allclose(away.norm(dim=1), torch.ones(4))
