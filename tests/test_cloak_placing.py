"""A photo the cloak could not be placed on (``--face N`` beyond its faces, a face whose frame lies outside the
photo) is never reported as protected: it fails, or, in a batch with photos that were protected, carries a note."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from guardkit import Engine
from guardkit.cloak import Cloak
from guardkit.config import Budget, RunConfig
from guardkit.errors import NoFaceError
from guardkit.imageio import load_rgb
from guardkit.plugins.methods.personal_cloak import PersonalCloak
from guardkit.types import Face

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def frontal(cx: float, cy: float, d: float, index: int) -> Face:
    points = ((cx - d / 2, cy - 0.3 * d), (cx + d / 2, cy - 0.3 * d), (cx, cy + 0.2 * d),
              (cx - 0.4 * d, cy + 0.6 * d), (cx + 0.4 * d, cy + 0.6 * d))
    return Face(index, (cx - d, cy - 1.1 * d, cx + d, cy + 1.1 * d), points, "arcface5")  # type: ignore[arg-type]


def flat_cloak() -> Cloak:
    return Cloak(torch.full((1, 3, 32, 32), 8 / 255), eps=8 / 255, finder="mtcnn", face_models=("dlib",),
                 psnr_floor=30.0, fill=0.75)


def photos(n: int) -> torch.Tensor:
    return torch.round(torch.rand(n, 3, 200, 200, generator=torch.Generator().manual_seed(0)) * 255) / 255


def test_a_face_number_beyond_the_faces_is_not_a_protected_photo() -> None:
    method = PersonalCloak(RunConfig(), cloak=flat_cloak(), face="2")
    with pytest.raises(NoFaceError, match="not placed.*--face 2.*1 face"):
        method.protect(photos(1), [frontal(100, 100, 30, 0)], Budget(eps=8 / 255))


def test_a_face_whose_frame_lies_outside_the_photo_is_not_a_protected_photo() -> None:
    method = PersonalCloak(RunConfig(), cloak=flat_cloak())
    with pytest.raises(NoFaceError, match="not placed.*outside the photo"):
        method.protect(photos(1), [frontal(-5000, -5000, 30, 0)], Budget(eps=8 / 255))


def test_in_a_batch_the_photo_without_the_cloak_is_named() -> None:
    """Photo 0 gets the cloak; photo 1 has one face and --face 2: it is left unchanged, and says so."""
    images = photos(2)
    method = PersonalCloak(RunConfig(), cloak=flat_cloak(), face="2")
    faces = [frontal(60, 100, 20, 0), frontal(140, 100, 30, 0), frontal(100, 100, 30, 1)]
    out = method.protect(images, faces, Budget(eps=8 / 255))
    assert not torch.equal(out[0], images[0]) and torch.equal(out[1], images[1])
    assert set(method.unplaced) == {1} and "--face 2" in method.unplaced[1]
    assert "not placed" in method.notes[1] and 0 not in method.unplaced


@pytest.mark.skipif(not FACES.is_dir(), reason="needs ../shared/data/faces")
def test_run_with_a_missing_face_number_fails_the_photo(tmp_path: Path) -> None:
    """End to end with the real MTCNN: obama_small.jpg shows one face; --face 3 writes nothing and fails it."""
    result = Engine().protect([FACES / "obama_small.jpg"], cloak=flat_cloak(), cloak_face="3", output_dir=tmp_path)
    photo = result.photos[0]
    assert photo.status == "failed" and photo.output is None
    assert "obama_small.jpg" in photo.error and "not placed" in photo.error and "\n" not in photo.error
    assert not any(tmp_path.iterdir())
    placed = Engine().protect([FACES / "obama_small.jpg"], cloak=flat_cloak(), cloak_face="1").photos[0]
    assert placed.status == "protected"
    assert np.abs(placed.protected.astype(np.int16) - load_rgb(FACES / "obama_small.jpg")).max() > 0


@pytest.mark.skipif(not FACES.is_dir(), reason="needs ../shared/data/faces")
def test_in_a_run_batch_the_photo_without_the_cloak_fails_and_the_other_is_written(tmp_path: Path) -> None:
    """Two photos of one size in one batch: two_people.jpg (two faces) and a copy with one face painted over;
    --face 2 places the cloak on the first only. The second is failed with the reason, and nothing is written
    for it (it used to be reported protected, and written unchanged)."""
    from PIL import Image

    photo = load_rgb(FACES / "two_people.jpg").copy()
    both, one = tmp_path / "both.png", tmp_path / "one.png"
    Image.fromarray(photo).save(both)
    photo[:, : photo.shape[1] // 2] = 128  # the left person painted over
    Image.fromarray(photo).save(one)
    out = tmp_path / "out"
    result = Engine().protect([both, one], cloak=flat_cloak(), cloak_face="2", output_dir=out,
                              run=RunConfig(batch_size=2))
    status = {p.source.name: p for p in result.photos}
    assert status["both.png"].status == "protected" and status["both.png"].output is not None
    assert status["one.png"].status == "failed" and status["one.png"].output is None
    assert "one.png" in status["one.png"].error and "--face 2" in status["one.png"].error
    assert sorted(p.name for p in out.glob("*.png")) == ["both.protected.png"]
